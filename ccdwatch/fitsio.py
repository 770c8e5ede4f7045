"""The only code in ccdwatch that opens FITS files.

Raw frames come from a camera program we do not control, so :func:`read_raw` treats every file as
hostile until proven otherwise:

* it is opened once, read-only, with ``O_NOFOLLOW | O_NONBLOCK`` (no symlink is followed, a FIFO
  cannot hang us) and only regular files are accepted; everything afterwards goes through that one
  file descriptor, so the file cannot be swapped between check and use;
* the headers are walked block by block (2880 bytes) *before* any data is read: the declared size
  of every HDU (BITPIX, NAXISn, PCOUNT, GCOUNT) is checked against the file size and against a
  memory budget, so a 5 kB file that declares a 10^6 x 10^6 image is refused without allocating;
* the file is never memory-mapped (a camera truncating a mapped file kills the process with
  SIGBUS): it is read into memory, hashed, and handed to astropy as ``io.BytesIO``;
* astropy warnings (truncation, invalid headers) become :class:`RejectedFile`, and no astropy
  exception type escapes;
* compressed files (tile-compressed ``.fz``, gzipped ``.gz``) are refused unless allowed, and are
  decompressed only within the same memory budget (a gzip bomb stops at the budget).

Raw files are never modified, moved, or written next to. Products (our own files) are written
atomically with :func:`write_product`: temp file in the same directory, fsync, ``os.replace``,
fsync of the directory. :func:`safe_component` and :func:`safe_product_path` turn untrusted header
values into path components that cannot leave the products root.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import stat
import time
import unicodedata
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from ccdwatch import faults

__all__ = [
    "BLOCK_SIZE",
    "TEMP_PREFIX",
    "DiskFull",
    "RawFrame",
    "RejectedFile",
    "fits_suffix",
    "is_temp_name",
    "read_product",
    "read_product_hdus",
    "read_raw",
    "safe_component",
    "safe_product_path",
    "sha256_file",
    "sweep_temp_files",
    "write_bytes_atomic",
    "write_product",
]

logger = logging.getLogger(__name__)

#: Size of a FITS logical record (bytes); headers and data are padded to a multiple of it.
BLOCK_SIZE = 2880
_CARD = 80
#: Most header blocks a raw file may hold in total (all HDUs), 1000 blocks = 2.9 MB.
MAX_HEADER_BLOCKS = 1000
MAX_HEADER_BYTES = MAX_HEADER_BLOCKS * BLOCK_SIZE
#: Most HDUs a raw file may hold.
MAX_HDUS = 1000
#: Prefix of the temp files written by :func:`write_product` (and removed by :func:`sweep_temp_files`).
TEMP_PREFIX = ".ccdwatch-tmp-"
_CHUNK = 1 << 20

_TEMP_SUFFIXES = (".part", ".tmp", "~", ".partial", ".crdownload", ".filepart", ".temp")
_FITS_SUFFIXES = (".fits", ".fit", ".fts")
_VALID_BITPIX = {8, 16, 32, 64, -32, -64}
_GZIP_MAGIC = b"\x1f\x8b"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_INHERIT_SKIP = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS", "BZERO",
    "BSCALE", "BLANK", "CHECKSUM", "DATASUM", "EXTNAME", "EXTVER", "INHERIT", "COMMENT",
    "HISTORY", "", "END",
}


# --------------------------------------------------------------------------------------------
# public types
# --------------------------------------------------------------------------------------------
class RejectedFile(Exception):
    """A raw file that must be quarantined (or, for the transient reasons, looked at again later).

    Parameters
    ----------
    reason : str
        Short stable code: ``not-regular-file``, ``symlink``, ``empty``, ``not-fits``,
        ``truncated-header``, ``truncated-data``, ``too-large``, ``no-image``, ``bad-header``,
        ``compressed-disabled`` or ``unreadable``.
    message : str
        A readable sentence; ``str(exc)`` returns it.
    """

    #: Reasons that a file still being written (or rewritten) also gives.
    TRANSIENT_REASONS = frozenset({"empty", "truncated-header", "truncated-data"})

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """True when a camera that is still writing the file would give the same verdict."""
        return self.reason in self.TRANSIENT_REASONS

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"RejectedFile({self.reason!r}, {self.message!r})"


class DiskFull(OSError):
    """Not enough free space to write a product; no partial file is left behind."""


@dataclass(frozen=True, eq=False)
class RawFrame:
    """A raw frame read by :func:`read_raw`.

    Attributes
    ----------
    header : astropy.io.fits.Header
        Header of the image HDU used (primary, or the first image extension if the primary has
        no data); with ``INHERIT = T`` the primary's descriptive cards are merged in.
    data : numpy.ndarray or None
        2-D physical values (BZERO/BSCALE applied; uint16 stays uint16), native byte order, a
        private copy. None with ``header_only``.
    sha256 : str
        Hex digest of the exact bytes of the file as read.
    size : int
        File size (bytes).
    mtime_ns : int
        Modification time (ns since the epoch) from ``fstat`` of the descriptor read.
    inode : int
        Inode number from the same ``fstat``.
    hdu_index : int
        Index of the HDU the image came from.
    tail_bytes : int
        Bytes after the last complete HDU (zero padding or garbage, tolerated and logged).
    """

    header: fits.Header
    data: np.ndarray | None
    sha256: str
    size: int
    mtime_ns: int
    inode: int
    hdu_index: int
    tail_bytes: int = field(default=0)


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# header walk
# --------------------------------------------------------------------------------------------
@dataclass
class _HDU:
    index: int
    header_offset: int
    header_bytes: int
    data_offset: int
    data_bytes: int  # declared, unpadded
    header: fits.Header
    xtension: str | None
    axes: tuple[int, ...]  # FITS order (NAXIS1 first)
    groups: bool = False
    compressed: bool = False
    zaxes: tuple[int, ...] = ()
    decompressed_bytes: int = 0

    @property
    def padded_bytes(self) -> int:
        return -(-self.data_bytes // BLOCK_SIZE) * BLOCK_SIZE

    @property
    def end(self) -> int:
        return self.data_offset + self.padded_bytes


@dataclass
class _Layout:
    hdus: list[_HDU]
    end: int  # end of the last HDU, padding included
    tail_bytes: int
    missing_padding: int  # bytes of final padding absent from the file
    non_ascii: bool


def _int_card(h: fits.Header, key: str, where: str, *, default: int | None = None, lo: int = 0,
              hi: int | None = None) -> int:
    if key not in h:
        if default is None:
            raise RejectedFile("bad-header", f"{where}: required keyword {key} is missing")
        return default
    v = h[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise RejectedFile("bad-header", f"{where}: {key} = {v!r} is not an integer")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise RejectedFile("bad-header", f"{where}: {key} = {v} is out of range")
    return v


def _axes(h: fits.Header, prefix: str, where: str) -> tuple[int, ...]:
    naxis = _int_card(h, prefix, where, hi=999)
    return tuple(_int_card(h, f"{prefix}{i}", where) for i in range(1, naxis + 1))


def _bitpix(h: fits.Header, key: str, where: str) -> int:
    v = _int_card(h, key, where, lo=-64, hi=64)
    if v not in _VALID_BITPIX:
        raise RejectedFile("bad-header", f"{where}: {key} = {v} is not a valid FITS BITPIX")
    return v


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _has_data(axes: tuple[int, ...]) -> bool:
    return len(axes) > 0 and all(a > 0 for a in axes)


def _is_2d(axes: tuple[int, ...]) -> bool:
    return len(axes) >= 2 and axes[0] > 0 and axes[1] > 0 and all(a == 1 for a in axes[2:])


def _read_header(pread: Callable[[int, int], bytes], size: int, offset: int, blocks_left: int,
                 where: str) -> tuple[bytes, int]:
    """Header bytes starting at ``offset`` up to and including the block with the END card."""
    chunks: list[bytes] = []
    pos = offset
    while True:
        if len(chunks) >= blocks_left:
            raise RejectedFile("bad-header", f"{where}: no END card within the first "
                               f"{MAX_HEADER_BLOCKS} header blocks of the file")
        if pos + BLOCK_SIZE > size:
            raise RejectedFile("truncated-header", f"{where}: the file ends ({size} bytes) inside "
                               "the header, before its END card")
        block = pread(pos, BLOCK_SIZE)
        if len(block) < BLOCK_SIZE:
            raise RejectedFile("truncated-header", f"{where}: short read inside the header")
        chunks.append(block)
        pos += BLOCK_SIZE
        if any(block[i:i + 8] == b"END     " for i in range(0, BLOCK_SIZE, _CARD)):
            return b"".join(chunks), pos


def _parse_header(raw: bytes, where: str) -> tuple[fits.Header, bool]:
    try:
        text = raw.decode("ascii")
        non_ascii = False
    except UnicodeDecodeError:
        # what astropy itself does with such headers (decode_ascii): replace by '?'
        text = raw.decode("ascii", errors="replace").replace("\ufffd", "?")
        non_ascii = True
    try:
        return fits.Header.fromstring(text), non_ascii
    except RejectedFile:
        raise
    except (Exception, Warning) as exc:  # noqa: BLE001 - astropy raises many types
        raise RejectedFile("bad-header", f"{where}: header cannot be parsed ({exc})") from None


def _walk(pread: Callable[[int, int], bytes], size: int, *, max_data_bytes: int,
          allow_compressed: bool) -> _Layout:
    """Walk the HDUs, validating declared sizes before any data is read."""
    first = pread(0, min(size, BLOCK_SIZE))
    if not first.startswith(b"SIMPLE  ="):
        raise RejectedFile("not-fits", "the file does not start with 'SIMPLE  =' (not a FITS file)")
    hdus: list[_HDU] = []
    offset = 0
    blocks_used = 0
    total_data = 0
    non_ascii = False
    tail = 0
    while offset < size:
        index = len(hdus)
        where = f"HDU {index}"
        if index > 0:
            head = pread(offset, min(8, size - offset))
            if head != b"XTENSION":
                tail = size - offset
                break
            if index >= MAX_HDUS:
                raise RejectedFile("bad-header", f"more than {MAX_HDUS} HDUs")
        raw, data_offset = _read_header(pread, size, offset, MAX_HEADER_BLOCKS - blocks_used, where)
        blocks_used += len(raw) // BLOCK_SIZE
        h, odd = _parse_header(raw, where)
        non_ascii |= odd
        keys = list(h.keys())
        if index == 0:
            if not keys or keys[0] != "SIMPLE" or h["SIMPLE"] is not True:
                raise RejectedFile("not-fits", "SIMPLE is not T: not a standard FITS file")
            xtension = None
        else:
            xtension = h.get("XTENSION")
            if not keys or keys[0] != "XTENSION" or not isinstance(xtension, str):
                raise RejectedFile("bad-header", f"{where}: first keyword is not XTENSION")
            xtension = xtension.strip().upper()
        bitpix = _bitpix(h, "BITPIX", where)
        axes = _axes(h, "NAXIS", where)
        groups = index == 0 and h.get("GROUPS") is True and len(axes) > 0 and axes[0] == 0
        if index > 0 or groups:
            pcount = _int_card(h, "PCOUNT", where, default=0)
            gcount = _int_card(h, "GCOUNT", where, default=1)
        else:
            pcount, gcount = 0, 1
        if not axes:
            nbits = 0
        else:
            n = _prod(axes[1:]) if groups else _prod(axes)
            nbits = abs(bitpix) * gcount * (pcount + n)
        hdu = _HDU(index=index, header_offset=offset, header_bytes=len(raw),
                   data_offset=data_offset, data_bytes=nbits // 8, header=h, xtension=xtension,
                   axes=axes, groups=groups)
        if xtension == "BINTABLE" and h.get("ZIMAGE") is True:
            hdu.compressed = True
            zbitpix = _bitpix(h, "ZBITPIX", where)
            hdu.zaxes = _axes(h, "ZNAXIS", where)
            hdu.decompressed_bytes = abs(zbitpix) // 8 * _prod(hdu.zaxes) if hdu.zaxes else 0
            if allow_compressed and hdu.decompressed_bytes > max_data_bytes:
                raise RejectedFile("too-large", f"{where}: the tile-compressed image declares "
                                   f"{hdu.decompressed_bytes} bytes once decompressed "
                                   f"(ZNAXISn = {hdu.zaxes}), more than the limit of "
                                   f"{max_data_bytes} bytes")
        total_data += hdu.data_bytes
        if total_data > max_data_bytes:
            raise RejectedFile("too-large", f"{where} declares {hdu.data_bytes} bytes of data "
                               f"(BITPIX = {bitpix}, NAXISn = {axes}); the file's declared data "
                               f"({total_data} bytes) exceeds the limit of {max_data_bytes} bytes")
        hdus.append(hdu)
        if data_offset + hdu.data_bytes > size:
            raise RejectedFile("truncated-data", f"{where} declares {hdu.data_bytes} bytes of data "
                               f"but the file ends after {size - data_offset} of them "
                               "(still being written, or truncated)")
        offset = hdu.end
    last = hdus[-1]
    missing = max(0, last.end - size)
    if missing:
        logger.info("%d bytes of final FITS padding are missing; tolerated", missing)
    if tail:
        zero = not pread(size - tail, min(tail, BLOCK_SIZE)).strip(b"\0")
        logger.info("%d bytes of %s after the last HDU; ignored", tail,
                    "zero padding" if zero else "non-FITS data")
    return _Layout(hdus=hdus, end=min(last.end, size), tail_bytes=tail, missing_padding=missing,
                   non_ascii=non_ascii)


def _choose(layout: _Layout) -> _HDU:
    """Pick the image HDU: the primary if it has data, else the first 2-D image extension."""
    primary = layout.hdus[0]
    if _has_data(primary.axes):
        if primary.groups or not _is_2d(primary.axes):
            raise RejectedFile("no-image", f"the primary HDU holds data of shape NAXISn = "
                               f"{primary.axes}{' (random groups)' if primary.groups else ''}, "
                               "not a 2-D image")
        return primary
    for hdu in layout.hdus[1:]:
        if hdu.xtension == "IMAGE" and _is_2d(hdu.axes):
            return hdu
        if hdu.compressed and _is_2d(hdu.zaxes):
            return hdu
    kinds = ", ".join(f"{h.index}:{h.xtension or 'PRIMARY'}{list(h.zaxes or h.axes)}" for h in layout.hdus)
    raise RejectedFile("no-image", f"no HDU holds a 2-D image (HDUs: {kinds})")


def _merge_inherit(header: fits.Header, primary: fits.Header) -> fits.Header:
    out = header.copy()
    if header.get("INHERIT") is True:
        for card in primary.cards:
            if card.keyword not in _INHERIT_SKIP and not card.keyword.startswith("NAXIS") \
                    and card.keyword not in out:
                out.append(fits.Card.fromstring(card.image))
    return out


# --------------------------------------------------------------------------------------------
# raw reading
# --------------------------------------------------------------------------------------------
def _pread_fd(fd: int) -> Callable[[int, int], bytes]:
    def pread(offset: int, n: int) -> bytes:
        parts: list[bytes] = []
        while n > 0:
            b = os.pread(fd, n, offset)
            if not b:
                break
            parts.append(b)
            n -= len(b)
            offset += len(b)
        return b"".join(parts) if len(parts) != 1 else parts[0]
    return pread


def _pread_bytes(buf: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, n: buf[offset:offset + n]


def _open_raw(path: str | os.PathLike) -> tuple[int, os.stat_result]:
    """Open a raw file safely; return the descriptor and its fstat."""
    name = os.fspath(path)
    try:
        lst = os.lstat(name)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RejectedFile("unreadable", f"cannot stat {name}: {exc.strerror}") from None
    if stat.S_ISLNK(lst.st_mode):
        raise RejectedFile("symlink", f"{name} is a symbolic link; raw files are never followed through links")
    if not stat.S_ISREG(lst.st_mode):
        raise RejectedFile("not-regular-file", f"{name} is not a regular file ({_kind(lst.st_mode)})")
    try:
        fd = os.open(name, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RejectedFile("symlink", f"{name} is a symbolic link; raw files are never followed through links") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV):
            raise RejectedFile("not-regular-file", f"{name} is not a regular file ({exc.strerror})") from None
        raise RejectedFile("unreadable", f"cannot open {name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectedFile("not-regular-file", f"{name} is not a regular file ({_kind(st.st_mode)})")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _kind(mode: int) -> str:
    for test, label in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return label
    return "not a regular file"


def _check_unchanged(fd: int, before: os.stat_result, name: str) -> None:
    after = os.fstat(fd)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise RejectedFile("truncated-data", f"{name} changed while being read (size "
                           f"{before.st_size} -> {after.st_size}); still being written?")


def _read_all(fd: int, size: int, name: str) -> bytes:
    buf = _pread_fd(fd)(0, size)
    if len(buf) != size:
        raise RejectedFile("truncated-data", f"{name} shrank while being read ({len(buf)} of {size} bytes)")
    return buf


def _gunzip_bounded(blob: bytes, limit: int, name: str) -> bytes:
    """Decompress a gzip stream, refusing to produce more than ``limit`` bytes."""
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob), mode="rb") as gz:
            while True:
                chunk = gz.read(min(_CHUNK, limit + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    raise RejectedFile("too-large", f"{name} decompresses to more than {limit} bytes "
                                       "(headers + the data limit); refused")
    except RejectedFile:
        raise
    except EOFError:
        raise RejectedFile("truncated-data", f"{name}: the gzip stream ends early (still being "
                           "written, or truncated)") from None
    except (OSError, zlib.error) as exc:
        raise RejectedFile("unreadable", f"{name}: corrupt gzip stream ({exc})") from None
    return bytes(out)


def _as_warning_reason(exc: BaseException, default: str) -> str:
    text = str(exc).lower()
    return "truncated-data" if ("truncat" in text or "smaller than the expected" in text) else default


def _astropy_image(payload: bytes, layout: _Layout, chosen: _HDU, name: str, *,
                   want_data: bool) -> tuple[fits.Header, np.ndarray | None]:
    """Open in-memory bytes with astropy, warnings as errors; return header and 2-D data copy."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstropyUserWarning)
        warnings.simplefilter("error", VerifyWarning)
        # the walk already replaced non-ASCII header bytes by '?' and logged it, as astropy does
        warnings.filterwarnings("ignore", message="non-ASCII characters", category=AstropyUserWarning)
        try:
            hdul = fits.open(io.BytesIO(payload), mode="readonly", memmap=False,
                             lazy_load_hdus=False, uint=True)
        except (Exception, Warning) as exc:  # noqa: BLE001 - never let an astropy type escape
            raise RejectedFile(_as_warning_reason(exc, "bad-header"),
                               f"{name}: astropy refused the file ({type(exc).__name__}: {exc})") from None
        try:
            if len(hdul) != len(layout.hdus):
                raise RejectedFile("bad-header", f"{name}: astropy sees {len(hdul)} HDUs, the "
                                   f"header walk {len(layout.hdus)}")
            hdu = hdul[chosen.index]
            if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                raise RejectedFile("no-image", f"{name}: HDU {chosen.index} is a {type(hdu).__name__}, not an image")
            header = hdu.header.copy()
            data = None
            if want_data:
                try:
                    raw = hdu.data
                except RejectedFile:
                    raise
                except (Exception, Warning) as exc:  # noqa: BLE001
                    raise RejectedFile(_as_warning_reason(exc, "unreadable"),
                                       f"{name}: the image data cannot be read ({type(exc).__name__}: {exc})") from None
                if raw is None or raw.ndim < 2:
                    raise RejectedFile("no-image", f"{name}: HDU {chosen.index} has no 2-D data")
                axes = chosen.zaxes if chosen.compressed else chosen.axes
                shape2d = (axes[1], axes[0])
                if raw.size != shape2d[0] * shape2d[1]:
                    raise RejectedFile("bad-header", f"{name}: data shape {raw.shape} does not match "
                                       f"the header's {axes}")
                data = np.array(raw.reshape(shape2d), dtype=raw.dtype.newbyteorder("="), copy=True)
        except RejectedFile:
            raise
        except (Exception, Warning) as exc:  # noqa: BLE001
            raise RejectedFile(_as_warning_reason(exc, "bad-header"),
                               f"{name}: astropy could not read the file ({type(exc).__name__}: {exc})") from None
        finally:
            hdul.close()
    return header, data


def read_raw(path: str | os.PathLike, *, max_data_bytes: int = 2 << 30, allow_compressed: bool = False,
             header_only: bool = False) -> RawFrame:
    """Read a raw camera frame without trusting it.

    Parameters
    ----------
    path : str or os.PathLike
        The raw file. Never followed through a symlink (in its last component), never modified.
    max_data_bytes : int, optional
        Largest total data (bytes) the file may declare, or decompress to; default 2 GiB.
    allow_compressed : bool, optional
        Accept tile-compressed (``.fz``, ``ZIMAGE = T``) and gzipped files.
    header_only : bool, optional
        Validate the layout and hash the file (streamed) but do not load the pixels.

    Returns
    -------
    RawFrame

    Raises
    ------
    RejectedFile
        For any file that is not a complete, plain 2-D FITS image within the limits; ``.reason``
        says why. No astropy exception type escapes.
    FileNotFoundError
        If the path does not exist (a vanished file is not a quarantine case).
    """
    name = os.fspath(path)
    fd, st = _open_raw(name)
    try:
        return _read_raw_fd(fd, st, name, max_data_bytes=max_data_bytes,
                            allow_compressed=allow_compressed, header_only=header_only)
    except OSError as exc:
        raise RejectedFile("unreadable", f"{name}: read error ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def _read_raw_fd(fd: int, st: os.stat_result, name: str, *, max_data_bytes: int,
                 allow_compressed: bool, header_only: bool) -> RawFrame:
    size = st.st_size
    if size == 0:
        raise RejectedFile("empty", f"{name} is empty (0 bytes)")
    pread = _pread_fd(fd)
    magic = pread(0, 2)
    stamp = {"size": size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}

    if magic == _GZIP_MAGIC:
        if not allow_compressed:
            raise RejectedFile("compressed-disabled", f"{name} is gzip-compressed; set "
                               "ingest.allow_compressed = true to accept compressed FITS")
        limit = max_data_bytes + MAX_HEADER_BYTES
        if size > limit + limit // 100 + _CHUNK:
            raise RejectedFile("too-large", f"{name} is {size} bytes compressed, more than the "
                               f"limit of {max_data_bytes} bytes of data")
        blob = _read_all(fd, size, name)
        _check_unchanged(fd, st, name)
        sha = hashlib.sha256(blob).hexdigest()
        plain = _gunzip_bounded(blob, limit, name)
        del blob
        if not plain:
            raise RejectedFile("empty", f"{name} decompresses to 0 bytes")
        return _finish(plain, sha, name, stamp, max_data_bytes=max_data_bytes,
                       allow_compressed=allow_compressed, header_only=header_only)

    # 1. cheap validation through the descriptor, before any data is read
    layout = _guarded_walk(pread, size, name, max_data_bytes=max_data_bytes,
                           allow_compressed=allow_compressed)
    chosen = _choose(layout)
    if chosen.compressed and not allow_compressed:
        raise RejectedFile("compressed-disabled", f"{name} holds a tile-compressed (fpack) image; "
                           "set ingest.allow_compressed = true to accept compressed FITS")
    header_total = sum(h.header_bytes for h in layout.hdus)
    if size - header_total > max_data_bytes:
        raise RejectedFile("too-large", f"{name} is {size} bytes, more than its headers plus the "
                           f"limit of {max_data_bytes} bytes of data")

    if header_only and not chosen.compressed:
        digest = hashlib.sha256()
        offset = 0
        while offset < size:
            chunk = pread(offset, min(_CHUNK, size - offset))
            if not chunk:
                raise RejectedFile("truncated-data", f"{name} shrank while being read")
            digest.update(chunk)
            offset += len(chunk)
        _check_unchanged(fd, st, name)
        header = _merge_inherit(chosen.header, layout.hdus[0].header)
        return RawFrame(header=header, data=None, sha256=digest.hexdigest(), hdu_index=chosen.index,
                        tail_bytes=layout.tail_bytes, **stamp)

    # 2. read the bounded file through the same descriptor, hash exactly those bytes
    buf = _read_all(fd, size, name)
    _check_unchanged(fd, st, name)
    sha = hashlib.sha256(buf).hexdigest()
    return _finish(buf, sha, name, stamp, max_data_bytes=max_data_bytes,
                   allow_compressed=allow_compressed, header_only=header_only)


def _guarded_walk(pread: Callable[[int, int], bytes], size: int, name: str, *, max_data_bytes: int,
                  allow_compressed: bool) -> _Layout:
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstropyUserWarning)
        warnings.simplefilter("error", VerifyWarning)
        try:
            return _walk(pread, size, max_data_bytes=max_data_bytes, allow_compressed=allow_compressed)
        except RejectedFile as exc:
            raise RejectedFile(exc.reason, f"{name}: {exc.message}") from None
        except (Exception, Warning) as exc:  # noqa: BLE001 - header access may raise astropy types
            raise RejectedFile("bad-header", f"{name}: invalid header ({type(exc).__name__}: {exc})") from None


def _finish(buf: bytes, sha: str, name: str, stamp: dict[str, int], *, max_data_bytes: int,
            allow_compressed: bool, header_only: bool) -> RawFrame:
    """Validate the bytes actually read (authoritative), then let astropy decode them."""
    layout = _guarded_walk(_pread_bytes(buf), len(buf), name, max_data_bytes=max_data_bytes,
                           allow_compressed=allow_compressed)
    chosen = _choose(layout)
    if chosen.compressed and not allow_compressed:
        raise RejectedFile("compressed-disabled", f"{name} holds a tile-compressed (fpack) image; "
                           "set ingest.allow_compressed = true to accept compressed FITS")
    if layout.non_ascii:
        logger.warning("%s: non-ASCII bytes in the header were replaced by '?'", name)
    payload = buf
    if layout.tail_bytes:
        payload = buf[:layout.end]
    if layout.missing_padding:
        payload = payload + b"\0" * layout.missing_padding
    header, data = _astropy_image(payload, layout, chosen, name, want_data=not header_only)
    del payload, buf
    if not chosen.compressed:
        header = chosen.header.copy()  # the header as in the file (astropy edits BZERO on scaling)
    if chosen.index > 0:
        header = _merge_inherit(header, layout.hdus[0].header)
    return RawFrame(header=header, data=data, sha256=sha, hdu_index=chosen.index,
                    tail_bytes=layout.tail_bytes, **stamp)


# --------------------------------------------------------------------------------------------
# products
# --------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a regular file's bytes, streamed in 1 MiB chunks.

    Raises
    ------
    OSError
        If the path is not a regular file (a FIFO is refused, not waited on).
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})", os.fspath(path))
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _read_product_bytes(path: str | os.PathLike) -> bytes:
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})", os.fspath(path))
        return _pread_fd(fd)(0, st.st_size)
    finally:
        os.close(fd)


def _open_product(path: str | os.PathLike) -> fits.HDUList:
    buf = _read_product_bytes(path)
    try:
        hdul = fits.open(io.BytesIO(buf), mode="readonly", memmap=False, lazy_load_hdus=False)
        for hdu in hdul:
            _ = hdu.data  # load every HDU while the buffer is open
        return hdul
    except (Exception, Warning) as exc:  # noqa: BLE001
        raise OSError(errno.EIO, f"cannot read product ({type(exc).__name__}: {exc})", os.fspath(path)) from None


def read_product(path: str | os.PathLike) -> tuple[fits.Header, np.ndarray]:
    """Read one of our own products: header and float32 (native order) data of HDU 0, or of the
    first image HDU if HDU 0 has no data.

    Raises
    ------
    OSError
        If the file cannot be read or parsed. ValueError if it holds no image.
    """
    with _open_product(path) as hdul:
        for hdu in hdul:
            if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.data is not None:
                return hdu.header.copy(), np.array(hdu.data, dtype=np.float32, copy=True)
    raise ValueError(f"{os.fspath(path)} holds no image HDU")


def read_product_hdus(path: str | os.PathLike) -> fits.HDUList:
    """All HDUs of one of our products, loaded into memory; no file stays open.

    Raises
    ------
    OSError
        If the file cannot be read or parsed.
    """
    hdul = _open_product(path)
    hdul.close()
    return hdul


def _estimate_bytes(hdul: fits.HDUList) -> int:
    """Bytes the HDUs will take on disk, near enough for the free-space check (header blocks
    plus the data padded to whole blocks). ``HDU.filebytes()`` is exact but serialises the
    data to find out: 7 ms of every 2k product."""
    total = 0
    for hdu in hdul:
        nbytes = getattr(getattr(hdu, "data", None), "nbytes", 0) or 0
        header_blocks = -(-(len(hdu.header) + 1) // 36)  # 36 cards of 80 bytes per block, END included
        total += BLOCK_SIZE * header_blocks + -(-int(nbytes) // BLOCK_SIZE) * BLOCK_SIZE
    return total


def _is_enospc(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:  # pragma: no cover - platforms without directory fds
        logger.debug("cannot open %s to fsync it: %s", directory, exc)
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_bytes_atomic(path: str | os.PathLike, payload: bytes, *, mode: int = 0o644) -> Path:
    """Write a small non-FITS product (PNG, HTML) the way every product is written: temp file in
    the same directory, fsync, rename, fsync the directory. Returns the path."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}-{final.name[:128]}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)
    return final


def write_product(path: str | os.PathLike, hdus: fits.HDUList | np.ndarray, *,
                  header: fits.Header | None = None, min_free_bytes: int = 0) -> str:
    """Write a product atomically and durably; return the SHA-256 of the bytes written.

    A temp file (``.ccdwatch-tmp-<random>-<name>``) is written in the same directory, flushed,
    fsynced, checked, renamed over ``path`` with ``os.replace`` and the directory fsynced, so
    readers see either the old file or the complete new one. Parent directories are created.

    Parameters
    ----------
    path : str or os.PathLike
        Final path of the product.
    hdus : astropy.io.fits.HDUList or numpy.ndarray
        What to write; an array becomes a primary HDU with ``header``.
    header : astropy.io.fits.Header, optional
        Header for an array (not allowed with an HDUList: put it in the list).
    min_free_bytes : int, optional
        Free space (bytes) that must remain on the file system after the write.

    Raises
    ------
    DiskFull
        If free space < ``min_free_bytes`` + the estimated size, or on ENOSPC/EDQUOT.
        No temp and no partial final file is left; an existing file at ``path`` is untouched.
    """
    final = Path(path)
    if isinstance(hdus, np.ndarray):
        hdul = fits.HDUList([fits.PrimaryHDU(data=hdus, header=header)])
    elif isinstance(hdus, fits.HDUList):
        if header is not None:
            raise ValueError("pass the header inside the HDUList, not as header=")
        hdul = hdus
    else:
        raise TypeError(f"write_product needs an HDUList or an ndarray, not {type(hdus).__name__}")
    if is_temp_name(final.name) or not final.name:
        raise ValueError(f"{final.name!r} is a temp-file name; products must not be named like that")
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    estimate = _estimate_bytes(hdul)
    free = shutil.disk_usage(parent).free
    if free < min_free_bytes + estimate:
        raise DiskFull(errno.ENOSPC, f"only {free} bytes free, need {estimate} for the product plus "
                       f"{min_free_bytes} kept free", str(final))
    tmp = parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}-{final.name[:128]}"
    try:
        faults.point("product-write", final)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as fh:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                hdul.writeto(fh, output_verify="fix")
            for w in caught:
                logger.warning("%s: %s", final.name, w.message)
            fh.flush()
            os.fsync(fh.fileno())
        sha = sha256_file(tmp)
        os.replace(tmp, final)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as cleanup:  # pragma: no cover
            logger.error("could not remove temp file %s: %s", tmp, cleanup)
        if _is_enospc(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(errno.ENOSPC, f"no space left writing the product ({exc})", str(final)) from exc
        raise
    _fsync_dir(parent)
    logger.debug("wrote %s (%s)", final, sha[:12])
    return sha


def sweep_temp_files(root: str | os.PathLike, *, min_age_seconds: float = 0.0) -> list[Path]:
    """Remove orphan temp files left by :func:`write_product` under ``root`` (recursive).

    Only regular files whose name starts with ``.ccdwatch-tmp-`` are removed; symlinked
    directories are not followed. ``min_age_seconds`` spares temp files younger than that (a
    write still in progress in another process).

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    removed: list[Path] = []
    now = time.time()
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for fname in files:
            if not fname.startswith(TEMP_PREFIX):
                continue
            p = Path(dirpath) / fname
            try:
                st = os.lstat(p)
                if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age_seconds:
                    continue
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning("cannot remove temp file %s: %s", p, exc)
                continue
            removed.append(p)
    if removed:
        logger.info("removed %d orphan temp files under %s", len(removed), root)
    return removed
