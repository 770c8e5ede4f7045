"""Lenient reading of one untrusted card value: clean text, numbers, sexagesimal angles.

Each reader takes a raw value (any type, any length) and returns a plain Python value or raises
:class:`_Bad`, whose message says why in words that callers put into a header warning.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

#: Longest string value kept from a header (characters): what one FITS card can hold.
MAX_STRING = 68

#: Longest string value kept by :func:`header_to_jsonable` (characters).
MAX_JSON_STRING = 16384

_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})  # become a space
_DROP_CATEGORIES = frozenset({"Cf", "Cs", "Cn"})  # format, lone surrogates, unassigned: removed


class _Bad(ValueError):
    """A header value that cannot be used; the message says why."""


def _plain(value: Any) -> Any:
    """Reduce an untrusted value to None/bool/int/float/str (or complex)."""
    if value is None or isinstance(value, (bool, int, float, str, complex)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value[: 4 * MAX_JSON_STRING]).decode("utf-8", "replace")
    if type(value).__name__ == "Undefined":  # astropy.io.fits.card.Undefined: a card without value
        return None
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            plain = item()
        except Exception:  # arrays and other oddities fall through to str()
            plain = None
        if plain is None or isinstance(plain, (bool, int, float, str, complex)):
            return plain
    try:
        return str(value)
    except Exception:  # a hostile __str__
        return f"<unprintable {type(value).__name__}>"


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return f"<integer of {value.bit_length()} bits>"


def _clean_text(value: Any, cap: int | None = MAX_STRING) -> str | None:
    """Untrusted value -> stripped printable text, ``None`` when blank."""
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, bool):
        text = "T" if value else "F"  # FITS logical
    elif isinstance(value, int):
        text = _int_text(value)
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    if cap is not None:
        text = text[: cap * 8]  # bound the work on huge strings before cleaning
    chars = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            chars.append(ch)
            continue
        category = unicodedata.category(ch)
        if category in _DROP_CATEGORIES:
            continue
        chars.append(" ")  # control characters and line/paragraph separators
    text = " ".join("".join(chars).split())  # strip, and collapse runs of blanks
    if cap is not None:
        text = text[:cap].rstrip()
    return text or None


def _show(value: Any) -> str:
    """A short, safe rendering of a value for a warning."""
    plain = _plain(value)
    text = _int_text(plain) if isinstance(plain, int) and not isinstance(plain, bool) else repr(plain)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= 40 else text[:37] + "..."


#: One comma between digits and no point: a decimal comma ('6,4E-05', '3,5 s'), never thousands
#: (FITS numbers are never written with thousands separators).
_DECIMAL_COMMA = re.compile(r"[-+]?\d+,\d+(?:[eEdD][-+]?\d+)?\s*[a-zA-Z°]*")
_NUMBER = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eEdD][-+]?\d+)?)\s*([a-zA-Z°]*)")


def _to_float(value: Any, units: Mapping[str, float] | None = None) -> float:
    """Untrusted value -> finite float, raising :class:`_Bad` with a reason."""
    value = _plain(value)
    if isinstance(value, bool):
        raise _Bad("is a logical, not a number")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise _Bad("is too large") from None
        if not math.isfinite(number):
            raise _Bad("is not finite")
        return number
    text = _clean_text(value)
    if text is None:
        raise _Bad("is blank")
    match = _NUMBER.fullmatch(text)
    if match is None and _DECIMAL_COMMA.fullmatch(text):  # '3,5 s' from a decimal-comma locale
        match = _NUMBER.fullmatch(text.replace(",", ".", 1))
    if match is None:
        raise _Bad("is not a number")
    unit = match.group(2).lower()
    scale = (units or {"": 1.0}).get(unit)
    if scale is None:
        raise _Bad(f"has an unknown unit {unit!r}")
    number = float(match.group(1).replace("d", "e").replace("D", "e")) * scale
    if not math.isfinite(number):
        raise _Bad("is not finite")
    return number


def _to_int(value: Any) -> int:
    number = _to_float(value)
    if not number.is_integer():
        raise _Bad("is not a whole number")
    return int(number)


def _strip_sign(text: str, compass: str) -> tuple[float, str]:
    """(sign, rest): ``text`` without one compass letter at either end (``compass``) and a leading +/-."""
    s = text.strip()
    sign = 1.0
    if compass and s:
        for where in (-1, 0):
            if s[where] in compass:
                if s[where] in "WS":
                    sign = -sign
                s = (s[:-1] if where == -1 else s[1:]).strip()
                break
    if s[:1] in ("+", "-"):
        if s[0] == "-":
            sign = -sign
        s = s[1:].strip()
    return sign, s


def _sexagesimal(text: str, *, compass: str = "") -> tuple[float, str, bool]:
    """Parse '-01 29 07', '+10:30:00', '13h29m52.7s', '47d11m43s', '1 29 07 W' or '-1.485'.

    Returns (value in the unit of the first field, marker 'h'/'d'/'' found, plain decimal?).
    ``compass`` lists the accepted trailing/leading compass letters, e.g. ``"EW"``; 'W' and 'S'
    negate.
    """
    sign, s = _strip_sign(text, compass)
    if not s or not re.fullmatch("[0-9.\\s:hHdDmMsS\u00b0\u00ba'\u2032\"\u2033]+", s):
        raise _Bad("is not an angle")
    fields = re.findall(r"\d+(?:\.\d*)?|\.\d+", s)
    if not 1 <= len(fields) <= 3 or any("." in f for f in fields[:-1]):
        raise _Bad("is not an angle")
    if len("".join(fields)) != len(re.sub(r"[^0-9.]", "", s)):  # stray dots
        raise _Bad("is not an angle")
    values = [float(f) for f in fields]
    if any(v >= 60 for v in values[1:]):
        raise _Bad("has minutes or seconds >= 60")
    value = values[0] + sum(v / 60**i for i, v in enumerate(values[1:], start=1))
    lower = s.lower()
    marker = "h" if "h" in lower else "d" if ("d" in lower or "°" in s or "º" in s) else ""
    plain = len(fields) == 1 and re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", s) is not None
    return sign * value, marker, plain


def _range(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[float], str | None]:
    def check(x: float) -> str | None:
        if x < lo or x > hi or (lo_open and x == lo):
            return f"is outside {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        return None

    return check
