"""Calibration numerics: combine frames into masters and calibrate lights.

Pure functions: arrays in, new arrays out; no input is ever modified. NaN marks a missing pixel
everywhere (excluded from combinations, propagated by calibration).

The pipeline builds masters as::

    bias = combine(raw_biases, method="sigma_clip")
    dark = combine([calibrate(d, bias=bias) for d in raw_darks], method="median")
    flat = normalise_flat(combine([calibrate(f, bias=bias, dark=dark, dark_scale=...) ...],
                                  method="median", scales=[1 / median(f_i) ...]))
    light = calibrate(raw, bias=bias, dark=dark, dark_scale=dark_scale(t_light, t_dark), flat=flat)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import ArrayLike

from ccdwatch.orderstats import median_1d, median_and_mad, order_statistics
from ccdwatch.orderstats import median_valid as _median_valid
from ccdwatch.rejection import MAD_TO_SIGMA, sigma_clip
from ccdwatch.rejection import clip_keep as clip_keep  # re-exported: where noise.py finds it
from ccdwatch.rejection import count_valid as _count_valid
from ccdwatch.rejection import mean_valid as _mean_valid
from ccdwatch.scratch import release_pages
from ccdwatch.strips import strip_rows

logger = logging.getLogger(__name__)

__all__ = ["COMBINE_METHODS", "MAD_TO_SIGMA", "calibrate", "combine", "dark_scale", "hot_pixel_mask",
           "normalise_flat", "robust_median", "robust_stats"]

#: Accepted ``combine`` methods ("average" is an alias of "mean").
COMBINE_METHODS = ("mean", "average", "median", "sigma_clip")

#: Above this many finite pixels, robust_stats works on a regular subsample of this size.
ROBUST_STATS_MAX_SAMPLES = 1_000_000


def _as_frames(frames: Sequence[ArrayLike]) -> list[np.ndarray]:
    """Frames as 2-D arrays of one shape, without copying ndarrays, memmaps or `WarpedRows`."""
    arrays: list[np.ndarray] = [f if isinstance(f, np.ndarray) or getattr(f, "lazy_rows", False)  # type: ignore[misc]
                                else np.asarray(f) for f in frames]
    if not arrays:
        raise ValueError("combine needs at least one frame")
    if len(shape := arrays[0].shape) != 2:
        raise ValueError(f"frames must be 2-D, frame 0 has shape {shape}")
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ValueError(f"frame {i} has shape {a.shape}, frame 0 has {shape}")
    return arrays


def _sample_bands(ny: int, rows: int = 32, bands: int = 4) -> list[tuple[int, int]]:
    """About ``rows`` rows of an image of ``ny`` rows in ``bands`` bands of consecutive rows spread
    over it (first at the top, last at the bottom), as ``(start, stop)``; every row when ``ny <= rows``.

    Bands, not rows scattered one by one: a frame warped when its rows are read
    (`ccdwatch.stripwarp.WarpedRows`) pays its margins and set-up per read, so 32 single rows
    cost 32 reads where 4 bands cost 4."""
    if ny <= rows:
        return [(0, ny)]
    per = max(1, rows // bands)
    starts = np.linspace(0, ny - per, bands).astype(int)
    return [(int(a), int(a) + per) for a in np.unique(starts)]


def _spread_floor(arrays: Sequence[np.ndarray], factors: np.ndarray | None, *, rows: int = 32) -> float:
    """Typical per-pixel spread (1.4826 x MAD across frames) on a few bands of rows spread over
    the image (`_sample_bands`); the same for any strip size, so chunking never changes a clipped
    result."""
    ny = arrays[0].shape[0]
    if ny == 0 or len(arrays) < 3:
        return 0.0
    bands = _sample_bands(ny, rows)
    stack = np.empty((len(arrays), sum(b - a for a, b in bands), arrays[0].shape[1]), dtype=np.float32)
    for i, frame in enumerate(arrays):
        j = 0
        for a, b in bands:  # slices: a fancy index may fault in every page
            stack[i, j:j + b - a] = frame[a:b]
            j += b - a
        if factors is not None:
            stack[i] *= factors[i]
        release_pages(frame)
    n = _count_valid(stack)
    spread = MAD_TO_SIGMA * median_and_mad(stack, n)[1]  # the values of two sorts, 2-3x faster
    finite = spread[np.isfinite(spread)]
    return float(np.median(finite)) if finite.size else 0.0


def _combine_strip(stack: np.ndarray, method: str, sigma: float, maxiters: int,
                   floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Combine a (nframes, rows, nx) float32 stack (not modified); returns (values, counts)."""
    if method == "mean":
        n = _count_valid(stack)
        return _mean_valid(stack, n), n
    if method == "median":
        n = _count_valid(stack)
        return _median_valid(stack, n), n
    shape = stack.shape[1:]
    values, n = sigma_clip(stack.reshape(stack.shape[0], -1), sigma, maxiters, floor)
    return values.reshape(shape), n.reshape(shape)


def _checked_method(method: str, sigma: float, maxiters: int) -> str:
    """The combine method by its canonical name ("average" is "mean"), after checking the parameters."""
    method = method.lower() if isinstance(method, str) else method
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method {method!r}; allowed: {', '.join(COMBINE_METHODS)}")
    if method == "average":
        method = "mean"
    if not (sigma > 0):
        raise ValueError(f"sigma must be positive, got {sigma}")
    if maxiters < 0:
        raise ValueError(f"maxiters must be >= 0, got {maxiters}")
    return method


def _combine_rows(arrays: Sequence[np.ndarray], factors: np.ndarray | None, starts: Sequence[int], *, rows: int,
                  method: str, sigma: float, maxiters: int, floor: float, combined: np.ndarray,
                  count: np.ndarray | None) -> None:
    """Combine the strips of ``rows`` rows that begin at ``starts`` into ``combined`` (and ``count``),
    through one reused float32 strip stack."""
    ny, nx = combined.shape
    stack = np.empty((len(arrays), rows, nx), dtype=np.float32)
    for y0 in starts:
        y1 = min(ny, y0 + rows)
        strip = slice(y0, y1)
        work = stack[:, : y1 - y0]
        for i, frame in enumerate(arrays):
            work[i] = frame[strip]
            if factors is not None:
                work[i] *= factors[i]
            release_pages(frame)
        values, n = _combine_strip(work, method, sigma, maxiters, floor)
        combined[strip] = values
        if count is not None:
            count[strip] = n


def combine(
    frames: Sequence[ArrayLike],
    *,
    method: str = "median",
    sigma: float = 3.0,
    maxiters: int = 5,
    scales: Sequence[float] | None = None,
    memory_budget: int = 1 << 30,
    return_count: bool = False,
    threads: int = 1,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Combine same-shape frames pixel by pixel into one image.

    Frames are processed in strips of rows sized so that the strip stack in float32 plus the
    method's temporaries stays within ``memory_budget`` (and the strip stack within a few MB,
    so that the per-pixel work runs in the CPU cache); all frames are never stacked at once
    when that would exceed it. Medians use a sorting network of elementwise min/max over the
    frames (``np.sort`` above 48 frames), which gives the same values as sorting. Pages of
    read-only memory-mapped inputs (``np.load(..., mmap_mode="r")``) are released after each
    strip so that the resident set stays bounded too.
    Results do not depend on the strip size.

    Parameters
    ----------
    frames : sequence of 2-D array_like
        The frames (ndarray or np.memmap), ADU. NaN marks a missing pixel, excluded from the
        combination.
    method : {"median", "mean", "average", "sigma_clip"}
        ``"sigma_clip"`` is the mean after iteratively rejecting values more than ``sigma``
        standard deviations from the per-pixel median, the standard deviation being estimated as
        1.4826 x MAD. ``"average"`` is an alias of ``"mean"``.
    sigma : float
        Clipping threshold in standard deviations (sigma_clip only).
    maxiters : int
        Maximum number of clipping iterations (sigma_clip only).
    scales : sequence of float, optional
        Frame ``i`` is multiplied by ``scales[i]`` before combining (flats: 1 / median).
    memory_budget : int
        Bytes the working set may use (at least one row of all frames is always processed).
    return_count : bool
        Also return the number of inputs used per pixel (after clipping).
    threads : int
        Strips combined side by side by this many threads (numpy releases the GIL in its
        loops), each within ``memory_budget / threads``. The result does not depend on it.

    Returns
    -------
    combined : numpy.ndarray
        float32, NaN where no input was valid.
    count : numpy.ndarray
        uint16 inputs used per pixel; only when ``return_count``.
    """
    method = _checked_method(method, sigma, maxiters)
    arrays = _as_frames(frames)
    nframes = len(arrays)
    if nframes > np.iinfo(np.uint16).max:
        raise ValueError(f"at most 65535 frames can be combined, got {nframes}")
    if scales is not None:
        factors = np.asarray(scales, dtype=np.float64)
        if factors.shape != (nframes,):
            raise ValueError(f"scales has {factors.size} values for {nframes} frames")
    else:
        factors = None
    ny, nx = arrays[0].shape
    rows = strip_rows(nframes, ny, nx, method=method, memory_budget=memory_budget, threads=threads)
    logger.debug("combine %d frames of %dx%d by %s in strips of %d rows", nframes, ny, nx, method, rows)

    floor = _spread_floor(arrays, factors) if method == "sigma_clip" else 0.0
    combined = np.empty((ny, nx), dtype=np.float32)
    count = np.empty((ny, nx), dtype=np.uint16) if return_count else None
    starts = list(range(0, ny, rows))
    threads = max(1, min(int(threads), len(starts)))

    def run(first: int) -> None:
        _combine_rows(arrays, factors, starts[first::threads], rows=rows, method=method, sigma=sigma,
                      maxiters=maxiters, floor=floor, combined=combined, count=count)

    if threads == 1:
        run(0)
    else:  # numpy releases the GIL in its loops: strips combine side by side
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for fut in [pool.submit(run, k) for k in range(threads)]:
                fut.result()
    if count is not None:  # return_count
        return combined, count
    return combined


def _finite_sample(a: ArrayLike) -> np.ndarray | None:
    """A regular (deterministic) subsample of about ``ROBUST_STATS_MAX_SAMPLES`` of the finite
    values of ``a``, in their own type (integers and floats; others as float64); None when none is
    finite."""
    data = np.asarray(a)
    if data.dtype.kind not in "fiu":
        data = data.astype(np.float64)
    data = data.ravel()
    finite = np.isfinite(data)
    n_finite = int(np.count_nonzero(finite))
    if n_finite == 0:
        return None
    step = math.ceil(n_finite / ROBUST_STATS_MAX_SAMPLES) if n_finite > ROBUST_STATS_MAX_SAMPLES else 1
    return data[::step] if n_finite == data.size else data[np.flatnonzero(finite)[::step]]


def _median(values: np.ndarray) -> float:
    """``np.median(values.astype(np.float64))``: the middle values in the values' own type (the
    conversion to float64 keeps the order), averaged in float64 as numpy does. Found by
    `orderstats.order_statistics` (a master's statistics, a flat input's scale and a light's
    levels took ~0.5 s of CPU a night in np.partition)."""
    n = values.size
    k = n // 2
    if n % 2:
        return float(order_statistics(values, [k])[0])
    low, high = order_statistics(values, [k - 1, k])
    return float((np.float64(low) + np.float64(high)) / 2.0)


def robust_median(a: ArrayLike) -> float:
    """Median of the finite values (of a regular subsample above ``ROBUST_STATS_MAX_SAMPLES``);
    NaN when none is finite."""
    values = _finite_sample(a)
    return math.nan if values is None else _median(values)


def robust_stats(a: ArrayLike) -> tuple[float, float]:
    """Median and robust standard deviation (1.4826 x median absolute deviation).

    NaN and infinite values are ignored. Above ``ROBUST_STATS_MAX_SAMPLES`` finite values the
    statistics are computed on a regular (deterministic) subsample of about that size.

    Returns
    -------
    (median, sigma) : tuple of float
        In the units of ``a``; ``(nan, nan)`` when no value is finite.
    """
    values = _finite_sample(a)
    if values is None:
        return math.nan, math.nan
    median = _median(values)
    return median, MAD_TO_SIGMA * _median(np.abs(values.astype(np.float64) - median))


def dark_scale(light_exptime: float, dark_exptime: float) -> float:
    """Factor to scale a (bias-subtracted) master dark of ``dark_exptime`` s to ``light_exptime`` s."""
    if not (math.isfinite(dark_exptime) and dark_exptime > 0):
        raise ValueError(f"dark exposure time must be positive, got {dark_exptime}")
    if not (math.isfinite(light_exptime) and light_exptime >= 0):
        raise ValueError(f"light exposure time must be >= 0, got {light_exptime}")
    return float(light_exptime) / float(dark_exptime)


def normalise_flat(flat: ArrayLike, *, channels: Sequence[Sequence[tuple[int, int]]] | None = None,
                   floor: float = 0.0) -> np.ndarray:
    """Divide a master flat by the median of its finite pixels (robust to vignetting and hot pixels).

    ``channels`` (a colour mosaic): for each colour, its ``(row, col)`` sites in the 2x2 cell;
    each colour is divided by the median of its own pixels, so the lamp's colour and the
    filters' transmissions never mix (`ccdwatch.colour.normalise_flat`).

    ``floor``: pixels whose normalised value is below it (a dead pixel, a deep dust shadow: they
    saw almost no light) become NaN, so that `calibrate` blanks them in the lights rather than
    multiplying them by ``1 / value`` (x100 at 0.01); 0 keeps every pixel.

    Returns
    -------
    numpy.ndarray
        float32, median 1 (of each colour).
    """
    data = np.asarray(flat)
    if data.ndim != 2:
        raise ValueError(f"flat must be 2-D, got shape {data.shape}")
    out = np.empty(data.shape, dtype=np.float32)
    groups = [[(slice(None), slice(None))]] if channels is None else \
        [[(slice(dy, None, 2), slice(dx, None, 2)) for dy, dx in sites] for sites in channels]
    for views in groups:
        parts = [data[v][np.isfinite(data[v])] for v in views]  # copies: the median reorders them
        finite = parts[0] if len(parts) == 1 else np.concatenate(parts)
        del parts
        level = float(median_1d(finite)) if finite.size else math.nan  # np.median's value, bracketed
        del finite
        if not (math.isfinite(level) and level > 0):
            raise ValueError(f"flat median must be positive to normalise, got {level}")
        for v in views:  # float64 division in row blocks: no whole-frame float64 temporaries
            src, dst = data[v], out[v]
            step = max(1, (1 << 19) // max(1, src.shape[1]))
            for y0 in range(0, src.shape[0], step):
                dst[y0:y0 + step] = src[y0:y0 + step].astype(np.float64) / level
    if floor > 0:
        out[out < np.float32(floor)] = np.nan
    return out


def calibrate(
    raw: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    dark: ArrayLike | None = None,
    dark_scale: float = 1.0,
    flat: ArrayLike | None = None,
) -> np.ndarray:
    """Calibrate a frame: ``(raw - bias - dark * dark_scale) / flat``.

    Parameters
    ----------
    raw : array_like
        The raw frame, ADU.
    bias : array_like, optional
        Master bias, ADU.
    dark : array_like, optional
        Bias-subtracted master dark, ADU (for its own exposure time).
    dark_scale : float
        Multiplier of ``dark`` (light exposure / dark exposure, see :func:`dark_scale`).
    flat : array_like, optional
        Normalised master flat (median 1). Pixels where it is zero, negative or not finite give NaN.

    Returns
    -------
    numpy.ndarray
        float32, ADU. Computed in float32 when every input is exactly a float32 (a raw frame of
        integers up to 16 bits or of float32, float32 masters: the cameras' and ccdwatch's own), each
        operation rounded once, as Siril computes; otherwise (32-bit integers, float64) in float64,
        rounded once at the end. The two differ by a few float32 units in the last place (~1e-7 of
        the values), far below any frame's noise; float32 is ~3x faster (a 2k light: ~3 against
        ~9 ms).
    """
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise ValueError(f"raw frame must be 2-D, got shape {raw.shape}")

    def _check(name: str, master: ArrayLike | None) -> np.ndarray | None:
        m = None if master is None else np.asarray(master)
        if m is not None and m.shape != raw.shape:
            raise ValueError(f"{name} has shape {m.shape}, raw frame has {raw.shape}")
        return m

    bias, dark, flat = _check("bias", bias), _check("dark", dark), _check("flat", flat)
    if dark is not None and not math.isfinite(dark_scale):
        raise ValueError(f"dark_scale must be finite, got {dark_scale}")
    if bias is None and dark is None and flat is None and (raw.dtype.kind == "f" or raw.dtype.itemsize <= 4):
        return raw.astype(np.float32)  # nothing to subtract (a bias): rounded once, as through float64
    if _exact_in_float32(raw) and all(m is None or m.dtype == np.float32 for m in (bias, dark, flat)):
        # one float32 subtraction alone (a dark's or a flat's inputs on the bias) has the bytes of the
        # float64 path: IEEE rounds the exact difference once, and float64 (53 >= 2 x 24 + 2 bits)
        # then float32 rounds it to the same value
        return _calibrate_float32(raw, bias, dark, dark_scale, flat)
    out = np.empty(raw.shape, dtype=np.float32)  # a new array: the inputs are never modified
    # float64 arithmetic in row blocks of ~4 MB: the same values as whole-frame float64, without
    # whole-frame float64 temporaries (faster, and far less memory on large frames). The blocks
    # are two buffers used again for every block: taken anew, each block's 4-12 MB went back to
    # the system and was faulted in again (a 2k master flat's input, before 16-bit frames took the
    # float32 path: ~45 against ~20 ms).
    step = max(1, (1 << 19) // max(1, raw.shape[1]))
    buf = np.empty((min(step, raw.shape[0]), raw.shape[1]), dtype=np.float64)
    scaled = np.empty_like(buf) if dark is not None and dark_scale != 1.0 else None
    for y0 in range(0, raw.shape[0], step):
        rows = slice(y0, y0 + step)
        block = buf[: min(step, raw.shape[0] - y0)]
        np.copyto(block, raw[rows], casting="unsafe")  # exact: every raw value is a float64
        if bias is not None:
            block -= bias[rows]
        if dark is not None:  # a matched dark (scale 1): the same values without the float64 product
            if scaled is None:
                block -= dark[rows]
            else:
                product = scaled[: len(block)]
                np.copyto(product, dark[rows])
                product *= dark_scale
                block -= product
        if flat is not None:  # divided in float64 as it is read (the same quotients as a float64 copy)
            f = flat[rows]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                block /= f
            _blank_bad_flat(block, f)
        out[rows] = block
    return out


def _calibrate_float32(raw: np.ndarray, bias: np.ndarray | None, dark: np.ndarray | None, dark_scale: float,
                       flat: np.ndarray | None) -> np.ndarray:
    """`calibrate` in float32 arithmetic, for inputs that are all float32 exactly."""
    out = raw.astype(np.float32)  # exact; a new array: the inputs are never modified
    if bias is not None:
        out -= bias
    if dark is not None and dark_scale == 1.0:
        out -= dark
    elif dark is not None:  # the scaled dark in row blocks (~1 MB): no frame-sized temporary
        step = max(1, (1 << 18) // max(1, raw.shape[1]))
        buf = np.empty((min(step, raw.shape[0]), raw.shape[1]), dtype=np.float32)
        scale = np.float32(dark_scale)
        for y0 in range(0, raw.shape[0], step):
            rows = slice(y0, y0 + step)
            out[rows] -= np.multiply(dark[rows], scale, out=buf[: min(step, raw.shape[0] - y0)])
    if flat is not None:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out /= flat
        _blank_bad_flat(out, flat)
    return out


def _blank_bad_flat(values: np.ndarray, flat: np.ndarray) -> None:
    """NaN in ``values`` wherever ``flat`` (the same shape) is zero, negative or not finite; first
    two reductions, since most flats have no such pixel (the minimum is NaN when one is NaN)."""
    if flat.size and flat.min() > 0.0 and flat.max() < np.inf:
        return
    values[~((flat > 0) & np.isfinite(flat))] = np.nan


def _exact_in_float32(a: np.ndarray) -> bool:
    """Every value of ``a``'s type is a float32 exactly (float32, or integers of <= 16 bits)."""
    return a.dtype == np.float32 or (a.dtype.kind in "ui" and a.dtype.itemsize <= 2)


def hot_pixel_mask(master_dark: ArrayLike, *, nsigma: float = 5.0,
                   stats: tuple[float, float] | None = None) -> np.ndarray:
    """Pixels whose dark signal lies more than ``nsigma`` robust sigmas above the median.

    Parameters
    ----------
    master_dark : array_like
        Bias-subtracted master dark, ADU.
    nsigma : float
        Threshold in units of 1.4826 x MAD of the master dark.
    stats : (median, sigma), optional
        ``robust_stats(master_dark)`` when the caller has it already.

    Returns
    -------
    numpy.ndarray
        bool, True for hot pixels. NaN pixels are not flagged.
    """
    data = np.asarray(master_dark)
    median, spread = robust_stats(data) if stats is None else stats
    if not math.isfinite(median):
        return np.zeros(data.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.asarray(data > median + nsigma * spread)
