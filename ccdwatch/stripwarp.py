"""Frames warped onto the reference grid strip by strip, when the combination asks for the rows.

A stack used to warp every frame (and its variance plane) whole before combining: 40 lights of
2k with their variances are 1.3 GB of warped planes, more than half of a stack's memory budget,
so they went to scratch files, written and read back, and the warps ran one frame at a time
ahead of the combination. Here a frame stays where it is (a read-only memory map of its
calibrated product) and `WarpedRows` warps the rows of one output strip when
`ccdwatch.noise.combine_weighted` asks for them: the warped strips of all frames live only as
long as their strip, nothing goes to disk, and the combination's threads warp and combine
different strips at once.

Each strip is warped from the input rows its samples reach plus a margin wider than every
kernel (Lanczos: 4 px) and the missing-pixel fill around them (`ccdwatch.resample`), so a strip
is the same as the rows of the whole frame's warp, up to the rounding of the shifted matrix
(OpenCV quantises sample positions to 1/32 px). The strip height depends only on the group's
geometry (`strip_rows`), never on threads or budget: the same group stacks to the same bytes.

A frame turned against the reference (field rotation, a re-framing after a meridian flip, a
rotator moved) samples more rows than the strip for every strip: ``nx * sin(angle)`` more, all
of them at 90 degrees. Those rows are read for the strip and let go with it like any other, and
their missing-pixel map is not kept for the variance strip (found again from the rows): what a
strip holds is at most one frame's rows per thread, never the group's frames (a 200-frame group
of 6k frames turned 0.5 degree once kept 38 GB of whole frames until the stack ended).
Pure numerics.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ccdwatch import calib
from ccdwatch.align import Transform
from ccdwatch.resample import Holes, warp_with_holes
from ccdwatch.scratch import release_pages

__all__ = ["LEVEL_STEP", "MARGIN", "READ_BYTES_PER_PIXEL", "MappedFrame", "WarpedRows", "frame_level", "frame_levels",
           "strip_rows"]

#: Input rows read beyond those a strip's samples fall on: Lanczos reaches 4 px, and a missing
#: pixel's fill (`ccdwatch.resample._filled`) averages its 5x5 neighbours.
MARGIN = 8
#: A strip stack of all frames (float32) is about this large, between 16 and 128 rows.
_STRIP_BYTES = 32 << 20
#: Bytes a thread holds per input pixel of the strip it warps (`WarpedRows`): the rows as float32,
#: their missing-pixel map and a test's temporary (measured 6.0 with hot pixels; the same figure
#: as `ccdwatch.jobs.memory.TURNED_PER_PIXEL`, which cannot import this module).
READ_BYTES_PER_PIXEL = 6
#: A frame's sky level and typical variance are measured on every ``LEVEL_STEP``-th pixel of every
#: ``LEVEL_STEP``-th row: 262,144 pixels of a 2k frame set a median to ~0.003 sigma, and a stack
#: reads (and faults in) only a quarter of each product's pages for them.
LEVEL_STEP = 4


@dataclass(frozen=True)
class MappedFrame:
    """A calibrated frame where it lies (memory maps of its product, any float type and byte
    order): the image, its bad-pixel map (nonzero = bad) and its 1-sigma uncertainty, if any."""

    image: np.ndarray
    bad: np.ndarray | None = None
    uncert: np.ndarray | None = None
    #: per thread, where the image rows it read last are NaN: ``(r0, r1, step, map)`` (`missing_rows`)
    _missing: dict[int, tuple[int, int, int, np.ndarray]] = field(default_factory=dict, compare=False, repr=False)
    #: per thread, the `Holes` of the image strip it warped last, for the variance of the same strip
    _holes: dict[int, tuple[tuple[int, ...], Holes]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def rows(self, r0: int, r1: int, step: int = 1, *, remember: bool = False) -> np.ndarray:
        """Image rows ``r0:r1`` (every ``step``-th row and column) as a new float32 array,
        NaN on bad pixels. ``remember``: keep where they are NaN for this thread's next
        `variance_rows` of the same rows (a strip's: the map of a whole frame read once and kept
        would stay until the thread reads that frame again, which it may never do)."""
        block = np.array(self.image[r0:r1:step, ::step], dtype=np.float32)
        if self.bad is not None:
            block[np.asarray(self.bad[r0:r1:step, ::step]) != 0] = np.nan
        self.release(r0, r1, self.image, self.bad)
        if remember and self.uncert is not None:  # the variance of these rows comes next
            self._missing[threading.get_ident()] = (r0, r1, step, np.isnan(block))
        return block

    def missing_rows(self, r0: int, r1: int, step: int = 1) -> np.ndarray:
        """Where image rows ``r0:r1`` (every ``step``-th) are NaN, as `rows` gives them: remembered
        from this thread's last `rows` when it read the same rows, else read (NaN in the image or
        bad, without a float32 copy of the rows: a turned frame's strip reads up to all of them)."""
        last = self._missing.pop(threading.get_ident(), None)
        if last is not None and last[:3] == (r0, r1, step):
            return last[3]
        missing = np.isnan(self.image[r0:r1:step, ::step])
        if self.bad is not None:
            missing |= np.asarray(self.bad[r0:r1:step, ::step]) != 0
        self.release(r0, r1, self.image, self.bad)
        return missing

    def strip_rows(self, r0: int, r1: int, *, remember: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """`rows` ``r0:r1`` (``remember``: as for a strip) for a warp told where they are missing:
        the rows as a new float32 array with their bad pixels as they are, and where those are
        (bool); or, when a value in the rows is not finite, `rows`' block (NaN on bad pixels) and
        None (the warp finds them). Saves setting NaN on bad pixels for the warp to find again."""
        block = np.array(self.image[r0:r1], dtype=np.float32)
        if not np.isfinite(block).all():
            if self.bad is not None:
                block[np.asarray(self.bad[r0:r1]) != 0] = np.nan
            missing = None
        else:
            missing = (np.asarray(self.bad[r0:r1]) != 0) if self.bad is not None else np.zeros(block.shape, bool)
        self.release(r0, r1, self.image, self.bad)
        if remember and self.uncert is not None:  # `rows`' NaN map: the bad pixels when every value is finite
            self._missing[threading.get_ident()] = (r0, r1, 1, np.isnan(block) if missing is None else missing)
        return block, missing

    @staticmethod
    def release(r0: int, r1: int, *planes: np.ndarray | None) -> None:
        """Let the pages of rows ``r0:r1`` of memory-mapped planes go once copied: file pages
        mapped stay in the process's resident set otherwise (40 products of 2k: 1.3 GB)."""
        for plane in planes:
            if plane is not None:
                release_pages(plane, (r0, r1))

    def variance_rows(self, r0: int, r1: int, step: int = 1) -> np.ndarray | None:
        """UNCERT squared over image rows ``r0:r1`` (every ``step``-th row and column), NaN where
        the image is (`missing_rows`); None without UNCERT."""
        var = self._squared(r0, r1, step)
        if var is not None:
            var[self.missing_rows(r0, r1, step)] = np.nan
        return var

    def strip_variance(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        """`variance_rows` ``r0:r1`` for a warp told where they are missing, as `strip_rows`: UNCERT
        squared and where the image is missing (`missing_rows`), or, when a value of it is not
        finite, `variance_rows`' plane and None; None without UNCERT."""
        var = self._squared(r0, r1, 1)
        if var is None:
            return None
        missing = self.missing_rows(r0, r1)
        if np.isfinite(var).all():
            return var, missing
        var[missing] = np.nan
        return var, None

    def _squared(self, r0: int, r1: int, step: int) -> np.ndarray | None:
        """UNCERT squared over rows ``r0:r1`` (every ``step``-th row and column) as a new float32
        array (its pages let go); None without UNCERT."""
        if self.uncert is None:
            return None
        var = np.array(self.uncert[r0:r1:step, ::step], dtype=np.float32)
        np.square(var, out=var)
        self.release(r0, r1, self.uncert)
        return var


def strip_rows(n_frames: int, nx: int, ny: int) -> int:
    """Output rows warped and combined at once: ~`_STRIP_BYTES` of float32 for all frames,
    between 16 and 128 rows (margins stay a small part of what is warped)."""
    rows = _STRIP_BYTES // max(1, 4 * n_frames * nx)
    return max(1, min(ny, max(16, min(128, rows))))


def frame_level(frame: MappedFrame) -> tuple[float, float]:
    """A frame's sky level (robust median of a `LEVEL_STEP`-strided subsample, as `ccdwatch.stack`
    measures it) and typical variance (robust median of its variance over the same pixels, or its
    sky's robust variance when it has no UNCERT)."""
    ny = frame.shape[0]
    image = frame.rows(0, ny, LEVEL_STEP, remember=True)
    var = frame.variance_rows(0, ny, LEVEL_STEP)
    if var is None:
        level, spread = calib.robust_stats(image)
        return level, spread**2
    return calib.robust_median(image), calib.robust_median(var)


def frame_levels(frames: Sequence[MappedFrame], *, threads: int = 1,
                 known: Sequence[tuple[float, float] | None] | None = None) -> list[tuple[float, float]]:
    """`frame_level` of each frame, read through the maps in ``threads``; ``known``: the levels
    already measured (None where not), taken as they are."""
    known = list(known) if known is not None else [None] * len(frames)
    todo = [f for f, k in zip(frames, known, strict=True) if k is None]
    if threads <= 1 or len(todo) < 2:
        measured = [frame_level(f) for f in todo]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            measured = list(pool.map(frame_level, todo))
    found = iter(measured)
    return [k if k is not None else next(found) for k in known]


class WarpedRows:
    """One frame (or its variance) on the reference grid, warped a strip at a time when indexed.

    ``rows[y0:y1]`` (or ``rows[y]``) returns the warp of those output rows as a new float32 array
    (NaN outside the frame's footprint and where a missing pixel reaches), less ``offset`` (the
    frame's sky offset; the image only). ``variance=True``: the frame's UNCERT squared, warped
    bilinearly (never negative). Safe to index from several threads at once.
    """

    lazy_rows = True  # `ccdwatch.calib._as_frames` passes such frames through unread
    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, frame: MappedFrame, transform: Transform, shape: tuple[int, int], *,
                 method: str = "bicubic", order: int = 1, offset: float = 0.0, variance: bool = False) -> None:
        self.frame = frame
        self.matrix = transform.array
        self.inverse = np.linalg.inv(self.matrix)  # reference (x, y) -> frame (x, y)
        self.shape = (int(shape[0]), int(shape[1]))
        self.method = "bilinear" if variance else method
        self.order = 1 if variance else order
        self.offset = np.float32(offset) if math.isfinite(offset) and offset != 0.0 else None
        self.variance = variance

    def __getitem__(self, key: slice | int) -> np.ndarray:
        if isinstance(key, slice):
            y0, y1, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("warped rows are taken in contiguous strips")
            return self._strip(y0, max(y0, y1))
        y = int(key) + (self.shape[0] if int(key) < 0 else 0)
        return self._strip(y, y + 1)[0]

    def _input_rows(self, y0: int, y1: int) -> tuple[int, int]:
        """The input rows (with `MARGIN`) that output rows ``y0:y1`` sample, clipped to the frame."""
        nx = self.shape[1]
        inv = self.inverse
        ys = [inv[1, 0] * x + inv[1, 1] * y + inv[1, 2] for x in (0.0, nx - 1.0) for y in (float(y0), y1 - 1.0)]
        ny_in = self.frame.shape[0]
        return max(0, math.floor(min(ys)) - MARGIN), min(ny_in, math.ceil(max(ys)) + MARGIN + 1)

    def input_pixels(self, rows: int) -> int:
        """Input pixels that a strip of ``rows`` output rows reads at most (`_input_rows` before it is
        clipped to the frame: the rows a turn spans across the grid's width too), up to the frame's."""
        inv = self.inverse
        reach = abs(inv[1, 0]) * (self.shape[1] - 1.0) + abs(inv[1, 1]) * (rows - 1.0)
        ny, nx = self.frame.shape
        return min(ny, math.ceil(reach) + 2 * MARGIN + 2) * nx

    def _read_strip(self, r0: int, r1: int, *, remember: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Input rows ``r0:r1`` of one strip as a new float32 array, and where they are missing
        (`MappedFrame.strip_rows`, `MappedFrame.strip_variance`; after this thread read the
        image's rows, as a rule, for the variance, which the image's read ``remember``s)."""
        if not self.variance:
            return self.frame.strip_rows(r0, r1, remember=remember)
        read = self.frame.strip_variance(r0, r1)
        if read is None:
            raise ValueError("the frame has no UNCERT plane to warp")
        return read

    def read_into(self, rows: slice, out: np.ndarray) -> np.ndarray:
        """``self[rows]`` written into ``out`` (float32, C-contiguous, the rows' shape): a
        combination's stack of strips takes each frame's without a copy."""
        y0, y1, step = rows.indices(self.shape[0])
        if step != 1 or out.shape != (max(0, y1 - y0), self.shape[1]) or out.dtype != np.float32 \
                or not out.flags.c_contiguous:
            raise ValueError("read_into takes contiguous rows into a float32 array of their shape")
        return self._strip(y0, max(y0, y1), out)

    def _strip(self, y0: int, y1: int, out: np.ndarray | None = None) -> np.ndarray:
        out_shape = (y1 - y0, self.shape[1])
        r0, r1 = self._input_rows(y0, y1)
        if y1 <= y0 or r1 - r0 < 2:  # the strip lies outside the frame
            if out is None:
                return np.full(out_shape, np.nan, dtype=np.float32)
            out.fill(np.nan)
            return out
        # a frame turned against the reference reads more rows than the strip, every strip: their
        # maps are not kept for the variance strip (all frames' maps of a strip would be kept until
        # the combination reads the variances, up to a frame's pixels each), which finds them again
        turned = r1 - r0 > 2 * (y1 - y0) + 4 * MARGIN
        block, missing = self._read_strip(r0, r1, remember=not turned)
        # the same warp on the block: output row y - y0 samples block row (frame row - r0)
        shift_out = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
        shift_in = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, r0], [0.0, 0.0, 1.0]])
        local = Transform.from_array(shift_out @ self.matrix @ shift_in, n_matches=0, rms=0.0)
        # the variance of a strip has the image's missing pixels: it takes the holes the image's
        # warp found (`Holes.fits` makes sure), which this thread warped just before, as a rule
        strip, tid = (y0, y1, r0, r1), threading.get_ident()
        known = self.frame._holes.pop(tid, None) if self.variance else None
        out, holes = warp_with_holes(block, local, output_shape=out_shape, order=self.order, method=self.method,
                                     holes=known[1] if known is not None and known[0] == strip else None,
                                     missing=missing, overwrite=True, out=out)
        if not self.variance and not turned and holes is not None and self.frame.uncert is not None:
            self.frame._holes[tid] = (strip, holes)
        if self.offset is not None:
            out -= self.offset
        return out
