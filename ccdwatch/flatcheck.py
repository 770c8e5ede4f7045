"""Is a flat's level usable? (pure numerics: one raw flat and its calibrated pixels in, a reason out)

A flat exposed into saturation (dawn flats taken too late, a panel too bright) is ~65535 everywhere:
its master is ~1 everywhere and leaves the lights' vignetting and dust in place, with no error
anywhere. A flat with too little signal is its own noise. Both are refused as master inputs
(`ccdwatch.jobs.tasks.build_master`) with the reason this module gives.

The levels are medians, colour by colour on a mosaic (a twilight is blue, a lamp red: one colour
saturates first, another is the faintest), measured on a regular subsample of each colour's pixels
(at most ~250,000 each: a median to ~1e-3 of its value, far inside any limit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ccdwatch.orderstats import median_1d

#: Samples of each colour's pixels the medians and the saturated fraction are measured on.
MAX_SAMPLES = 250_000


def _sample(data: np.ndarray, dy: int, dx: int, period: int) -> np.ndarray:
    """A regular subsample (a strided view's copy, <= ~MAX_SAMPLES) of the pixels at ``(dy, dx)``
    of each ``period`` x ``period`` cell."""
    view = data[dy::period, dx::period]
    step = max(1, math.ceil(math.sqrt(view.size / MAX_SAMPLES)))
    return np.asarray(view[::step, ::step]).ravel()


def _channels(data: np.ndarray, channels: Sequence[Sequence[tuple[int, int]]] | None) -> list[np.ndarray]:
    if channels is None:
        return [_sample(data, 0, 0, 1)]
    return [np.concatenate([_sample(data, dy, dx, 2) for dy, dx in sites]) for sites in channels]


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    return float(median_1d(finite)) if finite.size else math.nan


def judge(raw: np.ndarray, calibrated: np.ndarray, saturation: float, *, max_level: float = 0.85,
          max_saturated: float = 0.01, min_signal: float = 1000.0,
          channels: Sequence[Sequence[tuple[int, int]]] | None = None,
          names: Sequence[str] = ("R", "G", "B")) -> str | None:
    """Why a flat must not go into its master, or None when its level is fine.

    Parameters
    ----------
    raw : numpy.ndarray
        The raw frame's data section, ADU as read out (what the ADC clipped).
    calibrated : numpy.ndarray
        The same pixels with the bias (and dark) subtracted, ADU.
    saturation : float
        The raw saturation level (`ccdwatch.jobs.tasks.saturation_level`; inf: unknown).
    max_level, max_saturated, min_signal : float
        ``[masters]`` ``flat_max_level`` (the highest raw median, a fraction of ``saturation``),
        ``flat_max_saturated`` (the largest fraction of pixels at or above it) and
        ``flat_min_signal`` (the lowest median above bias and dark, ADU; 0: no lower limit; not
        applied to a float frame of unknown saturation, whose values need not be counts).
    channels : sequence of sites, optional
        A mosaic's colours: each colour's ``(row, col)`` sites in the 2x2 cell
        (`ccdwatch.colour.channel_sites`), named by ``names``; None: monochrome.
    """
    label = (lambda i: f" ({names[i]})") if channels is not None else (lambda i: "")
    if math.isfinite(saturation) and saturation > 0:
        raws = _channels(raw, channels)
        levels = [_median(v) for v in raws]
        i = int(np.nanargmax(levels)) if not all(math.isnan(v) for v in levels) else 0
        if levels[i] >= max_level * saturation:
            return (f"saturated flat: median{label(i)} {levels[i]:.0f} ADU is {100 * levels[i] / saturation:.0f}% "
                    f"of the saturation level {saturation:.0f} ADU (limit: masters.flat_max_level = "
                    f"{max_level:g}); expose the flats for less")
        n = sum(v.size for v in raws)
        at = sum(int(np.count_nonzero(v >= saturation)) for v in raws)
        if n and at / n > max_saturated:
            return (f"saturated flat: {100 * at / n:.1f}% of its pixels are at the saturation level "
                    f"{saturation:.0f} ADU (limit: masters.flat_max_saturated = {max_saturated:g}); "
                    "expose the flats for less")
    # ADU only where the raw frame is counts: an integer frame, or a float one with a known ceiling
    # (a float flat scaled to 0..1 by its converter is no faint flat)
    if min_signal > 0 and (raw.dtype.kind in "ui" or math.isfinite(saturation)):
        signal = [_median(v) for v in _channels(calibrated, channels)]
        i = int(np.nanargmin(signal)) if not all(math.isnan(v) for v in signal) else 0
        if not signal[i] >= min_signal:  # NaN too
            return (f"too faint a flat: median{label(i)} {signal[i]:.0f} ADU above bias and dark, below "
                    f"masters.flat_min_signal = {min_signal:g} ADU: its own noise would dominate the "
                    "master; expose the flats for longer")
    return None
