"""Flux scales between the frames of a stack: "additive with scaling" normalisation.

Thin cloud, haze or a low altitude dim a whole frame: its stars lose a fraction of their flux
(its sky changes too, but additively, and that is matched apart). A stack that only removes the
sky offset then clips each pixel about the median of values on different flux scales: at a
bright star's peak the clearest frames lie far above the median of the cloudy ones and are
rejected, and the stack's photometry depends on the star's brightness (the review measured
+3.8 % on the brightest third, -0.5 % on the faintest with 70-100 % transparency; -19 % bright,
-10 % faint with 7 of 10 frames through ~50 % cloud).

As Siril's and PixInsight's "additive with scaling" normalisation does, each frame is scaled
about its sky to the reference's flux before the rejection: ``scale * (value - sky) +
reference sky``, its variance by ``scale^2``. `flux_scale` measures the scale from the stars
matched at alignment (the calibrated products' SOURCES tables, mapped by the frame's transform):
the median of the reference's flux over the frame's, over matched stars of regular size (a
saturated star's masked core, or a blend, makes it broader) in the brighter half (well
measured), clipped in the log of the ratio. Too few such stars: 1.0, with the reason.
`ScaledRows` applies a scale to a frame warped strip by strip (`ccdwatch.stripwarp`). Pure numerics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ccdwatch.align import Transform
from ccdwatch.neighbours import PointGrid
from ccdwatch.qa import Sources
from ccdwatch.stripwarp import WarpedRows

__all__ = ["MIN_STARS", "FluxScale", "ScaledRows", "flux_scale"]

#: Fewest matched, well-measured stars a scale is measured from (else it is 1.0).
MIN_STARS = 5
#: A frame star and a reference star match within this distance on the reference grid, px.
MATCH_RADIUS = 1.5
#: Stars broader or narrower than the matched stars' median FWHM by more than this factor (in
#: either frame) are left out: saturated cores (masked at calibration) and blends.
FWHM_FACTOR = 1.3
#: Ratios beyond this many robust sigmas of the median (in log) are left out, once per round.
CLIP_SIGMA = 3.0


@dataclass(frozen=True)
class FluxScale:
    """A frame's flux relative to the reference's: multiply its sky-subtracted values by ``value``.

    ``n_stars``: the stars it was measured from; ``reason``: why it is 1.0 without measuring
    (None when measured; the reference's is 1.0 by definition)."""

    value: float = 1.0
    n_stars: int = 0
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "n_stars": self.n_stars, "reason": self.reason}


def _matched(frame: Sources, ref: Sources, transform: Transform, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (frame, reference) of the stars matched one to one: each frame star mapped onto the
    reference grid and its nearest reference star within ``radius``, the closest claim winning."""
    x, y = transform.apply(frame.x, frame.y)
    dist, j = PointGrid(ref.xy, cell=radius).nearest(np.column_stack([x, y]), radius)
    ok = np.flatnonzero(np.isfinite(dist))
    ok = ok[np.argsort(dist[ok], kind="stable")]
    _, first = np.unique(j[ok], return_index=True)
    i = np.sort(ok[first])
    return i, j[i]


def flux_scale(frame: Sources, ref: Sources, transform: Transform, *, min_stars: int = MIN_STARS,
               radius: float = MATCH_RADIUS) -> FluxScale:
    """The scale taking ``frame``'s fluxes to ``ref``'s (`FluxScale`; 1.0 and the reason when
    fewer than ``min_stars`` matched, well-measured stars are found). ``transform`` maps the
    frame's pixels onto the reference's (`ccdwatch.align.find_transform`)."""
    if len(frame) == 0 or len(ref) == 0:
        return FluxScale(reason="no sources to measure it from")
    i, j = _matched(frame, ref, transform, radius)
    fi, fr = frame.flux[i], ref.flux[j]
    wi, wr = frame.fwhm[i], ref.fwhm[j]
    good = np.isfinite(fi) & np.isfinite(fr) & (fi > 0) & (fr > 0) & np.isfinite(wi) & np.isfinite(wr) \
        & (wi > 0) & (wr > 0)
    if np.count_nonzero(good) >= min_stars:
        for w in (wi, wr):
            typical = float(np.median(w[good]))
            good &= (w <= typical * FWHM_FACTOR) & (w >= typical / FWHM_FACTOR)
    # the brighter half (by the reference's flux) of those, at least ``min_stars``: faint stars'
    # ratios are noisy, and a ratio of noisy fluxes is biased
    kept = np.flatnonzero(good)
    kept = kept[np.argsort(-fr[kept], kind="stable")][: max(min_stars, math.ceil(kept.size / 2))]
    log_ratio = np.log(fr[kept] / fi[kept])
    for _ in range(5):
        if log_ratio.size < min_stars:
            break
        centre = float(np.median(log_ratio))
        spread = 1.4826 * float(np.median(np.abs(log_ratio - centre)))
        inside = np.abs(log_ratio - centre) <= max(CLIP_SIGMA * spread, 1e-3)
        if inside.all():
            break
        log_ratio = log_ratio[inside]
    n = int(log_ratio.size)
    if n < min_stars:
        return FluxScale(n_stars=n, reason=f"only {n} well-measured stars matched the reference (need >= {min_stars})")
    return FluxScale(value=float(np.exp(np.median(log_ratio))), n_stars=n)


class ScaledRows(WarpedRows):
    """`WarpedRows` on a frame's flux scale: the image's rows ``scale * warped - subtract`` (its
    scale about its sky and its sky offset: ``subtract = scale * sky - reference sky``), the
    variance's ``scale^2 * warped``. Constructed as `WarpedRows` with no ``offset``."""

    def __init__(self, *args: Any, scale: float, subtract: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.factor = np.float32(scale * scale if self.variance else scale)
        self.subtract = np.float32(0.0 if self.variance or not math.isfinite(subtract) else subtract)

    def __getitem__(self, key: slice | int) -> np.ndarray:
        return self._scaled(super().__getitem__(key))

    def read_into(self, rows: slice, out: np.ndarray) -> np.ndarray:
        return self._scaled(super().read_into(rows, out))

    def _scaled(self, values: np.ndarray) -> np.ndarray:
        values *= self.factor
        if self.subtract != 0.0:
            values -= self.subtract
        return values
