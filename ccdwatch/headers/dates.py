"""When the exposure started: DATE-OBS (with TIME-OBS/UT), DATE-BEG, MJD-OBS/JD, DATE-LOC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as _fixed_zone

from ccdwatch.headers.cards import _Cards
from ccdwatch.headers.keywords import _TIME_KEYS
from ccdwatch.headers.night import _zone_name
from ccdwatch.headers.values import _Bad, _clean_text, _range, _show

# Dates outside this window are camera-clock nonsense, not observations.
_FIRST_YEAR, _LAST_YEAR = 1900, 2199
_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)
_MJD_MIN = (datetime(_FIRST_YEAR, 1, 1, tzinfo=UTC) - _MJD_EPOCH).days
_MJD_MAX = (datetime(_LAST_YEAR + 1, 1, 1, tzinfo=UTC) - _MJD_EPOCH).days

_ISO = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[T\s]+(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|UTC|UT|GMT|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)
_OLD_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{2})")
_CLOCK = re.compile(r"(\d{1,2})[:\s](\d{1,2})(?:[:\s](\d{1,2})(?:[.,](\d+))?)?")


def _clock(hours: str, minutes: str, seconds: str | None, fraction: str | None) -> timedelta:
    h, m, s = int(hours), int(minutes), int(seconds or 0)
    if h > 24 or m > 59 or s > 60:
        raise _Bad("is not a valid time of day")
    micro = round(float("0." + fraction) * 1e6) if fraction else 0
    return timedelta(hours=h, minutes=m, seconds=s, microseconds=micro)


def _zone_suffix(text: str | None) -> tzinfo | None:
    if not text:
        return None
    if text.upper() in ("Z", "UTC", "UT", "GMT"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise _Bad("has an invalid UTC offset")
    return _fixed_zone(sign * timedelta(hours=hours, minutes=minutes))


def _parse_date(text: str) -> tuple[datetime, bool, tzinfo | None]:
    """'2012-02-19T03:22:22[.123][Z|+02:00]', '2012-02-19' or '19/02/12' -> (naive, has_time, zone)."""
    match = _ISO.fullmatch(text)
    if match:
        year, month, day, hh, mm, ss, frac, zone = match.groups()
        try:
            day_start = datetime(int(year), int(month), int(day))
        except ValueError:
            raise _Bad("is not a valid date") from None
        if hh is None:
            return day_start, False, None
        return day_start + _clock(hh, mm, ss, frac), True, _zone_suffix(zone)
    match = _OLD_DATE.fullmatch(text)
    if match:  # the pre-2000 FITS form DD/MM/YY means 19YY
        day, month, yy = (int(g) for g in match.groups())
        try:
            return datetime(1900 + yy, month, day), False, None
        except ValueError:
            raise _Bad("is not a valid date") from None
    raise _Bad("is not an ISO date")


def _sane(when: datetime) -> datetime:
    if not _FIRST_YEAR <= when.year <= _LAST_YEAR:
        raise _Bad(f"is outside the years {_FIRST_YEAR}..{_LAST_YEAR}")
    return when


def _with_time_of_day(cards: _Cards, day_start: datetime) -> datetime | None:
    """``day_start`` (DATE-OBS without a time) plus the first usable TIME-OBS/UT card, as UTC.

    Bad time cards are reported and skipped; a sum outside the sane years raises :class:`_Bad`
    (or OverflowError), which the caller reports against DATE-OBS.
    """
    for key in _TIME_KEYS:
        time_raw = cards.values.get(key)
        time_text = _clean_text(time_raw)
        if time_text is None:
            continue
        clock = _CLOCK.fullmatch(time_text)
        if clock is None:
            cards.warn(f"date: {key}={_show(time_raw)} is not a time hh:mm:ss; ignored")
            continue
        try:
            offset = _clock(*clock.groups())
        except _Bad as exc:
            cards.warn(f"date: {key}={_show(time_raw)} {exc}; ignored")
            continue
        return _sane((day_start + offset).replace(tzinfo=UTC))
    return None


def _from_date_obs(cards: _Cards) -> datetime | None:
    """DATE-OBS (UTC unless it carries its own offset); a date alone takes its time from TIME-OBS/UT."""
    raw = cards.values.get("DATE-OBS")
    text = _clean_text(raw)
    if text is None:
        return None
    try:
        naive, has_time, suffix = _parse_date(text)
        if has_time:
            return _sane((naive.replace(tzinfo=suffix or UTC)).astimezone(UTC))
        when = _with_time_of_day(cards, naive)
        if when is not None:
            return when
        cards.warn(f"date: DATE-OBS={_show(raw)} has no time of day and no TIME-OBS/UT card")
    except (_Bad, OverflowError) as exc:
        cards.warn(f"date: DATE-OBS={_show(raw)} {exc}; ignored")
    return None


def _from_date_beg(cards: _Cards) -> datetime | None:
    """DATE-BEG, which must carry a time of day; UTC unless it carries its own offset."""
    raw = cards.values.get("DATE-BEG")
    text = _clean_text(raw)
    if text is None:
        return None
    try:
        naive, has_time, suffix = _parse_date(text)
        if not has_time:
            raise _Bad("has no time of day")
        return _sane(naive.replace(tzinfo=suffix or UTC).astimezone(UTC))
    except (_Bad, OverflowError) as exc:
        cards.warn(f"date: DATE-BEG={_show(raw)} {exc}; ignored")
    return None


def _from_julian_date(cards: _Cards) -> datetime | None:
    """MJD-OBS, else JD-OBS/JD (days), within the sane years."""
    mjd_range = _range(_MJD_MIN, _MJD_MAX)
    mjd = cards.number(("MJD-OBS",), "date", check=mjd_range)
    if mjd is None:
        jd = cards.number(("JD-OBS", "JD"), "date", check=_range(_MJD_MIN + 2400000.5, _MJD_MAX + 2400000.5))
        mjd = None if jd is None else jd - 2400000.5
    if mjd is not None:
        return _MJD_EPOCH + timedelta(days=mjd)
    return None


def _from_date_loc(cards: _Cards, zone: tzinfo | None) -> datetime | None:
    """DATE-LOC, a local time: in its own offset, else ``zone``, else this machine's zone; warns which."""
    raw = cards.values.get("DATE-LOC")
    text = _clean_text(raw)
    if text is None:
        return None
    try:
        naive, has_time, suffix = _parse_date(text)
        if not has_time:
            raise _Bad("has no time of day")
        if suffix is not None:
            when = naive.replace(tzinfo=suffix)
            how = "its own UTC offset"
        elif zone is not None:
            when = naive.replace(tzinfo=zone)
            how = f"zone {_zone_name(zone)}"
        else:
            when = naive.astimezone()  # naive = this machine's local zone
            how = "this machine's local zone (assumed; set night.timezone to be sure)"
        when = _sane(when.astimezone(UTC))
    except (_Bad, OverflowError, ValueError) as exc:
        cards.warn(f"date: DATE-LOC={_show(raw)} {exc}; ignored")
    else:
        cards.warn(f"date: no UTC date; took DATE-LOC={_show(raw)} as local time in {how}")
        return when
    return None


def _date_obs(cards: _Cards, zone: tzinfo | None) -> datetime | None:
    """Start of the exposure (aware UTC) from the first usable date card, in this order of trust."""
    for read in (_from_date_obs, _from_date_beg, _from_julian_date):
        when = read(cards)
        if when is not None:
            return when
    when = _from_date_loc(cards, zone)
    if when is not None:
        return when
    if not any(cards.present(k) for k in ("DATE-OBS", "DATE-BEG", "MJD-OBS", "JD-OBS", "JD", "DATE-LOC")):
        cards.warn("date: no DATE-OBS, MJD-OBS, JD or DATE-LOC card")
    return None
