"""Reads through one file descriptor: a raw file opened safely (no link followed, regular files
only), positioned reads that survive short reads, the description of a file that is not a
regular one, and the read-ahead of a batch of raws. No numpy, no astropy: the daemon reads ahead
with it in its own process."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable

from ccdwatch.fitsio.rejected import RejectedFile

#: Size of a FITS logical record (bytes); headers and data are padded to a multiple of it.
BLOCK_SIZE = 2880

#: Most header blocks a raw file may hold in total (all HDUs), 1000 blocks = 2.9 MB.
MAX_HEADER_BLOCKS = 1000
MAX_HEADER_BYTES = MAX_HEADER_BLOCKS * BLOCK_SIZE

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

#: Chunk (bytes) of the streamed reads (hashing, decompression).
_CHUNK = 1 << 20


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


def _kind(mode: int) -> str:
    for test, label in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return label
    return "not a regular file"


def open_raw(path: str | os.PathLike) -> tuple[int, os.stat_result]:
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
            raise RejectedFile("symlink", f"{name} is a symbolic link; raw files are never followed "
                               "through links") from None
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


def read_ahead(paths: Iterable[str | os.PathLike], max_bytes: int) -> None:
    """Ask the kernel to read these raw files into its cache now (``posix_fadvise`` WILLNEED),
    so that the workers that parse them next find their bytes there rather than waiting for the
    disk one file at a time: a catch-up's raws (or a night's, read again minutes later) are
    often no longer cached. Opened as `read_raw` opens them (no link followed, regular files
    only); at most ``max_bytes`` of each; anything odd is skipped silently (`read_raw` says
    what is wrong when the file's turn comes)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:  # not on this platform
        return
    for path in paths:
        try:
            fd, st = open_raw(path)
        except (OSError, RejectedFile):
            continue
        try:
            advise(fd, 0, min(st.st_size, max_bytes), os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
