"""Reads through one file descriptor: positioned reads that survive short reads, and the
description of a file that is not a regular one."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

#: Size of a FITS logical record (bytes); headers and data are padded to a multiple of it.
BLOCK_SIZE = 2880

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


