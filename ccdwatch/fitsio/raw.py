"""The hostile-file reader: :func:`read_raw`, the only code in ccdwatch that opens raw FITS files.

Raw frames come from a camera program we do not control, so :func:`read_raw` treats every file as
hostile until proven otherwise:

* it is opened once, read-only, with ``O_NOFOLLOW | O_NONBLOCK`` (no symlink is followed, a FIFO
  cannot hang us) and only regular files are accepted; everything afterwards goes through that one
  file descriptor, so the file cannot be swapped between check and use;
* the headers are walked block by block (2880 bytes) *before* any data is read
  (:mod:`ccdwatch.fitsio.layout`): the declared size of every HDU is checked against the file size
  and against a memory budget;
* the file is never memory-mapped (a camera truncating a mapped file kills the process with
  SIGBUS): it is read into memory, hashed, and handed to astropy as ``io.BytesIO``;
* astropy warnings (truncation, invalid headers) become :class:`RejectedFile`, and no astropy
  exception type escapes;
* a file preallocated to its final size and not filled yet (its last 2880-byte block all zero
  bytes, modified moments ago) is refused as ``incomplete-tail`` when the caller asks for the
  check (:mod:`ccdwatch.fitsio.unwritten`, one block read before anything else);
* compressed files (tile-compressed ``.fz``, gzipped ``.gz``) are refused unless allowed, and are
  decompressed only within the same memory budget: a gzip stream is inflated with a bound (a gzip
  bomb stops at the budget), a tile-compressed image's declared size is capped before any tile is
  read and every tile is inflated with a bound before astropy decodes it
  (:mod:`ccdwatch.fitsio.tiles`).

Raw files are never modified, moved, or written next to.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from ccdwatch.fitsio.descriptor import _CHUNK, _pread_bytes, _pread_fd, open_raw
from ccdwatch.fitsio.layout import _HDU, MAX_HEADER_BYTES, _choose, _Layout, _merge_inherit, _walk
from ccdwatch.fitsio.plain import plain_image
from ccdwatch.fitsio.rejected import RejectedFile
from ccdwatch.fitsio.tiles import check_tiles
from ccdwatch.fitsio.unwritten import check_written

__all__ = ["RawFrame", "read_raw"]

# the package's logger, as when this was one module: log lines keep their "ccdwatch.fitsio" name
logger = logging.getLogger("ccdwatch.fitsio")

_GZIP_MAGIC = b"\x1f\x8b"


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
        except MemoryError:  # the worker's limit, not the file's fault: the job says so in words
            raise
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
                except (RejectedFile, MemoryError):
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
        except (RejectedFile, MemoryError):
            raise
        except (Exception, Warning) as exc:  # noqa: BLE001
            raise RejectedFile(_as_warning_reason(exc, "bad-header"),
                               f"{name}: astropy could not read the file ({type(exc).__name__}: {exc})") from None
        finally:
            hdul.close()
    return header, data


def read_raw(path: str | os.PathLike, *, max_data_bytes: int = 2 << 30, allow_compressed: bool = False,
             header_only: bool = False, unwritten_grace: float = 0.0, now: float | None = None,
             drop_cache: bool = False) -> RawFrame:
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
    unwritten_grace : float, optional
        Seconds after its last modification during which a file whose last 2880-byte block is
        all zero bytes is taken for a preallocated file not written yet (reason
        ``incomplete-tail``, see :mod:`ccdwatch.fitsio.unwritten`); 0 (the default) disables
        the check, for files known to be complete.
    now : float, optional
        Current time for that check, s since the epoch (default: ``time.time()``).
    drop_cache : bool, optional
        Once read, tell the kernel the file's cached pages will not be needed again soon
        (``POSIX_FADV_DONTNEED``, where there is one; clean pages only): the caller's last read of it.

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
    fd, st = open_raw(name)
    try:
        check_written(_pread_fd(fd), st, name, grace=unwritten_grace, now=now)
        return _read_raw_fd(fd, st, name, max_data_bytes=max_data_bytes,
                            allow_compressed=allow_compressed, header_only=header_only)
    except OSError as exc:
        raise RejectedFile("unreadable", f"{name}: read error ({exc.strerror or exc})") from None
    finally:
        if drop_cache:
            _drop_cached(fd)
        os.close(fd)


def _drop_cached(fd: int) -> None:
    """Let the kernel drop the open file's clean cached pages (best effort: any error is ignored)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        try:
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


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


def _checked_tiles(payload: bytes, chosen: _HDU, name: str) -> None:
    """The tiles of a compressed image, each bounded before astropy inflates it (`tiles`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            check_tiles(payload, chosen.index, chosen.zaxes, f"{name}: HDU {chosen.index}")
        except (RejectedFile, MemoryError):
            raise
        except (Exception, Warning) as exc:  # noqa: BLE001 - never let an astropy type escape
            raise RejectedFile("unreadable", f"{name}: the compressed tiles cannot be read "
                               f"({type(exc).__name__}: {exc})") from None


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
    if chosen.compressed and not header_only:
        _checked_tiles(payload, chosen, name)
    data = None if header_only else plain_image(payload, chosen)
    if data is None:
        header, data = _astropy_image(payload, layout, chosen, name, want_data=not header_only)
    del payload, buf
    if not chosen.compressed:
        header = chosen.header.copy()  # the header as in the file (astropy edits BZERO on scaling)
    if chosen.index > 0:
        header = _merge_inherit(header, layout.hdus[0].header)
    return RawFrame(header=header, data=data, sha256=sha, hdu_index=chosen.index,
                    tail_bytes=layout.tail_bytes, **stamp)

