"""Time zones and the night a frame belongs to."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as _fixed_zone
from functools import lru_cache
from zoneinfo import ZoneInfo

_OFFSET = re.compile(r"(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?", re.IGNORECASE)


@lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo | None:
    """Time-zone setting -> tzinfo; ``None`` means "auto"."""
    text = name.strip()
    if text.lower() == "auto":
        return None
    if text.upper() in ("UTC", "UT", "Z", "GMT"):
        return UTC
    match = _OFFSET.fullmatch(text)
    if match:
        sign, hours, minutes = match.groups()
        if int(hours) > 23 or int(minutes or 0) > 59:
            raise ValueError(f"timezone offset {name!r} is out of range")
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        return _fixed_zone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(text)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError for odd keys, OSError, ...
        raise ValueError(f"unknown timezone {name!r} ({type(exc).__name__})") from None


def _resolve_zone(name: str) -> tzinfo | None:
    if not isinstance(name, str):
        raise ValueError(f"timezone must be a string, got {name!r}")
    return _zone(name)


def site_zone(longitude_deg: float) -> tzinfo:
    """The zone of a site known only by its longitude: the offset of its hour, ``round(lon / 15)``
    hours from UTC (Hawaii -155.5: UTC-10; Siding Spring +149.1: UTC+10), within an hour or two of
    its civil zone, as the night's local mean solar time is within half an hour of it. A frame's
    DATE-LOC is read in it when no zone is set (`normalise`): read in this machine's zone, a Hawaii
    frame on a UTC server came out a night early."""
    return _fixed_zone(timedelta(hours=round(longitude_deg / 15.0)))


def _zone_name(zone: tzinfo) -> str:
    return str(getattr(zone, "key", None) or zone)


def _check_start_hour(night_start_hour: float) -> float:
    try:
        hour = float(night_start_hour)
    except (TypeError, ValueError):
        raise ValueError(f"night_start_hour must be a number of hours, got {night_start_hour!r}") from None
    if not 0 <= hour < 24:
        raise ValueError(f"night_start_hour must be in [0, 24), got {night_start_hour!r}")
    return hour


def _night(date_obs: datetime, zone: tzinfo | None, longitude_deg: float | None, start_hour: float) -> str:
    utc = date_obs.replace(tzinfo=UTC) if date_obs.tzinfo is None else date_obs.astimezone(UTC)
    if zone is not None:
        local = utc.astimezone(zone).replace(tzinfo=None)
    elif longitude_deg is not None:  # local mean solar time at the site
        local = utc.replace(tzinfo=None) + timedelta(hours=longitude_deg / 15.0)
    else:
        local = utc.astimezone().replace(tzinfo=None)  # this machine's zone
    return (local - timedelta(hours=start_hour)).date().isoformat()


def night_label(
    date_obs: datetime,
    *,
    timezone: str = "auto",
    longitude_deg: float | None = None,
    night_start_hour: float = 12.0,
) -> str:
    """The night a frame belongs to: the local date at the start of that night.

    Parameters
    ----------
    date_obs : datetime
        Start of the exposure; naive values are taken as UTC.
    timezone : str, optional
        ``"auto"`` (local mean solar time from ``longitude_deg`` when given, else this machine's
        zone), ``"UTC"``, an IANA name (``"Europe/London"``) or a fixed offset (``"+02:00"``).
    longitude_deg : float, optional
        Site longitude (degrees, east positive); used only with ``"auto"``.
    night_start_hour : float, optional
        Local hour (0-24) at which one night's label ends and the next begins (default noon).

    Returns
    -------
    str
        ``'YYYY-MM-DD'`` = ``(local time - night_start_hour h).date()``.

    Raises
    ------
    ValueError
        For an unknown timezone (the message names it), a bad longitude or start hour.
    """
    zone = _resolve_zone(timezone)
    hour = _check_start_hour(night_start_hour)
    if longitude_deg is not None:
        lon = float(longitude_deg)
        if not (math.isfinite(lon) and -360 <= lon <= 360):
            raise ValueError(f"longitude_deg must be in [-360, 360], got {longitude_deg!r}")
        longitude_deg = math.remainder(lon, 360.0)
    return _night(date_obs, zone, longitude_deg, hour)
