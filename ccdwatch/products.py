"""Where products live under the products root, and the provenance cards they carry.

Every name is built from catalogue ids and sanitised header values only
(:func:`ccdwatch.fitsio.safe_product_path`), so a hostile OBJECT or FILTER can never place a
file outside the products root. Names are deterministic: reprocessing a night gives the same
paths and, since no wall-clock time goes into a header, the same bytes.
"""

from __future__ import annotations

import cmath
import hashlib
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ccdwatch import __version__
from ccdwatch.fitsio import safe_product_path

#: Raw header keywords that describe the raw file's layout and must not be copied to products.
STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "BZERO",
    "BSCALE", "PCOUNT", "GCOUNT", "CHECKSUM", "DATASUM", "BLANK", "END", "DATAMIN", "DATAMAX",
    "CBLACK", "CWHITE", "CSTRETCH", "PEDESTAL",
}


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def exposure_label(exptime: float | None) -> str:
    if exptime is None:
        return "nexp"
    return f"{exptime:g}s"


def master_path(root: Path, *, kind: str, night: str, calib_key: str, instrument: str | None,
                exptime: float | None, filter: str | None, version: int) -> Path:
    parts = [kind, instrument or "camera"]
    if kind == "dark":
        parts.append(exposure_label(exptime))
    if kind == "flat":
        parts.append(filter or "nofilter")
    name = "_".join(parts) + f"_{short_hash(calib_key)}_v{version}.fits"
    return safe_product_path(root, "masters", night, kind, name)


def calibrated_path(root: Path, *, night: str | None, target: str | None, filter: str | None,
                    frame_id: int, stem: str, version: int) -> Path:
    name = f"{frame_id:06d}_{stem[:40]}_v{version}.fits"
    return safe_product_path(root, "calibrated", night or "nonight", target or "notarget",
                             filter or "nofilter", name)


def stack_path(root: Path, *, night: str, target: str, filter: str | None, exptime: float | None,
               group_key: str, version: int, suffix: str = ".fits") -> Path:
    name = (f"stack_{target}_{filter or 'nofilter'}_{exposure_label(exptime)}"
            f"_{short_hash(group_key)}_v{version}{suffix}")
    return safe_product_path(root, "stacks", night, name)


def preview_path(fits_path: Path) -> Path:
    return fits_path.with_suffix(".png")


def product_header(raw_header: Mapping[str, Any] | None = None, **cards: Any) -> dict[str, Any]:
    """The cards of a product's header, as a plain (picklable) mapping for a worker job: the raw
    frame's descriptive cards (structural ones, COMMENT and HISTORY left out) plus ccdwatch
    provenance. ``cards`` are keyword -> value; None values are left out.
    """
    header: dict[str, Any] = {}
    for key, value in (raw_header or {}).items():
        if key and key not in STRUCTURAL and key not in ("COMMENT", "HISTORY") and value is not None:
            header[key] = value
    header["CCDWVER"] = __version__
    for key, value in cards.items():
        if value is not None:
            header[key.upper()] = value
    return header


def to_fits_header(cards: Mapping[str, Any]) -> fits.Header:
    """A FITS header from :func:`product_header`'s cards (a value, or a ``(value, comment)`` pair).

    The one place where cards become a FITS header: values astropy cannot write as a card
    (lists, dicts, over-long strings from a foreign header) are left out rather than failing,
    and so are NaN and infinite numbers (FITS has no such values), each with a COMMENT saying so.
    """
    header = fits.Header()
    for key, card in cards.items():
        value = card[0] if isinstance(card, tuple) and len(card) == 2 else card
        if value is None or isinstance(value, (list, dict)):
            continue
        if not _finite(value):
            header.add_comment(f"{key} left out: not a finite number ({value})"[:72])
            continue
        try:
            header[key] = card
        except (ValueError, KeyError, fits.VerifyError):
            continue
    return header


def _finite(value: Any) -> bool:
    """False for a NaN or infinite real or complex number, True for anything else."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return True
    if isinstance(value, (numbers.Real, numbers.Complex)):
        return cmath.isfinite(complex(value))
    return True
