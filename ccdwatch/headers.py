"""Raw FITS header -> normalised :class:`FrameInfo`.

Pure: no file I/O. The input is any ``Mapping[str, Any]`` (an :class:`astropy.io.fits.Header` or a
plain dict) written by some camera program -- MaxIm DL, N.I.N.A., Ekos/INDI, ACP, SharpCap, APT,
SGP, TheSkyX or an IRAF-style observatory pipeline -- and is treated as untrusted: values may have
the wrong type, be NaN, carry control characters or be kilobytes long. :func:`normalise` never
raises on such values; it records what it noticed in :attr:`FrameInfo.warnings` and falls back to
``None`` (or the documented default).

Conventions
-----------
* Keyword look-up is case-insensitive and ignores a ``HIERARCH`` prefix; for each quantity a list
  of synonyms is tried in order and the first *usable* value wins (a bad value is reported and the
  next synonym tried).
* Every string is cleaned: control and format characters removed, whitespace stripped, capped at
  68 characters (the longest value a FITS card holds); blank becomes ``None``.
* Times are aware UTC :class:`~datetime.datetime`; temperatures degC; exposure seconds; angles
  degrees (RA too), longitude east positive in (-180, 180].
* The *night* of a frame is the local date at the start of the night:
  ``(local time - night_start_hour).date()``, so a frame at 01:54 local belongs to the night that
  began the previous evening.
"""

from __future__ import annotations

import enum
import fnmatch
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as _fixed_zone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_STRING",
    "ClassificationRule",
    "FrameInfo",
    "ImageType",
    "camera_key",
    "header_to_jsonable",
    "night_label",
    "normalise",
    "parse_image_type",
]

#: Longest string value kept from a header (characters): what one FITS card can hold.
MAX_STRING = 68

#: Longest string value kept by :func:`header_to_jsonable` (characters).
MAX_JSON_STRING = 16384


class ImageType(enum.StrEnum):
    """What a frame is, as far as calibration is concerned."""

    BIAS = "bias"
    DARK = "dark"
    FLAT = "flat"
    LIGHT = "light"
    UNKNOWN = "unknown"


# ----------------------------------------------------------------------------------- keywords

_TYPE_KEYS = ("IMAGETYP", "FRAME", "OBSTYPE", "IMGTYPE", "IMAGETYPE")
_EXPTIME_KEYS = ("EXPTIME", "EXPOSURE", "EXP_TIME", "EXP-TIME", "EXPOSURE TIME", "EXPOSURETIME", "EXPTIM")
_FILTER_KEYS = ("FILTER", "FILTNAME", "FLTNAME", "INSFILTE")
_FILTER_WHEEL_KEYS = ("FILTER1", "FILTER2", "FILTER3")
_OBJECT_KEYS = ("OBJECT", "OBJNAME")
_TIME_KEYS = ("TIME-OBS", "UT", "UTSTART", "UT-START")
_LONGITUDE_KEYS = ("SITELONG", "LONG-OBS", "OBSLONG", "OBSGEO-L")
_BIN_PAIRS = (("XBINNING", "YBINNING"), ("BINX", "BINY"), ("XBIN", "YBIN"), ("CCDXBIN", "CCDYBIN"))
_CCD_TEMP_KEYS = ("CCD-TEMP", "CCD_TEMP", "CCDTEMP", "DET-TEMP", "TEMPERAT")
_SET_TEMP_KEYS = ("SET-TEMP", "SET_TEMP", "SETTEMP", "CCD-SET")
_GAIN_KEYS = ("GAIN",)
_EGAIN_KEYS = ("EGAIN",)
_OFFSET_KEYS = ("OFFSET", "BLKLEVEL")
_READOUT_KEYS = ("READOUTM", "READMODE", "READOUT")
_INSTRUMENT_KEYS = ("INSTRUME", "CAMERA")
_TELESCOPE_KEYS = ("TELESCOP",)
_SOFTWARE_KEYS = ("SWCREATE", "CREATOR", "PROGRAM", "SOFTWARE")
_COORD_PAIRS = (("RA", "DEC"), ("OBJCTRA", "OBJCTDEC"))

#: Values that mean "nothing" in a FILTER/OBJECT card.
_NULL_WORDS = frozenset({"none", "null", "n/a", "-", "--"})
#: Filter-wheel positions that do not filter (dropped when FILTER1/FILTER2 are combined).
_NO_FILTER = frozenset({"clear", "open", "empty", "none", "air"})

# Dates outside this window are camera-clock nonsense, not observations.
_FIRST_YEAR, _LAST_YEAR = 1900, 2199
_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)
_MJD_MIN = (datetime(_FIRST_YEAR, 1, 1, tzinfo=UTC) - _MJD_EPOCH).days
_MJD_MAX = (datetime(_LAST_YEAR + 1, 1, 1, tzinfo=UTC) - _MJD_EPOCH).days

# ------------------------------------------------------------------------------- image types

_TYPE_WORDS: dict[str, ImageType] = {
    # bias: MaxIm/TheSkyX 'Bias Frame', IRAF 'zero', SBIG/old MaxIm 'Offset'
    "bias": ImageType.BIAS,
    "biases": ImageType.BIAS,
    "zero": ImageType.BIAS,
    "offset": ImageType.BIAS,
    # darks, including the short darks taken for flats (N.I.N.A. 'DARKFLAT', APT/SharpCap 'Flat Dark')
    "dark": ImageType.DARK,
    "flatdark": ImageType.DARK,
    "darkflat": ImageType.DARK,
    "darkforflat": ImageType.DARK,
    "biasdark": ImageType.DARK,
    # lights: MaxIm 'Light Frame'/'Tricolor Image', IRAF 'object', LCO 'EXPOSE', 'science'
    "light": ImageType.LIGHT,
    "object": ImageType.LIGHT,
    "obj": ImageType.LIGHT,
    "science": ImageType.LIGHT,
    "sci": ImageType.LIGHT,
    "tricolorimage": ImageType.LIGHT,
    "tricolor": ImageType.LIGHT,
    "expose": ImageType.LIGHT,
    "standard": ImageType.LIGHT,
}
# 'Flat Field', 'skyflat', 'domeflat', 'twilight flat', IRAF 'DFLAT'/'SFLAT'/'TFLAT', LCO 'LAMPFLAT'
_FLAT = re.compile(
    r"(?:sky|dome|twilight|twi|lamp|screen|panel|dawn|dusk|evening|morning|led|el|d|s|t)?"
    r"flat(?:field)?s?"
)
_MASTER = re.compile(r"master|^mstr|^super|^mbias$|^mdark$|^mflat$")
_NOT_RAW: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"focus|fwhm"), "a focus exposure, not data"),
    (re.compile(r"test|snapshot|snap$|preview|experimental|engineering|junk|trash"),
     "a test/snapshot exposure, not data"),
    (re.compile(r"acq|pointing|platesolve|solve|sync|center|centre|guide"),
     "an acquisition/pointing/guiding exposure, not data"),
    (re.compile(r"^(?:arc|comp|lamp|wavecal|thar|neon|argon)"),
     "a spectroscopic lamp exposure, which ccdwatch does not reduce"),
    (re.compile(r"calibrated|reduced|processed|stack|integrat|registered|aligned|combined|sum$"),
     "a processed product, not a raw exposure"),
)


def _compact(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


def _classify(text: str) -> tuple[ImageType | None, str]:
    """(type, reason): type None when the text is not recognised at all."""
    compact = _compact(text)
    if not compact:
        return None, "blank"
    if _MASTER.search(compact):
        return ImageType.UNKNOWN, "a master (already combined) frame, not a raw exposure"
    candidates = [compact]
    for suffix in ("frames", "frame", "images", "image", "exposure"):
        if compact.endswith(suffix) and len(compact) > len(suffix):
            candidates.append(compact[: -len(suffix)])
    for word in candidates:
        if word in _TYPE_WORDS:
            return _TYPE_WORDS[word], ""
        if word.endswith("s") and word[:-1] in _TYPE_WORDS:
            return _TYPE_WORDS[word[:-1]], ""
        if _FLAT.fullmatch(word):
            return ImageType.FLAT, ""
    for pattern, reason in _NOT_RAW:
        if pattern.search(compact):
            return ImageType.UNKNOWN, reason
    return None, "not a recognised image type"


def parse_image_type(value: str | None) -> ImageType | None:
    """Map an image-type card value of any camera program to an :class:`ImageType`.

    Case, spaces, hyphens and underscores are ignored, as is a trailing 'Frame'/'Image'.

    Parameters
    ----------
    value : str or None
        Value of IMAGETYP (or FRAME, OBSTYPE, ...), e.g. ``'Bias Frame'``, ``'zero'``,
        ``'DARKFLAT'``, ``'Flat Field'``, ``'twilight flat'``, ``'object'``.

    Returns
    -------
    ImageType or None
        The type; ``ImageType.UNKNOWN`` for values that are recognised but must not be used as
        raw data ('Master Bias', 'focus', 'test', 'arc', ...); ``None`` for a missing, blank or
        unrecognised value.
    """
    text = _clean_text(value)
    if text is None:
        return None
    return _classify(text)[0]


# ----------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class ClassificationRule:
    """Ordered config rules for data whose headers lie or are missing.

    A rule matches when ALL its given conditions match (at least one condition required, else
    ValueError). It sets at least one of ``imagetyp``, ``filter``, ``object`` (else ValueError).
    When several rules match a frame, for each of these three fields the first matching rule
    that sets it wins, and it overrides the header.

    Attributes
    ----------
    glob : str or None
        fnmatch pattern on the file's base name, case-insensitive (``'bias*'``).
    header : Mapping[str, str]
        KEYWORD -> fnmatch pattern on the cleaned, stripped value, case-insensitive; the pattern
        ``""`` matches a missing or blank card. Keywords are stored upper-case.
    imagetyp : ImageType or None
        Image type the rule sets (a string such as ``"flat"`` is accepted).
    filter, object : str or None
        Filter / object name the rule sets (``""`` sets "none").
    """

    glob: str | None = None
    header: Mapping[str, str] = field(default_factory=dict)
    imagetyp: ImageType | None = None
    filter: str | None = None
    object: str | None = None

    def __post_init__(self) -> None:
        if self.glob is not None and not isinstance(self.glob, str):
            raise ValueError(f"rule glob must be a string, got {self.glob!r}")
        if not isinstance(self.header, Mapping):
            raise ValueError(f"rule header must be a mapping KEYWORD -> pattern, got {self.header!r}")
        header: dict[str, str] = {}
        for key, pattern in self.header.items():
            if not isinstance(key, str) or not key.strip() or not isinstance(pattern, str):
                raise ValueError(
                    f"rule header conditions must be KEYWORD = 'pattern' strings, got {key!r} = {pattern!r}"
                )
            header[key.strip().upper()] = pattern
        object.__setattr__(self, "header", header)
        if self.imagetyp is not None and not isinstance(self.imagetyp, ImageType):
            try:
                object.__setattr__(self, "imagetyp", ImageType(str(self.imagetyp).strip().lower()))
            except ValueError:
                allowed = ", ".join(t.value for t in ImageType)
                raise ValueError(f"rule imagetyp must be one of {allowed}, got {self.imagetyp!r}") from None
        for name in ("filter", "object"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"rule {name} must be a string, got {value!r}")
        if self.glob is None and not self.header:
            raise ValueError("a classification rule needs at least one condition (glob or header)")
        if self.imagetyp is None and self.filter is None and self.object is None:
            raise ValueError("a classification rule must set at least one of imagetyp, filter, object")

    def __hash__(self) -> int:
        return hash((self.glob, tuple(sorted(self.header.items())), self.imagetyp, self.filter, self.object))

    def describe(self) -> str:
        """The rule's conditions, for humans: ``"glob 'bias*', IMAGETYP='*flat*'"``."""
        parts = [f"glob {self.glob!r}"] if self.glob is not None else []
        parts += [f"{k} blank" if p == "" else f"{k}={p!r}" for k, p in self.header.items()]
        return ", ".join(parts)

    def matches(self, filename: str, header: Mapping[str, Any]) -> bool:
        """Whether this rule applies to a file ``filename`` with raw header ``header``."""
        return self._matches(_base_name(filename), _Cards(header))

    def _matches(self, base_name: str, cards: _Cards) -> bool:
        if self.glob is not None and not fnmatch.fnmatchcase(base_name.lower(), self.glob.lower()):
            return False
        for key, pattern in self.header.items():
            value = cards.text(key)
            if pattern == "":
                if value is not None:
                    return False
            elif value is None or not fnmatch.fnmatchcase(value.lower(), pattern.lower()):
                return False
        return True


def _base_name(filename: str) -> str:
    return str(filename).replace("\\", "/").rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------- FrameInfo


@dataclass(frozen=True)
class FrameInfo:
    """A frame's header, normalised. Units: seconds, degC, degrees; times aware UTC."""

    imagetyp: ImageType
    type_source: str
    """Human explanation: ``"IMAGETYP='Bias Frame'"``, ``"rule 2 (glob 'bias*')"``,
    ``"no image-type keyword ..."``."""
    exptime: float | None
    filter: str | None
    object: str | None
    date_obs: datetime | None
    """Start of exposure, timezone-aware UTC."""
    night: str | None
    """``'YYYY-MM-DD'``: the local date at the start of the night."""
    xbin: int
    ybin: int
    naxis1: int | None
    naxis2: int | None
    ccd_temp: float | None
    set_temp: float | None
    gain: float | None
    """Camera gain SETTING (CMOS 'GAIN'), not e-/ADU."""
    egain: float | None
    """Electrons per ADU."""
    offset: float | None
    readout_mode: str | None
    instrument: str | None
    telescope: str | None
    ra_deg: float | None
    dec_deg: float | None
    site_longitude: float | None
    """Degrees, east positive, in (-180, 180]."""
    software: str | None
    warnings: tuple[str, ...] = ()


# ------------------------------------------------------------------------- value cleaning

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


def _sexagesimal(text: str, *, compass: str = "") -> tuple[float, str, bool]:
    """Parse '-01 29 07', '+10:30:00', '13h29m52.7s', '47d11m43s', '1 29 07 W' or '-1.485'.

    Returns (value in the unit of the first field, marker 'h'/'d'/'' found, plain decimal?).
    ``compass`` lists the accepted trailing/leading compass letters, e.g. ``"EW"``; 'W' and 'S'
    negate.
    """
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


# --------------------------------------------------------------------------- card access


class _Cards:
    """Case-insensitive, first-occurrence view of a raw header, with a warning log."""

    def __init__(self, header: Mapping[str, Any]) -> None:
        self.values: dict[str, Any] = {}
        self.warnings: list[str] = []
        for key, value in header.items():
            name = _clean_text(key, cap=80)
            if name is None:
                continue
            name = name.upper()
            if name.startswith("HIERARCH "):
                name = name[9:].strip()
            if name in ("COMMENT", "HISTORY") or name in self.values:
                continue
            self.values[name] = value

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def present(self, key: str) -> bool:
        return self.text(key) is not None

    def text(self, key: str) -> str | None:
        return _clean_text(self.values.get(key))

    def first_text(self, keys: Sequence[str], *, null_words: bool = False) -> str | None:
        for key in keys:
            text = self.text(key)
            if text is not None and not (null_words and text.lower() in _NULL_WORDS):
                return text
        return None

    def number(
        self,
        keys: Sequence[str],
        what: str,
        *,
        check: Callable[[float], str | None] | None = None,
        units: Mapping[str, float] | None = None,
    ) -> float | None:
        """First usable number among ``keys``; bad values are reported and skipped."""
        for key in keys:
            raw = self.values.get(key)
            if _clean_text(raw) is None:
                continue
            try:
                number = _to_float(raw, units)
            except _Bad as exc:
                self.warn(f"{what}: {key}={_show(raw)} {exc}; ignored")
                continue
            problem = check(number) if check else None
            if problem:
                self.warn(f"{what}: {key}={_show(raw)} {problem}; ignored")
                continue
            return number
        return None

    def whole(self, key: str, what: str, *, lo: int, hi: int) -> int | None:
        raw = self.values.get(key)
        if _clean_text(raw) is None:
            return None
        try:
            number = _to_int(raw)
        except _Bad as exc:
            self.warn(f"{what}: {key}={_show(raw)} {exc}; ignored")
            return None
        if not lo <= number <= hi:
            self.warn(f"{what}: {key}={_show(raw)} is outside {lo}..{hi}; ignored")
            return None
        return number


def _range(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[float], str | None]:
    def check(x: float) -> str | None:
        if x < lo or x > hi or (lo_open and x == lo):
            return f"is outside {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        return None

    return check


# ------------------------------------------------------------------------------ quantities

_SECONDS = {"": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
            "ms": 1e-3, "msec": 1e-3, "min": 60.0}
_CELSIUS = {"": 1.0, "c": 1.0, "degc": 1.0, "°c": 1.0}


def _exposure(cards: _Cards) -> float | None:
    def check(x: float) -> str | None:
        return "is negative" if x < 0 else None

    return cards.number(_EXPTIME_KEYS, "exposure time", check=check, units=_SECONDS)


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


# ----------------------------------------------------------------------------------- dates

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


def _date_obs(cards: _Cards, zone: tzinfo | None) -> datetime | None:
    raw = cards.values.get("DATE-OBS")
    text = _clean_text(raw)
    if text is not None:
        try:
            naive, has_time, suffix = _parse_date(text)
            if has_time:
                return _sane((naive.replace(tzinfo=suffix or UTC)).astimezone(UTC))
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
                return _sane((naive + offset).replace(tzinfo=UTC))
            cards.warn(f"date: DATE-OBS={_show(raw)} has no time of day and no TIME-OBS/UT card")
        except (_Bad, OverflowError) as exc:
            cards.warn(f"date: DATE-OBS={_show(raw)} {exc}; ignored")
    raw = cards.values.get("DATE-BEG")
    text = _clean_text(raw)
    if text is not None:
        try:
            naive, has_time, suffix = _parse_date(text)
            if not has_time:
                raise _Bad("has no time of day")
            return _sane(naive.replace(tzinfo=suffix or UTC).astimezone(UTC))
        except (_Bad, OverflowError) as exc:
            cards.warn(f"date: DATE-BEG={_show(raw)} {exc}; ignored")
    mjd_range = _range(_MJD_MIN, _MJD_MAX)
    mjd = cards.number(("MJD-OBS",), "date", check=mjd_range)
    if mjd is None:
        jd = cards.number(("JD-OBS", "JD"), "date", check=_range(_MJD_MIN + 2400000.5, _MJD_MAX + 2400000.5))
        mjd = None if jd is None else jd - 2400000.5
    if mjd is not None:
        return _MJD_EPOCH + timedelta(days=mjd)
    raw = cards.values.get("DATE-LOC")
    text = _clean_text(raw)
    if text is not None:
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
    if not any(cards.present(k) for k in ("DATE-OBS", "DATE-BEG", "MJD-OBS", "JD-OBS", "JD", "DATE-LOC")):
        cards.warn("date: no DATE-OBS, MJD-OBS, JD or DATE-LOC card")
    return None


# ------------------------------------------------------------------------------ time zones

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


# ------------------------------------------------------------------------------- normalise


def _image_type(cards: _Cards) -> tuple[ImageType, str]:
    unrecognised = []
    for key in _TYPE_KEYS:
        text = cards.text(key)
        if text is None:
            continue
        kind, why = _classify(text)
        if kind is None:
            unrecognised.append(f"{key}={text!r}")
        elif kind is ImageType.UNKNOWN:
            return kind, f"{key}={text!r}: {why}"
        else:
            return kind, f"{key}={text!r}"
    if unrecognised:
        return ImageType.UNKNOWN, f"{', '.join(unrecognised)}: not a recognised image type"
    return ImageType.UNKNOWN, f"no image-type keyword ({', '.join(_TYPE_KEYS)})"


def normalise(
    header: Mapping[str, Any],
    *,
    filename: str,
    rules: Sequence[ClassificationRule] = (),
    timezone: str = "auto",
    night_start_hour: float = 12.0,
) -> FrameInfo:
    """Turn an untrusted raw FITS header into a :class:`FrameInfo`.

    Parameters
    ----------
    header : Mapping[str, Any]
        Raw header (astropy Header or dict). Never modified.
    filename : str
        The file's name (a path is fine; only the base name is used), for ``rules``.
    rules : sequence of ClassificationRule, optional
        Applied in order; for each of image type, filter and object, the first matching rule
        that sets it overrides the header.
    timezone : str, optional
        For the night label and for DATE-LOC; see :func:`night_label`.
    night_start_hour : float, optional
        Local hour at which the night label changes (default 12).

    Returns
    -------
    FrameInfo
        Problems noticed while reading are in ``warnings``; unusable values become ``None``.

    Raises
    ------
    ValueError
        Only for a bad ``timezone`` or ``night_start_hour`` (programming/config errors), never for
        header content.
    """
    zone = _resolve_zone(timezone)
    start_hour = _check_start_hour(night_start_hour)
    cards = _Cards(header)

    imagetyp, type_source = _image_type(cards)
    filter_name = _filter(cards)
    object_name = cards.first_text(_OBJECT_KEYS, null_words=True)
    base = _base_name(filename)
    set_fields: set[str] = set()
    for index, rule in enumerate(rules, start=1):
        if set_fields >= {"imagetyp", "filter", "object"}:
            break
        if not rule._matches(base, cards):
            continue
        if rule.imagetyp is not None and "imagetyp" not in set_fields:
            was = "" if type_source.startswith("no image-type") else f"; header said {type_source}"
            imagetyp, type_source = rule.imagetyp, f"rule {index} ({rule.describe()}){was}"
            set_fields.add("imagetyp")
        if rule.filter is not None and "filter" not in set_fields:
            filter_name = _clean_text(rule.filter)
            set_fields.add("filter")
        if rule.object is not None and "object" not in set_fields:
            object_name = _clean_text(rule.object)
            set_fields.add("object")

    exptime = _exposure(cards)
    missing = not any(cards.present(k) for k in _EXPTIME_KEYS)
    if missing and imagetyp is not ImageType.BIAS:
        cards.warn("exposure time: no EXPTIME/EXPOSURE card")
    if imagetyp is ImageType.BIAS and exptime is not None and exptime > 1.0:
        cards.warn(f"exposure time: a bias with an exposure of {exptime:g} s")

    longitude = _longitude(cards)
    date_obs = _date_obs(cards, zone)
    night = _night(date_obs, zone, longitude, start_hour) if date_obs is not None else None
    xbin, ybin = _binning(cards)
    naxis1, naxis2 = _shape(cards)
    temperature = _range(-273.15, 100.0)
    ra_deg, dec_deg = _coordinates(cards)

    info = FrameInfo(
        imagetyp=imagetyp,
        type_source=type_source,
        exptime=exptime,
        filter=filter_name,
        object=object_name,
        date_obs=date_obs,
        night=night,
        xbin=xbin,
        ybin=ybin,
        naxis1=naxis1,
        naxis2=naxis2,
        ccd_temp=cards.number(_CCD_TEMP_KEYS, "CCD temperature", check=temperature, units=_CELSIUS),
        set_temp=cards.number(_SET_TEMP_KEYS, "set-point temperature", check=temperature, units=_CELSIUS),
        gain=cards.number(_GAIN_KEYS, "gain setting", check=_range(0.0, 1e6)),
        egain=cards.number(_EGAIN_KEYS, "e-/ADU", check=_range(0.0, 1e6, lo_open=True)),
        offset=cards.number(_OFFSET_KEYS, "offset", check=_range(-1e9, 1e9)),
        readout_mode=cards.first_text(_READOUT_KEYS),
        instrument=cards.first_text(_INSTRUMENT_KEYS),
        telescope=cards.first_text(_TELESCOPE_KEYS),
        ra_deg=ra_deg,
        dec_deg=dec_deg,
        site_longitude=longitude,
        software=cards.first_text(_SOFTWARE_KEYS),
        warnings=tuple(cards.warnings),
    )
    if info.warnings:
        logger.debug("%s: %s", base, "; ".join(info.warnings))
    return info


# ------------------------------------------------------------------------------ group keys


def _number_text(value: float) -> str:
    return f"{value:.6g}"


def camera_key(info: FrameInfo) -> str:
    """A stable, readable key of the camera set-up a frame was taken with.

    Frames can share calibration masters only when their keys are equal: instrument, binning,
    image shape, and gain setting / offset / readout mode when the header gives them. Filter,
    exposure, temperature and date are not part of it.

    Returns
    -------
    str
        e.g. ``"QSI 532|bin2x2|1092x736"`` or ``"ZWO ASI294MM|bin1x1|4144x2822|gain=120|offset=30"``.
    """

    def part(text: str | None, missing: str) -> str:
        return missing if text is None else text.replace("|", "/")

    shape = f"{info.naxis1 if info.naxis1 is not None else '?'}x{info.naxis2 if info.naxis2 is not None else '?'}"
    pieces = [part(info.instrument, "unknown camera"), f"bin{info.xbin}x{info.ybin}", shape]
    if info.gain is not None:
        pieces.append(f"gain={_number_text(info.gain)}")
    if info.offset is not None:
        pieces.append(f"offset={_number_text(info.offset)}")
    if info.readout_mode is not None:
        pieces.append(f"mode={part(info.readout_mode, '')}")
    return "|".join(pieces)


# ------------------------------------------------------------------------------------ JSON


def _json_text(text: str) -> str:
    if len(text) > MAX_JSON_STRING:
        text = text[:MAX_JSON_STRING] + "...[truncated]"
    return text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> '?'


def _json_value(value: Any) -> str | int | float | bool | None:
    plain = _plain(value)
    if plain is None or isinstance(plain, bool):
        return plain
    if isinstance(plain, int):  # beyond 64 bits: a string, as SQLite's JSON would lose it
        return plain if -(2**63) <= plain < 2**63 else _int_text(plain)
    if isinstance(plain, float):
        if math.isnan(plain):
            return "NaN"
        if math.isinf(plain):
            return "Infinity" if plain > 0 else "-Infinity"
        return plain
    return _json_text(str(plain))


def header_to_jsonable(header: Mapping[str, Any]) -> dict[str, Any]:
    """The full original header as JSON-safe values, for the catalogue's JSON column.

    Values become str/int/float/bool/None: NaN and infinities become the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``; bytes are decoded (UTF-8, invalid bytes replaced); strings
    longer than 16 kB are truncated. COMMENT and HISTORY are always lists; any other keyword that
    occurs more than once becomes a list of its values in order. Blank cards are dropped.

    Returns
    -------
    dict
        Keyword -> value (or list of values), in header order; ``json.dumps`` accepts it with
        ``allow_nan=False``.
    """
    out: dict[str, Any] = {}
    for key, value in header.items():
        name = _json_text(str(_plain(key)))
        item = _json_value(value)
        if name.strip() == "" and item in (None, ""):
            continue
        if name in ("COMMENT", "HISTORY"):
            out.setdefault(name, []).append(item)
        elif name in out:
            previous = out[name]
            if isinstance(previous, list):
                previous.append(item)
            else:
                out[name] = [previous, item]
        else:
            out[name] = item
    return out
