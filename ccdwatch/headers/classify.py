"""What a frame is: the image type from its header keywords, then the user's classification rules."""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ccdwatch.headers.cards import _Cards
from ccdwatch.headers.keywords import _OBJECT_KEYS, _TYPE_KEYS
from ccdwatch.headers.quantities import _filter
from ccdwatch.headers.values import _clean_text


class ImageType(enum.StrEnum):
    """What a frame is, as far as calibration is concerned."""

    BIAS = "bias"
    DARK = "dark"
    FLAT = "flat"
    LIGHT = "light"
    UNKNOWN = "unknown"


# -------------------------------------------------------------------------------- image types

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


def _type_word(word: str) -> ImageType | None:
    """The type a compacted word names (a plural too), ``None`` when it names none."""
    if word in _TYPE_WORDS:
        return _TYPE_WORDS[word]
    if word.endswith("s") and word[:-1] in _TYPE_WORDS:
        return _TYPE_WORDS[word[:-1]]
    if _FLAT.fullmatch(word):
        return ImageType.FLAT
    return None


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
        kind = _type_word(word)
        if kind is not None:
            return kind, ""
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


# -------------------------------------------------------------------------------------- rules

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
        object.__setattr__(self, "header", _header_conditions(self.header))
        if self.imagetyp is not None and not isinstance(self.imagetyp, ImageType):
            object.__setattr__(self, "imagetyp", _rule_image_type(self.imagetyp))
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


def _header_conditions(header: Any) -> dict[str, str]:
    """A rule's ``header`` table checked, with its keywords stripped and upper-cased."""
    if not isinstance(header, Mapping):
        raise ValueError(f"rule header must be a mapping KEYWORD -> pattern, got {header!r}")
    conditions: dict[str, str] = {}
    for key, pattern in header.items():
        if not isinstance(key, str) or not key.strip() or not isinstance(pattern, str):
            raise ValueError(
                f"rule header conditions must be KEYWORD = 'pattern' strings, got {key!r} = {pattern!r}"
            )
        conditions[key.strip().upper()] = pattern
    return conditions


def _rule_image_type(value: Any) -> ImageType:
    """A rule's ``imagetyp`` given as text (``"Flat"``) -> :class:`ImageType`."""
    try:
        return ImageType(str(value).strip().lower())
    except ValueError:
        allowed = ", ".join(t.value for t in ImageType)
        raise ValueError(f"rule imagetyp must be one of {allowed}, got {value!r}") from None


def _base_name(filename: str) -> str:
    return str(filename).replace("\\", "/").rsplit("/", 1)[-1]


# ------------------------------------------------------------------------- a frame's identity


class _Identity(NamedTuple):
    """What a frame is, through which filter, of which object; ``type_source`` says how."""

    imagetyp: ImageType
    type_source: str
    filter_name: str | None
    object_name: str | None


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


def _apply_rules(
    rules: Sequence[ClassificationRule], base_name: str, cards: _Cards, found: _Identity
) -> _Identity:
    """``found`` with, per field, the setting of the first matching rule that sets it."""
    imagetyp, type_source, filter_name, object_name = found
    set_fields: set[str] = set()
    for index, rule in enumerate(rules, start=1):
        if set_fields >= {"imagetyp", "filter", "object"}:
            break
        if not rule._matches(base_name, cards):
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
    return _Identity(imagetyp, type_source, filter_name, object_name)


def _identify(cards: _Cards, base_name: str, rules: Sequence[ClassificationRule]) -> _Identity:
    """Decide a frame's image type, filter and object: its header cards first, then ``rules``.

    The one place a frame's classification is made; any further evidence belongs here.
    """
    imagetyp, type_source = _image_type(cards)
    found = _Identity(imagetyp, type_source, _filter(cards), cards.first_text(_OBJECT_KEYS, null_words=True))
    return _apply_rules(rules, base_name, cards, found)
