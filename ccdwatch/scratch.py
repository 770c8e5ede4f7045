"""Working copies of large arrays: kept in RAM when they fit a budget, else memory-mapped files.

A master's calibrated inputs and a stack's warped frames are all needed at once by
`ccdwatch.calib.combine`, which reads them strip by strip. When all of them fit the caller's
share of the memory budget they simply stay in memory (no files to write and map back);
otherwise each is written as an ``.npy`` file into a private scratch directory and
handed back as a read-only memory map, whose resident pages `release_pages` drops after each
strip. The scratch directory and its files are removed when the `ScratchArrays` is closed.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ScratchArrays", "release_pages"]


class ScratchArrays:
    """Arrays kept in memory while all of them fit ``budget``, else spilled to memory-mapped files.

    The choice is made once, on the first array kept: all ``count`` arrays are assumed to be
    the size of the first, and they stay in memory when ``count * first.nbytes <= budget``;
    otherwise every array (the first included) is written as an ``.npy`` file into a private
    directory under ``workdir`` and returned as a read-only memory map of that file. Either way
    the values are the same. Use as a context manager (or call `close`): the directory and its
    files are removed on exit. `keep` may be called from several threads.

    Parameters
    ----------
    workdir : path
        Directory (created if missing) that receives the private scratch directory; it should
        be on a disk with room for ``count`` arrays.
    count : int
        Number of arrays that will be kept.
    budget : int
        Bytes that the kept arrays may take in memory together.
    prefix : str
        Name prefix of the private scratch directory.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, count: int, budget: int, prefix: str = "tmp") -> None:
        self.count = int(count)
        self.budget = int(budget)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
        self._in_memory: bool | None = None
        self._names = itertools.count()
        self._lock = threading.Lock()

    @property
    def in_memory(self) -> bool | None:
        """True when the arrays stay in memory, False when they go to files, None before the first."""
        return self._in_memory

    def keep(self, array: np.ndarray) -> np.ndarray:
        """``array`` itself when the arrays fit in memory, else a read-only memory map of a copy on disk.

        Parameters
        ----------
        array : ndarray
            The array to keep; not modified. Once spilled, the caller should drop its own
            reference so that its memory is freed.

        Returns
        -------
        ndarray or numpy.memmap
            Equal to ``array`` (same dtype, shape and values).
        """
        with self._lock:
            if self._in_memory is None:
                self._in_memory = array.nbytes * self.count <= self.budget
            if self._in_memory:
                return array
            path = self.directory / f"{next(self._names):05d}.npy"
        np.save(path, array)
        return np.load(path, mmap_mode="r")

    def close(self) -> None:
        """Remove the scratch directory and its files (memory maps still open stay readable on POSIX)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ScratchArrays:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _mmap_of(array: np.ndarray) -> mmap.mmap | None:
    """The read-only ``mmap`` under a numpy memmap opened with mode 'r', else None."""
    if not isinstance(array, np.memmap) or getattr(array, "mode", None) not in ("r", "readonly"):
        return None
    base = array.base
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base if isinstance(base, mmap.mmap) and hasattr(base, "madvise") else None


def release_pages(array: np.ndarray, rows: tuple[int, int] | None = None) -> None:
    """Drop the resident pages of ``array`` (of its ``rows`` only: the whole pages within them)
    when it is a read-only memmap (as made by ``np.memmap``, not a view of one).

    File pages touched through a memory map count towards the process's resident set (and the
    kernel may map whole large folios around each fault). Dropping the mapping's pages after each
    strip (``MADV_DONTNEED``, harmless on a read-only shared mapping: the data stays in the page
    cache and is faulted back in when touched again) keeps resident memory within the combine
    budget however large the inputs are.
    """
    mm = _mmap_of(array)
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        if rows is None:
            mm.madvise(mmap.MADV_DONTNEED)
            return
        # np.memmap maps from its offset rounded down to the allocation granularity
        skip = int(getattr(array, "offset", 0)) % mmap.ALLOCATIONGRANULARITY
        start = skip + rows[0] * array.strides[0]
        start -= start % mmap.PAGESIZE
        stop = min(len(mm), skip + rows[1] * array.strides[0])
        if stop > start:
            mm.madvise(mmap.MADV_DONTNEED, start, stop - start)
    except (ValueError, OSError) as exc:  # best effort only
        logger.debug("could not release memmap pages: %s", exc)
