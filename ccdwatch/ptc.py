"""The gain measured from flats by photon transfer (pure numerics: arrays in, numbers out).

A bias- (and dark-) subtracted flat of level ``S`` ADU has variance ``S / gain + rn^2`` (ADU^2),
plus the flat's fixed pattern (pixel response, dust, vignetting), which the difference of two flats
cancels once the second is scaled to the first's level. In each of many small boxes of a pair
``a``, ``b`` (``k`` = median(a) / median(b) in the box)::

    var(a - k b) = S/g + rn^2 + k^2 (S/(k g) + rn^2)  ~  2 (S/g + rn^2)   =>   g = S / (var/2 - rn^2)

with ``var`` the 5-sigma clipped variance (as `ccdwatch.noise.clipped_std`: stars of twilight flats,
cosmic rays and hot pixels drop out). The gain of a pair is the median over its boxes, the gain the
median over consecutive pairs (0-1, 1-2, ...). The boxes are a regular grid of at most
``max_boxes`` boxes of ``box`` x ``box`` pixels: a few hundred thousand pixels per pair whatever
the frame's size. The read noise (ADU) is the master bias's measurement; unknown, it is neglected:
at a flat's level (thousands of ADU) ``rn^2`` is < 1 % of ``S/g`` for usual CCDs, so the gain comes
out < 1 % low.

Monochrome frames only: a colour mosaic's flats are normalised colour by colour before they are
kept, so their level in ADU is gone by then (the measurement is skipped; README).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ccdwatch.calib import MAD_TO_SIGMA

__all__ = ["GainMeasurement", "pair_gains", "photon_transfer_gain"]

#: Fewest pixels in a box (and boxes in a pair) for a measurement worth recording.
MIN_BOX_PIXELS = 256
MIN_BOXES = 4
#: Largest median level (ADU) of a box counted: near saturation the response is no longer linear.
MAX_LEVEL = 50000.0


@dataclass(frozen=True)
class GainMeasurement:
    gain: float
    """e-/ADU: the median over the pairs."""
    scatter: float
    """e-/ADU: the standard error of that median, from the spread of the boxes' gains."""
    pairs: int
    boxes: int
    """Boxes used, over all pairs."""
    read_noise: float
    """The read noise subtracted (ADU rms; 0 when unknown)."""


def _grid(n: int, box: int, count: int) -> list[int]:
    """Starts of ``count`` boxes spread evenly along an axis of ``n`` pixels."""
    if n < box:
        return []
    count = max(1, min(count, n // box))
    return sorted({int(round(i * (n - box) / max(1, count - 1))) for i in range(count)}) if count > 1 else [
        (n - box) // 2]


def pair_gains(a: np.ndarray, b: np.ndarray, *, read_noise: float = 0.0, box: int = 48,
               max_boxes: int = 100, nsigma: float = 5.0) -> np.ndarray:
    """The gain (e-/ADU) of every usable box of the pair ``a``, ``b`` (bias-subtracted ADU): all
    boxes at once (medians, the MAD and the ``nsigma`` clip of `ccdwatch.noise.clipped_std` along
    each box's pixels); a box with a NaN is left out."""
    ny, nx = a.shape
    side = max(1, int(math.sqrt(max_boxes)))
    size = min(box, ny, nx)
    if size * size < MIN_BOX_PIXELS:
        return np.empty(0)
    corners = [(y, x) for y in _grid(ny, size, side) for x in _grid(nx, size, side)]
    pa = np.stack([np.asarray(a[y:y + size, x:x + size], dtype=np.float64).ravel() for y, x in corners])
    pb = np.stack([np.asarray(b[y:y + size, x:x + size], dtype=np.float64).ravel() for y, x in corners])
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = np.median(pa, axis=1), np.median(pb, axis=1)
        d = pa - (ma / mb)[:, None] * pb
        md = np.median(d, axis=1)
        spread = MAD_TO_SIGMA * np.median(np.abs(d - md[:, None]), axis=1)
        keep = np.abs(d - md[:, None]) <= nsigma * spread[:, None]
        n = keep.sum(axis=1)
        mean = np.where(keep, d, 0.0).sum(axis=1) / n
        var = np.where(keep, (d - mean[:, None]) ** 2, 0.0).sum(axis=1) / (n - 1)
        rn2 = float(read_noise) ** 2 if math.isfinite(read_noise) else 0.0
        excess = var / 2.0 - rn2
        gains = ma / excess
    good = (ma > 0) & (mb > 0) & (np.maximum(ma, mb) < MAX_LEVEL) & (n >= MIN_BOX_PIXELS // 2) & (excess > 0) & (
        spread > 0) & np.isfinite(gains)
    return gains[good]


def photon_transfer_gain(frames: Sequence[np.ndarray], *, read_noise: float | None = None, box: int = 48,
                         max_boxes: int = 100, max_pairs: int = 4) -> GainMeasurement | None:
    """The gain (e-/ADU) from pairs of bias-subtracted flats in ADU (see the module); None with fewer
    than two frames or too few usable boxes."""
    rn = float(read_noise) if read_noise is not None and math.isfinite(read_noise) else 0.0
    per_pair, boxes = [], []
    for k in range(min(len(frames) - 1, max_pairs)):
        g = pair_gains(frames[k], frames[k + 1], read_noise=rn, box=box, max_boxes=max_boxes)
        if g.size >= MIN_BOXES:
            per_pair.append(float(np.median(g)))
            boxes.append(g)
    if not per_pair:
        return None
    every = np.concatenate(boxes)
    spread = 1.4826 * float(np.median(np.abs(every - np.median(every))))
    # the median of n values: sqrt(pi/2) sigma / sqrt(n), the boxes taken as independent (consecutive
    # pairs share a frame: a slight underestimate)
    scatter = math.sqrt(math.pi / 2.0) * spread / math.sqrt(every.size)
    return GainMeasurement(float(np.median(per_pair)), scatter, len(per_pair), int(every.size), rn)
