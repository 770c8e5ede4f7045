"""What a frame is: the image type from its header keywords, then the user's classification rules."""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ccdwatch.headers.cards import _Cards
from ccdwatch.headers.keywords import _OBJECT_KEYS, _TYPE_KEYS
from ccdwatch.headers.pixels import PixelEvidence, pixel_verdict
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
# 'Flat Field', 'skyflat', 'domeflat', 'twilight flat', IRAF 'DFLAT'/'SFLAT'/'TFLAT', LCO 'LAMPFLAT',
# ACP 'AutoFlat', and the light source after the word: 'Flat_Dome', 'FLAT-SKY'
_FLAT_SOURCES = "sky|dome|twilight|twi|lamp|screen|panel|dawn|dusk|evening|morning|led|el"
_FLAT = re.compile(rf"(?:{_FLAT_SOURCES}|auto|d|s|t)?flat(?:field)?s?(?:{_FLAT_SOURCES})?")
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
    """The type a compacted word names (a plural too, and with 'Frame(s)'/'Image(s)' after it:
    'BiasFrames'), ``None`` when it names none."""
    candidates = [word]
    for suffix in ("frames", "frame", "images", "image", "exposures", "exposure"):
        if word.endswith(suffix) and len(word) > len(suffix):
            candidates.append(word[: -len(suffix)])
    for w in candidates:
        if w in _TYPE_WORDS:
            return _TYPE_WORDS[w]
        if w.endswith("s") and w[:-1] in _TYPE_WORDS:
            return _TYPE_WORDS[w[:-1]]
        if _FLAT.fullmatch(w):
            return ImageType.FLAT
    return None


def _classify(text: str) -> tuple[ImageType | None, str]:
    """(type, reason): type None when the text is not recognised at all."""
    compact = _compact(text)
    if not compact:
        return None, "blank"
    if _MASTER.search(compact):
        return ImageType.UNKNOWN, "a master (already combined) frame, not a raw exposure"
    kind = _type_word(compact)
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


# ----------------------------------------------------------------------------------- the path

#: Words that name a type only where they lead a folder or file name ('Offset_001.fit' is a bias,
#: 'M42_Gain100_Offset30_001.fit' is not).
_LEADING_ONLY = {"offset", "offsets", "zero", "zeros", "object", "obj", "sci", "expose", "standard"}
#: File-name words that mark an exposure that is not data, when its header says light or nothing.
_NOT_DATA_WORDS = {"focus", "autofocus", "test", "snapshot", "preview"}
#: Folders whose files are not data, likewise ('AutoFocus/', 'Snapshots/').
_NOT_DATA_FOLDERS = {"focus", "autofocus", "focusing", "test", "tests", "snapshot", "snapshots", "preview",
                     "previews"}
#: File-name words of products that are never raw exposures, whatever the header says: a master
#: kept in the library's folder ('MasterDark_300s.fit') or a live stack ('Stack_16bits_10frames').
_PRODUCT_WORDS = {"mbias": "master", "mdark": "master", "mflat": "master", "stack": "stack",
                  "stacked": "stack", "integration": "integration", "calibrated": "calibrated",
                  "registered": "registered"}


def _tokens(component: str) -> list[str]:
    """Lower-case words of one path component, split from digits ('bias1' -> 'bias',
    'dark300s' -> 'dark', 's')."""
    return re.findall(r"[a-z]+", component.lower())


#: The end of the reason of a frame whose file name says it is a master or a product.
PRODUCT_REASON = "not a raw exposure"


def _not_raw(stem_words: Sequence[str]) -> str | None:
    """What a file name says it is when it is a master or a processed product, else None."""
    for word in stem_words:
        if word.startswith("master"):
            return "master"
        if word in _PRODUCT_WORDS:
            return _PRODUCT_WORDS[word]
    return None


def _component_type(component: str) -> ImageType | None:
    """The type one folder or file name names (None: none or several)."""
    words = _tokens(component)
    kinds: set[ImageType] = set()
    for i, word in enumerate(words):
        if word in _LEADING_ONLY and i > 0:
            continue
        pair = word + words[i + 1] if i + 1 < len(words) else ""
        kind = _type_word(pair) if pair in ("darkflat", "flatdark") else _type_word(word)
        if kind is not None and kind is not ImageType.UNKNOWN:
            kinds.add(kind)
    if ImageType.DARK in kinds and ImageType.FLAT in kinds:  # 'Dark_Flat_1s': darks for flats
        kinds.discard(ImageType.FLAT)
    return kinds.pop() if len(kinds) == 1 else None


def path_type(relpath: str) -> tuple[ImageType | None, str]:
    """What a frame's path says it is: the type its file name and folders name, when they name
    one; when they name several (the word 'Dark' of a target's name in a file filed under
    ``LIGHT/``), nothing: the header and the pixels decide.

    Returns
    -------
    (type, why)
        ``ImageType.UNKNOWN`` for a file named or filed as a focus/test exposure, or named as a
        master or a processed product; None when no folder or file name names a type.
    """
    kind, why, _ = _path_evidence(relpath)
    return kind, why


def _path_evidence(relpath: str) -> tuple[ImageType | None, str, bool]:
    """`path_type`'s (type, why), and whether the path says the file is never a raw exposure (a
    master or a processed product), which no header overrules."""
    parts = [p for p in str(relpath).replace("\\", "/").split("/") if p]
    if not parts:
        return None, "", False
    stem = re.sub(r"\.(fits?|fts)(\.(fz|gz))?$", "", parts[-1], flags=re.IGNORECASE)
    words = _tokens(stem)
    product = _not_raw(words)
    if product is not None:
        return ImageType.UNKNOWN, f"file name {parts[-1]!r} says {product}: {PRODUCT_REASON}", True
    not_data = sorted({"focus" if w.startswith(("focus", "autofocus")) else w for w in words
                       if w in _NOT_DATA_WORDS or w.startswith(("focus", "autofocus"))})
    if not_data:
        return ImageType.UNKNOWN, f"file name {parts[-1]!r} says {not_data[0]}: not data", False
    for folder in reversed(parts[:-1]):
        if _compact(folder) in _NOT_DATA_FOLDERS:
            return ImageType.UNKNOWN, f"folder {folder + '/'!r}: not data", False
    named = [(kind, f"file name {parts[-1]!r}") for kind in [_component_type(stem)] if kind is not None]
    named += [(kind, f"folder {folder + '/'!r}") for folder in reversed(parts[:-1])
              for kind in [_component_type(folder)] if kind is not None]
    if not named:
        return None, "", False
    if len({kind for kind, _ in named}) > 1:  # a target named 'Dark Shark Nebula' in a LIGHT/ folder
        return None, "the path names several types (" + ", ".join(f"{why}: {kind}" for kind, why in named) + ")", False
    return named[0][0], named[0][1], False


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
    path : str or None
        Pattern on the path relative to the incoming directory, case-insensitive: ``*`` and
        ``?`` stay within one folder, ``**`` spans folders (``'Dark/**'``, ``'**/flats/*'``).
    header : Mapping[str, str]
        KEYWORD -> fnmatch pattern on the cleaned, stripped value, case-insensitive; the pattern
        ``""`` matches a missing or blank card. Keywords are stored upper-case.
    imagetyp : ImageType or None
        Image type the rule sets (a string such as ``"flat"`` is accepted; ``"ignore"`` keeps the
        frame in the catalogue as ignored, with the rule as the reason).
    filter, object : str or None
        Filter / object name the rule sets (``""`` sets "none").
    """

    glob: str | None = None
    header: Mapping[str, str] = field(default_factory=dict)
    imagetyp: ImageType | str | None = None
    filter: str | None = None
    object: str | None = None
    path: str | None = None
    ignore: bool = False

    def __post_init__(self) -> None:
        if self.glob is not None and not isinstance(self.glob, str):
            raise ValueError(f"rule glob must be a string, got {self.glob!r}")
        if self.glob is not None and ("/" in self.glob or "\\" in self.glob):
            raise ValueError(f"glob {self.glob!r} is matched against the file's name only and can never "
                             f"match a folder; use path = {self.glob!r} to match the path below the "
                             "incoming directory")
        if self.path is not None and not isinstance(self.path, str):
            raise ValueError(f"rule path must be a string, got {self.path!r}")
        if isinstance(self.imagetyp, str) and self.imagetyp.strip().lower() == "ignore":
            object.__setattr__(self, "imagetyp", None)
            object.__setattr__(self, "ignore", True)
        object.__setattr__(self, "header", _header_conditions(self.header))
        if self.imagetyp is not None and not isinstance(self.imagetyp, ImageType):
            object.__setattr__(self, "imagetyp", _rule_image_type(self.imagetyp))
        for name in ("filter", "object"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"rule {name} must be a string, got {value!r}")
        if self.glob is None and self.path is None and not self.header:
            raise ValueError("a classification rule needs at least one condition (glob, path or header)")
        if self.imagetyp is None and self.filter is None and self.object is None and not self.ignore:
            raise ValueError("a classification rule must set at least one of imagetyp, filter, object")

    def __hash__(self) -> int:
        return hash((self.glob, self.path, tuple(sorted(self.header.items())), self.imagetyp, self.filter,
                     self.object, self.ignore))

    def fingerprint(self) -> str:
        """Everything that decides what the rule does, as stable text."""
        return repr((self.glob, self.path, sorted(self.header.items()), str(self.imagetyp), self.filter,
                     self.object, self.ignore))

    def describe(self) -> str:
        """The rule's conditions, for humans: ``"glob 'bias*', IMAGETYP='*flat*'"``."""
        parts = [f"glob {self.glob!r}"] if self.glob is not None else []
        parts += [f"path {self.path!r}"] if self.path is not None else []
        parts += [f"{k} blank" if p == "" else f"{k}={p!r}" for k, p in self.header.items()]
        return ", ".join(parts)

    def matches(self, filename: str, header: Mapping[str, Any]) -> bool:
        """Whether this rule applies to a file at ``filename`` (relative to the incoming
        directory) with raw header ``header``."""
        return self._matches(filename, _Cards(header))

    def _matches(self, relpath: str, cards: _Cards) -> bool:
        if self.glob is not None and not fnmatch.fnmatchcase(_base_name(relpath).lower(), self.glob.lower()):
            return False
        if self.path is not None and not path_matches(relpath, self.path):
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


#: Bumped whenever the classification of the same evidence can come out differently: the
#: daemon then reclassifies the catalogue at start-up.
CLASSIFIER_VERSION = 4  # 4: an OBJECT that is a calibration type; a light's target from its path


def fingerprint(rules: Sequence[ClassificationRule]) -> str:
    """What a classification depends on besides the frame itself: the rules and the classifier."""
    text = repr((CLASSIFIER_VERSION, [r.fingerprint() for r in rules]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path_matches(relpath: str, pattern: str) -> bool:
    """Does ``relpath`` (below the incoming directory) match ``pattern``? Case-insensitive;
    ``*`` and ``?`` stay within a folder, ``**`` spans any number of folders."""
    regex = ""
    i = 0
    pat = pattern.replace("\\", "/").lower()
    while i < len(pat):
        if pat.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pat[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pat[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(pat[i]), i + 1
    return re.fullmatch(regex, str(relpath).replace("\\", "/").lstrip("/").lower()) is not None


def _base_name(filename: str) -> str:
    return str(filename).replace("\\", "/").rsplit("/", 1)[-1]


# ------------------------------------------------------------------------- a frame's identity


class _Identity(NamedTuple):
    """What a frame is, through which filter, of which object; ``type_source`` says how."""

    imagetyp: ImageType
    type_source: str
    filter_name: str | None
    object_name: str | None
    by: str = "header"
    """Which evidence decided the type: ``rule``, ``header``, ``path``, ``pixels`` or ``none``."""
    ignored: bool = False
    rule: int | None = None
    """1-based index of the rule that set the type (or ignored the frame)."""


def _image_type(cards: _Cards) -> tuple[ImageType | None, str]:
    """The type the image-type keywords name; None when none is present or recognised."""
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
        return None, f"{', '.join(unrecognised)}: not a recognised image type"
    return None, f"no image-type keyword ({', '.join(_TYPE_KEYS)})"


def _weigh(header: tuple[ImageType | None, str], path: tuple[ImageType | None, str],
           pixels: PixelEvidence | None, exptime: float | None, *,
           never_raw: bool = False) -> tuple[ImageType, str, str]:
    """(type, why, by) from the header, the path and the pixels, in that order of trust.

    The header decides when the path agrees or says nothing; where they disagree (header
    'Light', file name 'domeflat'), the pixels decide between the two; with neither, the path,
    then the pixels' positive evidence. A path that names a master or a product
    (``never_raw``) overrules any header: a master dark keeps its darks' 'Dark Frame'.
    """
    (h_kind, h_why), (p_kind, p_why) = header, path
    if p_kind is ImageType.UNKNOWN and (never_raw or h_kind in (None, ImageType.LIGHT)):  # 'focus_001' typed Light
        return ImageType.UNKNOWN, p_why + (f" ({h_why})" if h_kind else ""), "path"
    if h_kind is not None and (p_kind is None or p_kind is h_kind or h_kind is ImageType.UNKNOWN
                               or p_kind is ImageType.UNKNOWN):
        return h_kind, h_why, "header"
    verdict, v_why = pixel_verdict(pixels, exptime)
    v_kind = ImageType(verdict) if verdict else None
    if h_kind is not None and p_kind is not None:  # they disagree
        if v_kind is p_kind:
            return p_kind, f"{p_why} says {p_kind}, {h_why} says {h_kind}; pixels: {v_why}", "pixels"
        return h_kind, f"{h_why} (the {p_why} says {p_kind}; pixels: {v_why})", "header"
    if p_kind in (ImageType.DARK, ImageType.BIAS) and v_kind is ImageType.LIGHT:  # no dark shows a star field
        return v_kind, f"pixels: {v_why} (the {p_why} says {p_kind}; {h_why})", "pixels"
    if p_kind is not None:
        return p_kind, p_why, "path"
    path_says = p_why or "no folder or file name names a type"
    if v_kind is not None:
        return v_kind, f"pixels: {v_why} ({h_why}; {path_says})", "pixels"
    return ImageType.UNKNOWN, f"{h_why}; {path_says}; {v_why}", "none"


def _apply_rules(
    rules: Sequence[ClassificationRule], relpath: str, cards: _Cards, found: _Identity
) -> _Identity:
    """``found`` with, per field, the setting of the first matching rule that sets it."""
    ident = found._asdict()
    set_fields: set[str] = set()
    for index, rule in enumerate(rules, start=1):
        if set_fields >= {"imagetyp", "filter", "object"}:
            break
        if not rule._matches(relpath, cards):
            continue
        if (rule.imagetyp is not None or rule.ignore) and "imagetyp" not in set_fields:
            kind = ImageType.UNKNOWN if rule.ignore else rule.imagetyp
            if found.by == "none" or (found.by != "header" and found.imagetyp is kind):
                was = ""
            elif found.by == "header":
                was = f"; header said {found.type_source}"
            else:
                was = f"; {found.by} said {found.imagetyp}: {found.type_source}"
            ident.update(by="rule", rule=index, ignored=rule.ignore,
                         imagetyp=kind,
                         type_source=f"rule {index} ({rule.describe()}){'' if rule.ignore else was}")
            set_fields.add("imagetyp")
        if rule.filter is not None and "filter" not in set_fields:
            ident["filter_name"] = _clean_text(rule.filter)
            set_fields.add("filter")
        if rule.object is not None and "object" not in set_fields:
            ident["object_name"] = _clean_text(rule.object)
            set_fields.add("object")
    return _Identity(**ident)


def _identify(cards: _Cards, relpath: str, rules: Sequence[ClassificationRule],
              pixels: PixelEvidence | None = None, exptime: float | None = None) -> _Identity:
    """Decide a frame's image type, filter and object from the evidence, in order: the user's
    rules; the header; the path (folder and file-name words); and the pixels.

    The one place a frame's classification is made.
    """
    p_kind, p_why, never_raw = _path_evidence(relpath)
    object_name = cards.first_text(_OBJECT_KEYS, null_words=True)
    named_by_object = p_kind is None and not p_why and _object_type(object_name) is not None
    if named_by_object:  # sky flats shot as lights of a target named 'Flat': weighed as a path would be
        p_kind, p_why = _object_type(object_name), f"object name {object_name!r}"
    kind, why, by = _weigh(_image_type(cards), (p_kind, p_why), pixels, exptime, never_raw=never_raw)
    if named_by_object and by == "path":
        by = "header"  # the OBJECT card decided: header evidence, whatever its weight
    if object_name is None and kind is ImageType.LIGHT:
        object_name = path_designation(relpath)
    found = _Identity(kind, why, _filter(cards), object_name, by=by)
    return _apply_rules(rules, relpath, cards, found)


#: A catalogue designation at the start of a file or folder name, as camera programs and observers
#: put a target there when OBJECT is blank ('M51_I_001.fit', 'NGC 7000/Light/...', 'Sh2-155-Ha-003'):
#: Messier, NGC, IC, Sharpless, Abell, Arp, Barnard, LDN/LBN, vdB, Melotte, Collinder, UGC, PGC, Caldwell.
_DESIGNATION = re.compile(r"(?:m\d{1,3}|(?:ngc|ic|sh ?2|abell|arp|barnard|ldn|lbn|vdb|mel|cr|collinder|ugc|pgc"
                          r"|caldwell)[ _-]?\d{1,5})(?=$|[ _.-])", re.IGNORECASE)


def path_designation(relpath: str) -> str | None:
    """The target a light's file name, else its nearest folder, names by a catalogue designation
    at its start (``M51_I_001.fit`` -> 'M51'), for a light whose OBJECT is blank: the real night's
    MaxIm lights were a stack 'field-0154' that `frames --object M51` could not find."""
    parts = [p for p in str(relpath).replace("\\", "/").split("/") if p]
    if not parts:
        return None
    for part in [re.sub(r"\.(fits?|fts)(\.(fz|gz))?$", "", parts[-1], flags=re.IGNORECASE), *reversed(parts[:-1])]:
        found = _DESIGNATION.match(part)
        if found:
            return found.group(0).replace("_", " ").strip()
    return None


def _object_type(name: str | None) -> ImageType | None:
    """The calibration type an object name is, as a whole ('Flat', 'SkyFlats', 'Dark', 'Bias'):
    what a camera program's sequence of sky flats or darks, shot as lights, puts in OBJECT. A
    name that merely holds such a word ('Dark Shark Nebula') names no type."""
    kind = _type_word(_compact(name)) if name else None
    return kind if kind in (ImageType.FLAT, ImageType.DARK, ImageType.BIAS) else None
