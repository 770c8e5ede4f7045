"""Settings about the data itself: the detector's overscan (``[overscan]``), the format of the
product files (``[products]``: a flat section, checked by :mod:`ccdwatch.config`'s generic
parser) and the ``[[classify]]`` rules; and :class:`ConfigError`, shared with :mod:`ccdwatch.config`.

Each section's table is checked here, key by key, with messages that name the key and the fix.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ccdwatch.headers import ClassificationRule, ImageType
from ccdwatch.headers.sections import OverscanRules, Section

__all__ = ["ConfigError", "OverscanConfig", "ProductsConfig", "parse_overscan", "parse_rules",
           "unknown_key"]


class ConfigError(ValueError):
    """A configuration value that ccdwatch cannot use; the message names the key and the fix."""


@dataclass(frozen=True)
class CameraSections:
    """One camera's overscan and data sections (FITS text, stored pixels; "" for none)."""

    biassec: str = ""
    trimsec: str = ""


@dataclass(frozen=True)
class OverscanConfig:
    use_header: bool = True
    """Take the overscan strip from BIASSEC and the data from TRIMSEC (else DATASEC) when the
    header has them; false: only the cameras listed below are overscan-corrected."""
    method: Literal["median", "fit"] = "median"
    """``median``: one level per frame (the strip's 10 %-trimmed mean); ``fit``: a polynomial of
    degree ``order`` along the readout, for a bias that changes along the frame."""
    order: int = 1
    cameras: Mapping[str, CameraSections] = field(default_factory=lambda: types.MappingProxyType({}))
    """Per camera, by INSTRUME (case-insensitive): ``biassec``/``trimsec`` that replace (or stand
    in for) the header's, in the pixels of the frame as stored (binned)."""

    def rules(self) -> OverscanRules:
        """The picklable form ingest carries to the workers."""
        return OverscanRules(use_header=self.use_header, method=self.method, order=self.order,
                             cameras=tuple((name, c.biassec, c.trimsec) for name, c in self.cameras.items()))


@dataclass(frozen=True)
class ProductsConfig:
    compress: Literal["none", "gzip", "rice"] = "none"
    """How masters, calibrated frames and stacks are written: ``none`` (plain FITS), ``gzip``
    (tile-compressed GZIP_2, lossless for every pixel type), or ``rice`` (tile-compressed RICE_1:
    lossless for integer planes; float images quantised to ``quantize_level`` levels per noise
    sigma, with subtractive dithering from a fixed seed, so reprocessing stays byte-identical)."""
    quantize_level: float = 16.0
    """``rice`` only: quantisation step of float images = the tile's noise sigma / this (16: the
    added noise is 1/16/sqrt(12) ~ 1.8 % of sigma, i.e. 0.02 % more variance)."""


def unknown_key(key: str, allowed: Iterable[str]) -> ConfigError:
    """The error for an unknown ``key`` (dotted): what is allowed there, and the closest name."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; allowed here: {', '.join(allowed)}")


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    return value


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def _camera(key: str, value: Any) -> CameraSections:
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key!r} must be a table like {{biassec = \"[2049:2080,1:2048]\", "
                          "trimsec = \"[1:2048,1:2048]\"}")
    out = {}
    for k, text in value.items():
        if k not in ("biassec", "trimsec"):
            raise unknown_key(f"{key}.{k}", ("biassec", "trimsec"))
        if not isinstance(text, str):
            raise ConfigError(f"config key '{key}.{k}' must be a FITS section string such as "
                              f"\"[1:2048,1:2048]\" (or \"\" for none), got {text!r}")
        if text:
            try:
                Section.parse(text)
            except ValueError as exc:
                raise ConfigError(f"config key '{key}.{k}': {exc} (x first, 1-based, inclusive)") from None
        out[k] = text.strip()
    return CameraSections(**out)


def parse_overscan(table: Any) -> OverscanConfig:
    """``[overscan]`` (and ``[overscan.cameras."NAME"]``)."""
    if not isinstance(table, dict):
        raise ConfigError(f"config key 'overscan' must be a table ([overscan]), got {table!r}")
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"overscan.{key}"
        if key == "use_header":
            kwargs[key] = _bool(dotted, value)
        elif key == "method":
            kwargs[key] = _choice(dotted, value, ("median", "fit"))
        elif key == "order":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5:
                raise ConfigError(f"config key {dotted!r} must be a whole number from 0 to 5, got {value!r}")
            kwargs[key] = value
        elif key == "cameras":
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} must be tables like [overscan.cameras.\"QSI 532\"]")
            kwargs[key] = types.MappingProxyType({str(name).strip().lower(): _camera(f"{dotted}.{name}", v)
                                                  for name, v in value.items()})
        else:
            raise unknown_key(dotted, ("cameras", "method", "order", "use_header"))
    return OverscanConfig(**kwargs)


_RULE_KEYS = ("glob", "path", "header", "imagetyp", "filter", "object")
_IMAGE_TYPES = [t.value for t in ImageType if t is not ImageType.UNKNOWN] + ["ignore"]


def parse_rules(value: Any) -> tuple[ClassificationRule, ...]:
    """The ``[[classify]]`` blocks, in order (first match wins)."""
    if not isinstance(value, list):
        raise ConfigError("config key 'classify' must be an array of tables ([[classify]] blocks)")
    rules = []
    for i, table in enumerate(value, start=1):
        key = f"classify[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"config key {key!r} must be a table with keys {', '.join(_RULE_KEYS)}")
        for k in table:
            if k not in _RULE_KEYS:
                raise unknown_key(f"{key}.{k}", _RULE_KEYS)
        header = table.get("header", {})
        if not isinstance(header, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in header.items()
        ):
            raise ConfigError(
                f"config key '{key}.header' must be a table of KEYWORD = \"pattern\" strings, "
                f"e.g. header = {{IMAGETYP = \"*flat*\"}}"
            )
        imagetyp = table.get("imagetyp")
        if imagetyp is not None:
            if not isinstance(imagetyp, str) or imagetyp.lower() not in _IMAGE_TYPES:
                raise ConfigError(
                    f"config key '{key}.imagetyp' must be one of {', '.join(_IMAGE_TYPES)}, got {imagetyp!r}"
                )
            imagetyp = imagetyp.lower()
        for k in ("glob", "path", "filter", "object"):
            if k in table and not isinstance(table[k], str):
                raise ConfigError(f"config key '{key}.{k}' must be a string, got {table[k]!r}")
        try:
            rules.append(
                ClassificationRule(
                    glob=table.get("glob"),
                    path=table.get("path"),
                    header={k.upper(): v for k, v in header.items()},
                    imagetyp=imagetyp,
                    filter=table.get("filter"),
                    object=table.get("object"),
                )
            )
        except ValueError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from None
    return tuple(rules)
