"""Quantities read from their synonym cards: exposure, filter, binning, image size, site, pointing."""

from __future__ import annotations

import math
import re
from typing import Any

from ccdwatch.headers.cards import _NULL_WORDS, _Cards
from ccdwatch.headers.keywords import (
    _BIN_PAIRS,
    _COORD_PAIRS,
    _EXPTIME_KEYS,
    _FILTER_KEYS,
    _FILTER_WHEEL_KEYS,
    _LONGITUDE_KEYS,
)
from ccdwatch.headers.values import MAX_STRING, _Bad, _clean_text, _plain, _sexagesimal, _show, _to_float

#: Filter-wheel positions that do not filter (dropped when FILTER1/FILTER2 are combined).
_NO_FILTER = frozenset({"clear", "open", "empty", "none", "air"})

_SECONDS = {"": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
            "ms": 1e-3, "msec": 1e-3, "min": 60.0}
_CELSIUS = {"": 1.0, "c": 1.0, "degc": 1.0, "°c": 1.0}


#: Exposure keywords in microseconds (SharpCap, some CMOS drivers), tried after the seconds ones.
_EXPTIME_US_KEYS = ("EXPOINUS", "EXPTIMEUS", "EXPOSURE_US")


def _exposure(cards: _Cards) -> float | None:
    def check(x: float) -> str | None:
        return "is negative" if x < 0 else None

    seconds = cards.number(_EXPTIME_KEYS, "exposure time", check=check, units=_SECONDS)
    if seconds is not None or not any(cards.present(k) for k in _EXPTIME_US_KEYS):
        return seconds
    micro = cards.number(_EXPTIME_US_KEYS, "exposure time (us)", check=check)
    return None if micro is None else micro * 1e-6


def _filter(cards: _Cards) -> str | None:
    name = cards.first_text(_FILTER_KEYS, null_words=True)
    if name is not None:
        return name
    wheels = [t for key in _FILTER_WHEEL_KEYS if (t := cards.text(key)) and t.lower() not in _NULL_WORDS]
    real = [t for t in wheels if t.lower() not in _NO_FILTER]
    if real:
        return "+".join(real)[:MAX_STRING]
    return wheels[0] if wheels else None


def _binning(cards: _Cards) -> tuple[int, int]:
    x = y = None
    for kx, ky in _BIN_PAIRS:
        x = x if x is not None else cards.whole(kx, "binning", lo=1, hi=64)
        y = y if y is not None else cards.whole(ky, "binning", lo=1, hi=64)
    if x is None or y is None:
        for key in ("CCDSUM", "BINNING"):
            text = cards.text(key)
            if text is None:
                continue
            parts = re.split(r"\s*[xX*,\s]\s*", text)
            try:
                values = [int(p) for p in parts]
            except ValueError:
                values = []
            if len(values) == 1:
                values *= 2
            if len(values) != 2 or not all(1 <= v <= 64 for v in values):
                cards.warn(f"binning: {key}={_show(text)} is not 'N N' or 'NxN'; ignored")
                continue
            x = x if x is not None else values[0]
            y = y if y is not None else values[1]
            break
    x = x if x is not None else (y if y is not None else 1)
    y = y if y is not None else x
    return x, y


def _shape(cards: _Cards) -> tuple[int | None, int | None]:
    prefix = "Z" if cards.text("ZIMAGE") == "T" else ""  # binary-table header of a tile-compressed image
    return (cards.whole(f"{prefix}NAXIS1", "image size", lo=1, hi=10**7),
            cards.whole(f"{prefix}NAXIS2", "image size", lo=1, hi=10**7))


def _longitude(cards: _Cards) -> float | None:
    for key in _LONGITUDE_KEYS:
        raw = cards.values.get(key)
        text = _clean_text(raw)
        if text is None:
            continue
        try:
            if isinstance(_plain(raw), (int, float)) and not isinstance(_plain(raw), bool):
                lon = _to_float(raw)
            else:
                lon = _sexagesimal(text, compass="EW")[0]
        except _Bad as exc:
            cards.warn(f"site longitude: {key}={_show(raw)} {exc}; ignored")
            continue
        if not -360 <= lon <= 360:
            cards.warn(f"site longitude: {key}={_show(raw)} is outside [-360, 360]; ignored")
            continue
        lon = math.remainder(lon, 360.0)  # (-180, 180]; INDI writes 0..360 east
        return 180.0 if lon == -180.0 else lon
    return None


def _ra(value: Any, *, decimal_string_in_hours: bool) -> float:
    plain = _plain(value)
    if isinstance(plain, (int, float)) and not isinstance(plain, bool):
        degrees = _to_float(plain)
    else:
        text = _clean_text(plain)
        if text is None:
            raise _Bad("is blank")
        number, marker, decimal = _sexagesimal(text)
        if marker == "d" or (decimal and not decimal_string_in_hours):
            degrees = number
        else:
            if not 0 <= number < 24:
                raise _Bad("is outside 0..24 h")
            degrees = number * 15.0
    if not 0 <= degrees <= 360:
        raise _Bad("is outside [0, 360] deg")
    return 0.0 if degrees == 360 else degrees


def _dec(value: Any) -> float:
    plain = _plain(value)
    if isinstance(plain, (int, float)) and not isinstance(plain, bool):
        degrees = _to_float(plain)
    else:
        text = _clean_text(plain)
        if text is None:
            raise _Bad("is blank")
        degrees, marker, _ = _sexagesimal(text)
        if marker == "h":
            raise _Bad("is in hours")
    if not -90 <= degrees <= 90:
        raise _Bad("is outside [-90, 90] deg")
    return degrees


def _coordinates(cards: _Cards) -> tuple[float | None, float | None]:
    for ra_key, dec_key in _COORD_PAIRS:
        ra_raw, dec_raw = cards.values.get(ra_key), cards.values.get(dec_key)
        if _clean_text(ra_raw) is None and _clean_text(dec_raw) is None:
            continue
        try:
            ra = _ra(ra_raw, decimal_string_in_hours=ra_key == "OBJCTRA")
            dec = _dec(dec_raw)
        except _Bad as exc:
            cards.warn(f"coordinates: {ra_key}={_show(ra_raw)}, {dec_key}={_show(dec_raw)}: {exc}; ignored")
            continue
        return ra, dec
    return None, None
