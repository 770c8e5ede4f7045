"""Sigma clipping along the frames of a stack, pixel by pixel.

The numerics under `ccdwatch.calib.combine` (masters) and `ccdwatch.noise.combine_weighted`
(stacks): counts and means accumulated frame by frame in float64 (a fixed order: the same bytes
whatever the strip size or thread count), and the clipping's kept sets (the medians are
`ccdwatch.orderstats`'). Pure functions; no input is modified.
"""

from __future__ import annotations

import numpy as np

from ccdwatch.orderstats import median_and_mad, pixel_blocks

__all__ = ["MAD_TO_SIGMA", "clip_keep", "count_valid", "kept_mean", "mean_valid", "sigma_clip"]

#: Ratio of the standard deviation to the median absolute deviation of a normal distribution.
MAD_TO_SIGMA = 1.482602218505602


def _count(mask: np.ndarray) -> np.ndarray:
    """How many values along axis 0 of a bool array are True, as int64 (counted in the smallest
    integer type that holds the number of frames: several times faster than in int64)."""
    dtype = np.uint8 if mask.shape[0] < 256 else np.uint16 if mask.shape[0] < 65536 else np.int64
    n = np.zeros(mask.shape[1:], dtype=dtype)
    for plane in mask:
        n += plane
    return n.astype(np.int64)


def count_valid(stack: np.ndarray) -> np.ndarray:
    dtype = np.uint8 if stack.shape[0] < 256 else np.uint16 if stack.shape[0] < 65536 else np.int64
    n = np.zeros(stack.shape[1:], dtype=dtype)
    for plane in stack:
        n += ~np.isnan(plane)
    return n.astype(np.int64)


def mean_valid(stack: np.ndarray, n: np.ndarray) -> np.ndarray:
    """NaN-ignoring mean along axis 0, accumulated frame by frame in float64 (order fixed)."""
    acc = np.zeros(stack.shape[1:], dtype=np.float64)
    for plane in stack:
        acc += np.where(np.isnan(plane), 0.0, plane)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = acc / n
    out[n == 0] = np.nan
    return out


def kept_mean(original: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean along axis 0 of the kept values of (nframes, npix) ``original`` (float64, NaN where
    none is kept; summed frame by frame in a fixed order) and the number kept."""
    n = _count(keep)
    acc = np.zeros(original.shape[1:], dtype=np.float64)
    for plane, k in zip(original, keep, strict=True):
        np.add(acc, plane, out=acc, where=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = acc / n
    mean[n == 0] = np.nan
    return mean, n


def _clip_about_mean(original: np.ndarray, keep: np.ndarray, sigma: float,
                     floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One later pass of the sigma clipping on (nframes, npix) values: the values to keep, and
    the mean (float64) and number of the values ``keep`` kept (`kept_mean`)."""
    mean, n = kept_mean(original, keep)
    acc = np.zeros(original.shape[1:], dtype=np.float64)
    diff = np.empty(original.shape[1:], dtype=np.float64)
    for plane, k in zip(original, keep, strict=True):
        np.subtract(plane, mean, out=diff)
        np.multiply(diff, diff, out=diff)
        np.add(acc, diff, out=acc, where=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.sqrt(acc / (n - 1)).astype(np.float32)
    if floor > 0:
        spread = np.maximum(spread, np.float32(floor))
    limit = np.float32(sigma) * spread
    # keep = not NaN and not |value - centre| > limit, with one float32 and one bool temporary
    with np.errstate(invalid="ignore"):
        deviation = np.subtract(original, mean.astype(np.float32))
        np.abs(deviation, out=deviation)
        out = np.greater(deviation, limit)
    del deviation
    out |= np.isnan(original)
    return np.logical_not(out, out=out), mean, n


def sigma_clip(original: np.ndarray, sigma: float, maxiters: int,
               floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Clipped mean along axis 0 of a (nframes, npix) float32 array (not modified), and the
    number of values kept."""
    npix = original.shape[1]
    mean = np.empty(npix, dtype=np.float64)
    count = np.empty(npix, dtype=np.int64)
    for block in pixel_blocks(*original.shape):
        part = original[:, block]
        keep, m, n = _clip(part, sigma, maxiters, floor)
        if m is None or n is None:
            m, n = kept_mean(part, keep)
        mean[block], count[block] = m, n
    return mean, count


def clip_keep(original: np.ndarray, sigma: float, maxiters: int, floor: float) -> np.ndarray:
    """The values the sigma clipping keeps, (nframes, npix) bool, of a float32 array (not modified).

    The first pass clips about the median with a spread from the MAD, robust to a cosmic ray
    among a handful of frames; later passes clip about the mean of the values kept with their
    standard deviation, and every pass judges all the original values again (a value clipped
    by the first, noisy MAD estimate can come back). With the MAD alone the clipping of N=9
    Gaussian values throws away good data (efficiency ~0.80). Stops when a pass changes nothing.

    Each pixel's passes depend only on its own values, so from the third pass on only the
    pixels whose kept set changed in the previous pass are recomputed (a pixel whose set did
    not change would repeat the same mean/std pass forever); the result is that of running
    every pass over every pixel. For the same reason the pixels are clipped in blocks that fit
    the cache (`ccdwatch.orderstats.pixel_blocks`), with the same result.
    """
    keep = np.empty(original.shape, dtype=bool)
    for block in pixel_blocks(*original.shape):
        keep[:, block] = _clip(original[:, block], sigma, maxiters, floor)[0]
    return keep


def _clip(original: np.ndarray, sigma: float, maxiters: int,
          floor: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """`clip_keep`, and the mean and number of the kept values when the passes computed them
    for the final kept sets (a pixel's last pass changed nothing): None otherwise."""
    valid = ~np.isnan(original)
    keep = valid
    mean = count = None
    active: np.ndarray | None = None
    for iteration in range(maxiters):
        if iteration == 0:
            n = _count(valid)
            centre, mad = median_and_mad(original, n)
            deviation = np.abs(original - centre)
            spread = MAD_TO_SIGMA * mad
            # Per-pixel spreads from a handful of values scatter widely (+-25 % at N=9); a pixel
            # whose estimate came out low would lose good values. Floor it at the frames' typical
            # spread: background pixels share one noise level, brighter pixels keep their own.
            if floor > 0:
                spread = np.maximum(spread, np.float32(floor))
            with np.errstate(invalid="ignore"):
                new = valid & ~(deviation > np.float32(sigma) * spread)
            del deviation
            if np.array_equal(new, keep):
                break
            keep = new
        elif active is None:  # the second pass, over every pixel
            new, mean, count = _clip_about_mean(original, keep, sigma, floor)
            changed = np.flatnonzero(np.any(new != keep, axis=0))
            keep = new
            active = changed
            if changed.size == 0:
                break
        else:  # later passes: only the pixels whose kept set just changed
            sub_keep = keep[:, active]
            new, sub_mean, sub_count = _clip_about_mean(original[:, active], sub_keep, sigma, floor)
            changed = np.any(new != sub_keep, axis=0)
            keep[:, active] = new
            assert mean is not None and count is not None
            mean[active], count[active] = sub_mean, sub_count  # right where nothing changed
            active = active[changed]
            if active.size == 0:
                break
    if mean is not None and count is not None and active is not None and active.size:  # maxiters ran out
        mean[active], count[active] = kept_mean(original[:, active], keep[:, active])
    return keep, mean, count
