"""Where products live under the products root, and the provenance cards they carry.

Every name is built from content (sha256), calibration keys, versions and sanitised header
values only (:func:`ccdwatch.fitsio.safe_product_path`), so a hostile OBJECT or FILTER can never
place a file outside the products root. No catalogue id goes into a name, a header card or a
table: ids depend on the order in which files were processed, content does not. Reprocessing a
night, in any order, gives the same paths and, since no wall-clock time goes into a header
either, the same bytes.
"""

from __future__ import annotations

import cmath
import hashlib
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ccdwatch import __version__
from ccdwatch.fitsio import safe_component, safe_product_path

if TYPE_CHECKING:  # astropy loads with the jobs that write products, not with the planner
    from astropy.io import fits

#: Raw header keywords that describe the raw file's layout and must not be copied to products.
STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "BZERO",
    "BSCALE", "PCOUNT", "GCOUNT", "CHECKSUM", "DATASUM", "BLANK", "END", "DATAMIN", "DATAMAX",
    "CBLACK", "CWHITE", "CSTRETCH", "PEDESTAL",
}


#: Longest frame stem kept in a calibrated product's name (characters); longer ones are cut in
#: the middle, so that both the start (target, filter) and the end (the frame number) remain.
STEM_MAX = 40
#: What replaces the middle of a stem that was cut.
CUT_MARK = "--"


def short_hash(text: str, n: int = 8) -> str:
    """The first ``n`` hex digits of the sha256 of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def short_sha(sha256: str, n: int = 8) -> str:
    """The short form of a content hash (its first ``n`` hex digits), as names and cards show it."""
    return sha256[:n]


def cut_middle(stem: str, max_len: int = STEM_MAX) -> str:
    """A file stem made safe (:func:`~ccdwatch.fitsio.safe_component`) and at most ``max_len``
    characters, cut in the middle (``M51_long_session_name--_V_0042``): the frame number at the
    end of a camera program's name survives."""
    safe = safe_component(stem, max_len=10_000, default="frame")
    if len(safe) <= max_len:
        return safe
    room = max_len - len(CUT_MARK)
    head, tail = safe[: (room + 1) // 2], safe[len(safe) - room // 2:]
    return f"{head}{CUT_MARK}{tail}"


def master_ref(night: str, calib_key: str, version: int) -> str:
    """A master's identity in other products' headers: night, calibration key (short hash, as in
    the master's file name) and version, e.g. ``2024-01-01/3f2a1b9c/v2`` (its sha256 goes
    beside it)."""
    return f"{night}/{short_hash(calib_key)}/v{version}"


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


class MasterLike(Protocol):
    """What a product's header says of a master it was made with (a catalogue ``Master``)."""

    night: str
    calib_key: str
    version: int
    sha256: str


def master_cards(prefix: str, master: MasterLike | None) -> dict[str, str | None]:
    """``<prefix>REF`` (:func:`master_ref`) and ``<prefix>SHA`` of the master used, or None
    values (left out of the header) when none was."""
    if master is None:
        return {f"{prefix}REF": None, f"{prefix}SHA": None}
    return {f"{prefix}REF": master_ref(master.night, master.calib_key, master.version),
            f"{prefix}SHA": master.sha256}


def calibrated_path(root: Path, *, night: str | None, target: str | None, filter: str | None,
                    stem: str, raw_sha256: str, version: int) -> Path:
    """``calibrated/<night>/<target>/<filter>/<stem>_<raw sha256, 8 hex>_v<version>.fits``: the
    raw file's stem (cut in the middle when long) for people, its content hash for uniqueness."""
    name = f"{cut_middle(stem)}_{short_sha(raw_sha256)}_v{version}.fits"
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
    from astropy.io import fits

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
    """False for a NaN or infinite real or complex number, True for anything else (numpy's bool
    is not a `numbers.Real`)."""
    if isinstance(value, (bool, str, bytes)):
        return True
    if isinstance(value, (numbers.Real, numbers.Complex)):
        return cmath.isfinite(complex(value))
    return True


#: The end of every product's name (`master_path`, `calibrated_path`, `stack_path`): a hash and a version.
_PRODUCT_NAME = re.compile(r"_[0-9a-f]{8}_v[0-9]+(?:_[a-z]+)?\.fits$")


def unreferenced_products(root: Path, known: set[str]) -> list[Path]:
    """The products under ``root`` (masters, calibrated lights, stacks) that no catalogue row
    names, as crash recovery finds them (written, not committed). Only files named as ccdwatch
    names products (a user's own file in the tree is not one), and none that is a row's file
    under another spelling: rows record the products root as it was written when they were made
    (a symlink, a path given on the command line, a tree moved and the config pointed at it), and
    a file is compared with them by identity, not by its path's text."""
    found = [path for sub in ("masters", "calibrated", "stacks") if (root / sub).is_dir()
             for path in (root / sub).rglob("*.fits") if _PRODUCT_NAME.search(path.name)]
    unnamed = [path for path in found if str(path) not in known]
    if not unnamed:
        return []
    here = str(root) + os.sep
    names = {path.name for path in unnamed}  # a name holds a content hash: only the same product's rows
    elsewhere = [k for k in known if not k.startswith(here) and Path(k).name in names]  # another spelling
    identities = {_identity(k) for k in elsewhere} - {None}
    return [path for path in unnamed if _identity(str(path)) not in identities]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
