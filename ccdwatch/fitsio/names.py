"""File names: which names are temp files, which are FITS, and safe path components.

:func:`safe_component` and :func:`safe_product_path` turn untrusted header values into path
components that cannot leave the products root.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

__all__ = ["TEMP_PREFIX", "fits_stem", "fits_suffix", "is_temp_name", "safe_component", "safe_product_path"]

#: Prefix of the temp files written by :func:`~ccdwatch.fitsio.write_product` (and removed by
#: :func:`~ccdwatch.fitsio.sweep_temp_files`).
TEMP_PREFIX = ".ccdwatch-tmp-"

_TEMP_SUFFIXES = (".part", ".tmp", "~", ".partial", ".crdownload", ".filepart", ".temp")
_FITS_SUFFIXES = (".fits", ".fit", ".fts")


def is_temp_name(name: str) -> bool:
    """Is ``name`` a temp file (ours, or a camera/copy program's) that must never be ingested?

    True for names written by :func:`write_product` and for hidden names (leading ``.``) or
    names ending in ``.part``, ``.tmp``, ``~``, ``.partial``, ``.crdownload``, ``.filepart`` or
    ``.temp`` (any case). A path is reduced to its last component first.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if not base:
        return False
    return base.startswith(".") or base.lower().endswith(_TEMP_SUFFIXES)


def any_fits_name(directory: str | os.PathLike[str], *, changed_after: float | None = None) -> bool:
    """Does ``directory`` hold, at its top level, an entry with a FITS name that is not a temp
    name (and, with ``changed_after``, whose content or name changed after that time: its mtime
    or ctime, which a copy that keeps the mtime or a move into the folder sets)? False when it
    cannot be listed. A cheap look before a scan (its subfolders are not walked)."""
    try:
        with os.scandir(directory) as entries:
            return any(fits_suffix(e.name) is not None and not is_temp_name(e.name)
                       and (changed_after is None or _changed_after(e, changed_after)) for e in entries)
    except OSError:
        return False


def _changed_after(entry: os.DirEntry[str], when: float) -> bool:
    try:
        st = entry.stat()
    except OSError:  # gone meanwhile, or not to be looked at: the scan says
        return True
    return max(st.st_mtime, st.st_ctime) > when


def fits_suffix(name: str) -> str | None:
    """The FITS kind of a file name.

    Returns ``'.fits'`` for ``.fits``/``.fit``/``.fts`` (any case), ``'.fz'`` for tile-compressed
    ``.fz`` (e.g. ``.fits.fz``), ``'.gz'`` for ``.fits.gz``/``.fit.gz``/``.fts.gz``, else None.
    Temp names are not excluded here: check :func:`is_temp_name` as well.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    lower = base.lower()
    if lower.endswith(".fz") and len(lower) > 3:
        return ".fz"
    if lower.endswith(".gz"):
        inner = lower[:-3]
        return ".gz" if any(inner.endswith(s) and len(inner) > len(s) for s in _FITS_SUFFIXES) else None
    for s in _FITS_SUFFIXES:
        if lower.endswith(s) and len(lower) > len(s):
            return ".fits"
    return None


def fits_stem(name: str) -> str:
    """A raw file's name without its FITS suffixes: ``M51_001`` for ``M51_001.fits``, ``.fits.fz``
    or ``.fit.gz`` (a name that is not a FITS name loses its last suffix only)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    kind = fits_suffix(base)
    if kind in (".fz", ".gz"):
        base = base[:-3]
    for s in _FITS_SUFFIXES:
        if base.lower().endswith(s) and len(base) > len(s):
            return base[:-len(s)]
    return base if kind else base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base


_SAFE_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]*")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._+-]+")
_KEEP_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)),
                     *(f"LPT{i}" for i in range(10))}


def _ascii_char(ch: str) -> str:
    if ch.isascii():
        return ch
    folded = "".join(c for c in unicodedata.normalize("NFKD", ch) if c.isascii())
    return folded or "_"


def _short_digest(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def safe_component(value: str | None, *, max_len: int = 64, default: str = "unnamed") -> str:
    """Turn an untrusted value (OBJECT, FILTER, a file name ...) into one safe path component.

    Characters outside ``[A-Za-z0-9._+-]`` become ``_`` (accented letters lose their accent),
    runs of ``_`` and of ``.`` collapse, leading ``.``/``-``/``_`` and trailing ``.``/``_`` are
    stripped, so the result is never hidden, option-like, ``.`` or ``..``. Deterministic.

    Parameters
    ----------
    value : str or None
        The untrusted text.
    max_len : int, optional
        Longest result (characters). A longer name is cut and gets ``-`` plus 8 hex digits of the
        SHA-256 of the original, keeping a short extension such as ``.fits``, so that distinct
        long values stay distinct.
    default : str, optional
        Returned for None or blank values. A value that is not blank but has nothing usable
        (``'..'``, ``'日本'``) gives ``default-<hash>``.

    Returns
    -------
    str
        Matches ``^[A-Za-z0-9_+][A-Za-z0-9._+-]*$`` and is at most ``max_len`` long.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if not _SAFE_RE.fullmatch(default) or len(default) > max_len:
        raise ValueError(f"default {default!r} is not itself a safe component of <= {max_len} chars")
    if value is None:
        return default
    text = str(value)
    stripped = text.strip()
    if not stripped:
        return default
    s = "".join(_ascii_char(ch) for ch in stripped)
    s = _UNSAFE_RUN.sub("_", s)
    s = re.sub(r"_{2,}", "_", s)
    s = re.sub(r"\.{2,}", ".", s)
    s = s.lstrip("._-").rstrip("._")
    digest = _short_digest(text)
    if not s:
        s = f"{default}-{digest}"
    if s.split(".", 1)[0].upper() in _WINDOWS_RESERVED:
        s = "_" + s
    if len(s) > max_len:
        m = _KEEP_SUFFIX.search(s)
        suffix = m.group(0) if m and len(m.group(0)) + 10 <= max_len else ""
        room = max_len - len(suffix) - 9
        if room >= 1:
            head = s[:room].rstrip("._-")
            s = (f"{head}-" if head else "") + digest + suffix
        else:
            s = s[:max_len].rstrip("._-") or digest[:max_len]
    return s


def safe_product_path(root: str | os.PathLike, *parts: str) -> Path:
    """A path under ``root`` built from untrusted ``parts``, each made safe by :func:`safe_component`.

    Raises
    ------
    ValueError
        If no part is given, or if the resolved result (following any symlink that already
        exists under ``root``) is not strictly inside the resolved ``root``.
    """
    if not parts:
        raise ValueError("safe_product_path needs at least one part below the root")
    root_path = Path(root)
    comps = [safe_component(None if p is None else str(p)) for p in parts]
    candidate = root_path.joinpath(*comps)
    root_res = root_path.resolve()
    res = candidate.resolve()
    if res == root_res or not res.is_relative_to(root_res):
        raise ValueError(f"product path {candidate} resolves to {res}, outside the products root {root_res}")
    return candidate

