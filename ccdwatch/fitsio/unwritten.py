"""Preallocated files: a region the writer has not filled yet reads as zero bytes.

Windows/Samba copies and ``rsync --preallocate`` give a file its final size first (``ftruncate``
or ``fallocate``) and fill it afterwards, front to back. Until the last byte is written the file
has the size its header declares, a valid header, and a tail of zeros: the size check cannot
tell it from a complete frame. :func:`check_written` can, cheaply (one 2880-byte read):

**The rule.** A file is *unwritten at its tail* (:class:`RejectedFile` reason
``incomplete-tail``) when

1. its last FITS block (its last ``min(size, 2880)`` bytes) is entirely zero bytes, and
2. it was modified less than ``grace`` seconds ago (an mtime in the future counts as recent).

Why the last block: a FITS file ends either with a header block (it holds the END card and
spaces, never all zero bytes) or with the last HDU's data, padded with zeros to a whole block.
So the last block of a *complete* file is all zeros only if its data end with a whole block of
zero bytes: at least ``2880 - padding`` bytes, up to 1440 16-bit pixels. The unsigned 16-bit
convention of nearly every CCD camera (``BZERO = 32768``) stores 32768 ADU as zero bytes, so a
real camera frame essentially never does; a signed frame with a zero-padded edge, a masked
region or float data (0.0) can. A writer that has put down anything short of the last block's
data (the header only, a third of the pixels, nothing at all) leaves that block zero.

**Never held for ever.** The rule only holds files modified within ``grace`` seconds: a complete
frame whose last block is zero is read as it is once its mtime is that old (the daemon uses
``watch.fallback_settle_seconds``, minutes). A file of zeros only is then refused as not FITS.

**Limits.** Not seen: an unwritten remainder shorter than the last block's data (under 2880
bytes); a writer that fills the end before the middle (out of order) and pauses in between; a
writer that pauses for longer than ``grace`` (its half-zero frame is read, and superseded by the
complete content when it arrives). On inotify the daemon waits for a close or a move instead,
so these limits matter for polling mounts and writers that close between chunks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from ccdwatch.fitsio.descriptor import BLOCK_SIZE
from ccdwatch.fitsio.rejected import RejectedFile

__all__ = ["INCOMPLETE_TAIL", "check_written", "zero_tail"]

# the package's logger, as for the rest of fitsio
logger = logging.getLogger("ccdwatch.fitsio")

#: The :class:`RejectedFile` reason of a preallocated file whose tail is not written yet.
INCOMPLETE_TAIL = "incomplete-tail"
_SCAN_LIMIT = 1 << 16  # bytes: how far back the zero run is measured for the message (cheap on a mount)


def zero_tail(pread: Callable[[int, int], bytes], size: int, *, limit: int = _SCAN_LIMIT) -> int:
    """Length of the run of zero bytes that ends the file, measured up to ``limit``.

    Parameters
    ----------
    pread : callable
        ``pread(offset, n) -> bytes`` on the file.
    size : int
        File size, bytes.
    limit : int, optional
        Stop measuring after this many bytes (the result is then ``limit``, or ``size`` if
        smaller); the first block is read whatever the limit.

    Returns
    -------
    int
        Bytes, between 0 and ``max(min(size, limit), min(size, BLOCK_SIZE))``.
    """
    run = 0
    end = size
    step = BLOCK_SIZE
    while end > 0 and run < max(limit, 1):
        n = min(step, end)
        chunk = pread(end - n, n)
        kept = len(chunk.rstrip(b"\0"))
        if kept or len(chunk) < n:
            return run + len(chunk) - kept
        run += n
        end -= n
        step = min(step * 4, 1 << 18)
    return run


def check_written(pread: Callable[[int, int], bytes], st: os.stat_result, name: str, *, grace: float,
                  now: float | None = None) -> None:
    """Refuse a recently modified file whose last FITS block is all zero bytes (see the module).

    Parameters
    ----------
    pread : callable
        ``pread(offset, n) -> bytes`` on the open file.
    st : os.stat_result
        ``fstat`` of the same descriptor (size and mtime are used).
    name : str
        The file's path, for the message.
    grace : float
        Seconds after its last modification during which a zero tail means "not written yet";
        0 disables the check.
    now : float, optional
        Current time, s since the epoch (default: ``time.time()``).

    Raises
    ------
    RejectedFile
        Reason ``incomplete-tail``.
    """
    size = st.st_size
    if grace <= 0 or size == 0:
        return
    last = min(size, BLOCK_SIZE)
    if pread(size - last, last).count(0) != last:
        return
    age = (time.time() if now is None else now) - st.st_mtime
    run = zero_tail(pread, size)
    what = "the whole file" if run >= size else f"the last {run}{'+' if run >= _SCAN_LIMIT else ''} bytes"
    if age < grace:
        raise RejectedFile(INCOMPLETE_TAIL, f"{name}: {what} of {size} are zero bytes and it was modified "
                           f"{max(age, 0.0):.1f} s ago: a preallocated file not written yet (read as it is "
                           f"once unmodified for {grace:g} s)")
    logger.info("%s: %s of %s are zero bytes, unmodified for %.0f s: read as complete", name, what, size, age)
