"""The noise model: per-pixel noise measured from a master's inputs, the uncertainty of a calibrated
light, and the inverse-variance combination of a stack.

Pure numerics (arrays in, new arrays out). Conventions:

* uncertainties are standard deviations (1 sigma, like astropy's ``StdDevUncertainty``), in the
  units of the image they go with;
* a light's variance, in ADU^2 before the flat, is ``max(raw - bias, 0) / gain + read_noise^2``
  plus the masters' own noise; the flat divides it by ``flat^2`` and adds ``(value * flat_noise)^2``
  (`light_sigma`);
* a master's noise is one number per master (`pair_noise`, `combined_noise`): the per-pixel noise
  of one input measured from differences of pairs of inputs (so fixed patterns cancel), divided by
  the square root of the number combined. Flats: relative noise (inputs normalised to median 1).
  The approximation: every pixel of a master has that noise (a vignetted flat's corners are
  noisier; a dark's hot pixels too, but those are masked).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ccdwatch import calib, strips
from ccdwatch.rejection import count_valid
from ccdwatch.scratch import release_pages

__all__ = ["WEIGHTINGS", "Fanout", "Weighted", "clipped_std", "combine_weighted", "clip_excess", "combined_noise",
           "frame_weight", "light_sigma", "median_variance", "pair_noise"]

#: ``stack.weights``: inverse variance (per frame), that times 1 / FWHM^2 (point sources), or none.
WEIGHTINGS = ("ivar", "quality", "none")

#: Variance of the median of n normal values relative to their mean's, for large n.
MEDIAN_VARIANCE = math.pi / 2
#: The same for n = 1..20 (simulated; an even n's median is the mean of the middle two).
_MEDIAN_VARIANCE_N = (1.0, 1.0, 1.343, 1.195, 1.432, 1.288, 1.473, 1.349, 1.494, 1.381, 1.509, 1.409, 1.519,
                      1.429, 1.523, 1.443, 1.532, 1.46, 1.538, 1.466)


def median_variance(n: int) -> float:
    """Variance of the median of ``n`` normal values over that of their mean (pi/2 above 20)."""
    return _MEDIAN_VARIANCE_N[n - 1] if 1 <= n <= len(_MEDIAN_VARIANCE_N) else MEDIAN_VARIANCE


def pair_noise(frames: Sequence[np.ndarray], scales: Sequence[float] | None = None, *, max_pairs: int = 4) -> float:
    """Per-pixel noise of one input frame: the (5-sigma clipped) standard deviation of the difference
    of two inputs divided by sqrt(2) (fixed patterns cancel), the median over up to ``max_pairs``
    disjoint pairs (0-1, 2-3, ...). ``scales[i]`` multiplies frame ``i`` first. NaN for fewer than
    two frames."""
    values = []
    for k in range(0, min(len(frames) - 1, 2 * max_pairs), 2):
        ny, nx = np.shape(frames[k])
        rows = slice(None, None, max(1, ny * nx // calib.ROBUST_STATS_MAX_SAMPLES))  # <= ~1 M pixels: no big copies
        a = np.asarray(frames[k][rows], dtype=np.float32)
        b = np.asarray(frames[k + 1][rows], dtype=np.float32)
        if scales is not None:
            a, b = a * np.float32(scales[k]), b * np.float32(scales[k + 1])
        values.append(clipped_std(a - b) / math.sqrt(2.0))
        release_pages(frames[k])
        release_pages(frames[k + 1])
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def clipped_std(a: np.ndarray, nsigma: float = 5.0) -> float:
    """Standard deviation of the finite values of ``a`` within ``nsigma`` robust sigmas (MAD) of
    their median (a regular subsample of at most ~1 M values): robust to outliers (cosmic rays, hot
    pixels) like the MAD, but not stepped by integer-valued data as the MAD of raw ADU is."""
    flat = np.ravel(a)
    flat = flat[:: max(1, flat.size // calib.ROBUST_STATS_MAX_SAMPLES)]
    flat = flat[np.isfinite(flat)].astype(np.float64)
    if flat.size < 2:
        return math.nan
    median, spread = calib.robust_stats(flat)
    kept = flat[np.abs(flat - median) <= nsigma * spread] if spread > 0 else flat
    return float(np.std(kept, ddof=1)) if kept.size > 1 else math.nan


def combined_noise(one: float, n: int, method: str) -> float:
    """Per-pixel noise of a combination of ``n`` inputs of noise ``one`` each: ``one / sqrt(n)``,
    times sqrt(`median_variance`) for a median (a sigma-clipped mean counts as a mean)."""
    if n < 1 or not math.isfinite(one):
        return math.nan
    factor = math.sqrt(median_variance(n)) if method == "median" else 1.0
    return one * factor / math.sqrt(n)


def light_sigma(raw: np.ndarray, calibrated: np.ndarray, *, gain: float, read_noise: float,
                bias: np.ndarray | None = None, dark: np.ndarray | None = None, dark_scale: float = 1.0,
                flat: np.ndarray | None = None, bias_noise: float = 0.0, dark_noise: float = 0.0,
                flat_noise: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """The 1-sigma uncertainty of each pixel of ``calibrated`` (= `calib.calibrate` of ``raw`` with
    these masters), times ``scale`` (the gain, for a product in electrons); float32.

    Variance in ADU^2 before the flat: Poisson ``max(raw - bias, 0) / gain`` (light and dark
    current: the measured value stands for its expectation; without a bias master, ``raw - dark``),
    ``read_noise^2`` (ADU), and the masters' noise: ``(1 - dark_scale)^2 bias_noise^2 +
    dark_scale^2 dark_noise^2`` (a bias-subtracted dark carries the bias back with ``-dark_scale``;
    ``dark_noise`` is the noise of the dark's own inputs, measured from their differences). The flat
    divides it by ``flat^2`` and adds ``(calibrated * flat_noise)^2`` (relative flat noise).
    """
    if not (gain > 0 and math.isfinite(gain)):
        raise ValueError(f"gain must be positive, got {gain}")
    ny, nx = raw.shape
    s = float(dark_scale) if dark is not None else 0.0
    const = read_noise ** 2 + s * s * np.nan_to_num(dark_noise) ** 2
    if bias is not None:
        const += (1.0 - s) ** 2 * np.nan_to_num(bias_noise) ** 2
    const_f, inv_gain = np.float32(const), np.float32(1.0 / gain)
    out = np.empty((ny, nx), dtype=np.float32)
    step = max(1, (1 << 18) // max(1, nx))  # row blocks of ~1 MB: the temporaries stay in the cache
    tmp = np.empty((min(step, ny), nx), dtype=np.float32)
    for y0 in range(0, ny, step):
        rows = slice(y0, y0 + step)
        var = out[rows]  # computed in place in the output's rows (the same float32 steps)
        part = tmp[: len(var)]
        np.copyto(var, raw[rows], casting="unsafe")
        if bias is not None:
            var -= bias[rows]
        elif dark is not None:
            var -= np.multiply(dark[rows], np.float32(s), out=part)
        np.maximum(var, 0.0, out=var)
        var *= inv_gain
        var += const_f
        done = calibrated[rows]
        if flat is not None:
            f = flat[rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                var /= np.multiply(f, f, out=part)
            if flat_noise > 0:
                np.multiply(done, np.float32(flat_noise), out=part)
                var += np.square(part, out=part)
        np.sqrt(var, out=var)
        if scale != 1.0:
            var *= np.float32(scale)
        if np.isnan(done.min(initial=0.0)):  # one reduction first: most rows hold no NaN
            var[np.isnan(done)] = np.nan
    return out


def frame_weight(weighting: str, variance: float, fwhm: float | None = None) -> float:
    """A frame's weight in the stack: ``1 / variance`` (its typical per-pixel variance on the sky)
    for "ivar", that over ``fwhm^2`` for "quality" (a point source's signal-to-noise goes as
    1 / (sigma x FWHM)), 1 for "none". A frame whose measure is missing or not positive weighs 1
    relative to the median, so it is neither lost nor favoured (see `combine_weighted`)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
    if weighting == "none":
        return 1.0
    if not (math.isfinite(variance) and variance > 0):
        return math.nan
    w = 1.0 / variance
    if weighting == "quality":
        if fwhm is None or not (math.isfinite(fwhm) and fwhm > 0):
            return math.nan
        w /= fwhm * fwhm
    return w


class Fanout(Protocol):
    """How `combine_weighted` runs its strips side by side when not on threads (e.g.
    `ccdwatch.jobs.fanout.Forked`: processes): ``empty`` gives the output arrays every runner
    writes, ``run(fn, width)`` calls ``fn(k)`` for each ``k`` in ``range(width)`` at once."""

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray: ...

    def run(self, fn: Callable[[int], None], width: int) -> None: ...


@dataclass
class Weighted:
    """`combine_weighted`'s result: the image, its 1-sigma uncertainty, the values used per
    pixel and the exposure map (seconds of the values used)."""

    image: np.ndarray
    sigma: np.ndarray
    used: np.ndarray
    expmap: np.ndarray
    weights: tuple[float, ...] = ()
    """The frames' weights as used (a missing one replaced by the median)."""
    covered: np.ndarray | None = None
    """uint16: the frames with a value at each pixel, before any rejection (``coverage=True``)."""


def combine_weighted(frames: Sequence[np.ndarray], variances: Sequence[np.ndarray | float],
                     weights: Sequence[float], exposures: Sequence[float], *, method: str = "sigma_clip",
                     sigma: float = 3.0, maxiters: int = 5, memory_budget: int = 1 << 30,
                     threads: int = 1, typical: Sequence[float] | None = None, rows: int | None = None,
                     coverage: bool = False, fanout: Fanout | None = None) -> Weighted:
    """Combine aligned frames with per-frame weights, propagating their variances.

    The rejection is `calib.combine`'s (sigma clipping about the median, then the mean; NaN
    missing) and does not look at the weights; the kept values are averaged with the weights
    (``method="mean"``/``"sigma_clip"``: with weights all 1 the values are `calib.combine`'s).
    ``"median"`` keeps the unweighted median. Variance of the result:
    ``sum(w_i^2 var_i) / sum(w_i)^2`` over the kept values (times `median_variance` for the median),
    the frames' noise taken as independent (frames calibrated with the same masters share the
    masters' noise: a small underestimate). ``variances[i]`` is a per-pixel variance plane of
    frame ``i`` or one number for all its pixels (``typical``: each frame's median variance, if
    known). Non-finite weights become the median weight. ``rows``: rows combined at once (by
    default from the budget); fixed by the caller for frames warped as their rows are read
    (`ccdwatch.stripwarp`), whose strips must not depend on the threads. ``coverage``: also
    count the frames with a value at each pixel (``covered``). ``fanout``: the strips run in
    ``threads`` runners it makes (processes) instead of threads; the same result.
    """
    method = calib._checked_method(method, sigma, maxiters)
    arrays = calib._as_frames(frames)
    n = len(arrays)
    w = np.asarray(weights, dtype=np.float64)
    good = np.isfinite(w) & (w > 0)
    w = np.where(good, w, np.median(w[good]) if good.any() else 1.0)
    if method == "median":
        w = np.ones(n)
    ny, nx = arrays[0].shape
    if rows is None:
        rows = strips.strip_rows(2 * n, ny, nx, method=method, memory_budget=memory_budget, threads=threads)
    floor = calib._spread_floor(arrays, None) if method == "sigma_clip" else 0.0
    excess = 1.0
    if method == "sigma_clip":
        if typical is None:
            typical = [calib.robust_median(v) if isinstance(v, np.ndarray) else float(v) for v in variances]
        excess = clip_excess(typical, w, sigma=sigma, maxiters=maxiters)
    starts = list(range(0, ny, rows))
    threads = max(1, min(int(threads), len(starts)))
    empty = fanout.empty if fanout is not None and threads > 1 else np.empty
    out = Weighted(empty((ny, nx), np.float32), empty((ny, nx), np.float32),
                   empty((ny, nx), np.uint16), empty((ny, nx), np.float32), tuple(float(x) for x in w),
                   empty((ny, nx), np.uint16) if coverage else None)

    def run(first: int) -> None:
        for y0 in starts[first::threads]:
            _strip(arrays, variances, w, exposures, slice(y0, min(ny, y0 + rows)), method, sigma, maxiters,
                   floor, out, excess)

    if threads == 1:
        run(0)
    elif fanout is not None:
        fanout.run(run, threads)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for fut in [pool.submit(run, k) for k in range(threads)]:
                fut.result()
    return out


def clip_excess(variances: Sequence[float], weights: Sequence[float] | np.ndarray, *, sigma: float, maxiters: int = 5,
                samples: int = 20_000) -> float:
    """How much more variance the sigma-clipped weighted mean has than ``sum(w^2 var) / sum(w)^2``
    over the kept values says: the clipping decides from the data (it drops good values in the
    tails, judged against a spread estimated from the same few values), which costs ~5 % of
    variance for 5-9 frames at 3 sigma. Simulated for these frames' variances, weights and
    ``sigma`` on ``samples`` pixels of normal noise (fixed seed: the same factor every time); 1 for
    fewer than 3 frames."""
    n = len(variances)
    v = np.asarray(variances, dtype=np.float64)
    if n < 3 or not np.all(np.isfinite(v) & (v > 0)):
        return 1.0
    rng = np.random.default_rng(12345)
    values = (rng.standard_normal((n, samples)) * np.sqrt(v)[:, None]).astype(np.float32)
    floor = calib._spread_floor([values[i][None, :] for i in range(n)], None)
    keep = calib.clip_keep(values, sigma, maxiters, floor)
    w = np.asarray(weights, dtype=np.float64)[:, None] * keep
    total = w.sum(axis=0)
    ok = total > 0
    mean = (w * values).sum(axis=0)[ok] / total[ok]
    predicted = ((w * w * v[:, None]).sum(axis=0)[ok] / total[ok] ** 2).mean()
    return float(np.mean(mean * mean) / predicted) if predicted > 0 else 1.0


def _strip(arrays: Sequence[np.ndarray], variances: Sequence[np.ndarray | float], w: np.ndarray,
           exposures: Sequence[float], rows: slice, method: str, sigma: float, maxiters: int, floor: float,
           out: Weighted, excess: float = 1.0) -> None:
    """Combine the rows ``rows`` of every frame into ``out``."""
    ny, nx = arrays[0].shape
    work = np.empty((len(arrays), len(range(*rows.indices(ny))), nx), np.float32)
    for plane, a in zip(work, arrays, strict=True):  # frames warped as read write their rows in place
        reader = getattr(a, "read_into", None)
        if reader is not None:
            reader(rows, plane)
        else:
            plane[...] = a[rows]
    for a in arrays:
        release_pages(a)
    shape = work.shape[1:]
    if method == "sigma_clip":
        keep = calib.clip_keep(work.reshape(len(arrays), -1), sigma, maxiters, floor).reshape(work.shape)
    else:
        keep = ~np.isnan(work)
    if out.covered is not None:  # the values there before any rejection
        out.covered[rows] = count_valid(work)  # frame by frame in uint8: ~3x faster than count_nonzero
    # the rejected and missing values of the strip (the caller's scratch) set to 0 in one pass: each
    # frame's sum is then a plain add, not a masked one (adding 0.0 leaves a sum that starts at +0.0
    # as it was: the same bytes); the median takes the values as they are
    zeroed = method != "median"
    if zeroed:
        np.copyto(work, np.float32(0.0), where=~keep)
    ones = bool(np.all(w == 1.0))  # the sum of the weights kept is then the count
    acc = np.zeros(shape, np.float64)
    total = np.zeros(shape, np.float64)
    var = np.zeros(shape, np.float64)
    expo = np.zeros(shape, np.float64)
    used = np.zeros(shape, np.uint16 if len(arrays) < 65536 else np.int64)  # a narrow count is faster
    vi = np.empty(shape, np.float64)  # one frame's weighted variance, reused (no temporaries per frame)
    same_exposure = len(set(exposures)) <= 1
    for i, (plane, k) in enumerate(zip(work, keep, strict=True)):
        wi = float(w[i])
        np.add(acc, plane if wi == 1.0 else plane * wi, out=acc, where=True if zeroed else k)
        if not ones:
            np.add(total, wi, out=total, where=k)
        v = variances[i]
        if np.ndim(v):  # a plane (or its rows, warped when read)
            np.multiply(v[rows], wi * wi, out=vi, dtype=np.float64)  # type: ignore[index]
            np.fmax(vi, 0.0, out=vi)  # NaN (variance unknown) counts 0, as nan_to_num, 5x faster
            np.add(var, vi, out=var, where=k)
        else:
            np.add(var, np.nan_to_num(float(v) * (wi * wi), nan=0.0), out=var, where=k)
        if not same_exposure:
            np.add(expo, float(exposures[i]), out=expo, where=k)
        np.add(used, k, out=used, casting="unsafe")
    if same_exposure:  # the common case: one exposure, counted once at the end
        np.multiply(used, float(exposures[0]) if len(exposures) else 0.0, out=expo)
    if ones:
        np.copyto(total, used)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = acc / total if method != "median" else calib._median_valid(work, used.astype(np.int64))
        var /= total * total
    if method == "median":  # by the number of values at each pixel
        var *= np.asarray([median_variance(k) for k in range(len(arrays) + 1)])[used]
    elif excess != 1.0:
        var *= excess
    none = used == 0
    value = np.asarray(value, dtype=np.float64)
    value[none] = np.nan
    var[none] = np.nan
    out.image[rows] = value
    out.sigma[rows] = np.sqrt(var)
    out.used[rows] = used
    out.expmap[rows] = expo
