"""A group's frames: which to leave out of the stack, and which to align the others to.

Pure: frame qualities (:class:`~ccdwatch.qa.frame.FrameQuality`) in, decisions out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ccdwatch.qa.frame import FrameQuality

# The logger keeps the name it had when quality control was one module.
logger = logging.getLogger("ccdwatch.qa")

__all__ = ["choose_reference", "reject_outliers"]

#: 1.4826 * MAD is the standard deviation of a Gaussian.
_MAD_TO_SIGMA = 1.4826


def _spread(values: np.ndarray, median: float, *, floor_fraction: float) -> float:
    """Robust standard deviation (1.4826 MAD) with a floor of a fraction of |median|."""
    mad = _MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    floor = floor_fraction * abs(median)
    return max(mad, floor, 1e-12)


def reject_outliers(
    qualities: Mapping[int, FrameQuality],
    *,
    fwhm_mad: float = 5.0,
    sky_mad: float = 5.0,
    stars_fraction: float = 0.5,
    min_stars: int = 5,
    elongation_max: float = 2.0,
    floor_fraction: float = 0.1,
) -> dict[int, str]:
    """Frames of a group to leave out of the stack, with the reason.

    A frame is rejected when its FWHM or its sky is far *above* the group median (in units of
    the robust spread ``1.4826 * MAD``), when it has fewer than ``stars_fraction`` of the group
    median number of stars (clouds), fewer than ``min_stars`` stars, or trailed stars.

    Parameters
    ----------
    qualities : mapping of frame id to FrameQuality
        The group.
    fwhm_mad, sky_mad : float
        Rejection thresholds in robust standard deviations above the group median.
    stars_fraction : float
        Minimum number of stars as a fraction of the group median.
    min_stars : int
        Absolute minimum number of stars.
    elongation_max : float
        Maximum median star elongation ``a/b``.
    floor_fraction : float
        Floor of the robust spread as a fraction of the median, so that a group with
        MAD = 0 (tiny or identical frames) does not reject on tiny differences.

    Returns
    -------
    dict
        Frame id -> human-readable reason (several joined by "; "). Never contains every
        frame: if all would be rejected, the best frame (see `choose_reference`) is kept.
    """
    if not qualities:
        return {}
    ids = list(qualities)
    q = [qualities[i] for i in ids]
    fwhm = np.array([x.fwhm for x in q], dtype=np.float64)
    sky = np.array([x.sky for x in q], dtype=np.float64)
    stars = np.array([x.n_stars for x in q], dtype=np.float64)

    reasons: dict[int, list[str]] = {i: [] for i in ids}

    def high_outliers(values: np.ndarray, limit: float, describe: Callable[[float, float, float], str]) -> None:
        finite = np.isfinite(values)
        if not finite.any():
            return
        med = float(np.median(values[finite]))
        spread = _spread(values[finite], med, floor_fraction=floor_fraction)
        for i, v in zip(ids, values, strict=True):
            z = (v - med) / spread
            if math.isfinite(v) and z > limit:
                reasons[i].append(describe(v, z, med))

    high_outliers(fwhm, fwhm_mad, lambda v, z, m: f"FWHM {v:.1f} px is {z:.1f} MAD above the group median {m:.1f} px")
    high_outliers(sky, sky_mad, lambda v, z, m: f"sky {v:.0f} ADU is {z:.1f} MAD above the group median {m:.0f} ADU")

    med_stars = float(np.median(stars))
    for i, x in zip(ids, q, strict=True):
        if x.n_stars < min_stars:
            reasons[i].append(f"only {x.n_stars} stars (< {min_stars})")
        elif x.n_stars < stars_fraction * med_stars:
            share = "half" if stars_fraction == 0.5 else f"{stars_fraction:g} of"
            reasons[i].append(f"{x.n_stars} stars, fewer than {share} the group median {med_stars:.0f}")
        if math.isfinite(x.elongation) and x.elongation > elongation_max:
            reasons[i].append(
                f"stars elongated (a/b = {x.elongation:.2f} > {elongation_max:g}), tracking or wind"
            )

    rejected = {i: "; ".join(r) for i, r in reasons.items() if r}
    if len(rejected) == len(ids):
        keep = choose_reference(qualities)
        logger.warning("every frame of the group failed quality checks; keeping the best one (%s)", keep)
        del rejected[keep]
    return rejected


def _reference_score(q: FrameQuality) -> float:
    """Stars per PSF area: more stars and sharper is better."""
    if q.n_stars <= 0:
        return -math.inf
    if not math.isfinite(q.fwhm) or q.fwhm <= 0:
        return -1.0 / q.n_stars  # below every frame with a measured FWHM
    return q.n_stars / q.fwhm**2


def choose_reference(qualities: Mapping[int, FrameQuality], *, exclude: Iterable[int] = ()) -> int:
    """The frame to align the others to: most stars and sharpest.

    The score is ``n_stars / fwhm**2`` (a sharp frame detects more faint stars *and* gives
    better centroids); ties go to the lowest id.

    Parameters
    ----------
    qualities : mapping of frame id to FrameQuality
        Candidate frames.
    exclude : iterable of int
        Ids not to choose (e.g. the keys of `reject_outliers`).

    Returns
    -------
    int
        Id of the reference frame.

    Raises
    ------
    ValueError
        When no candidate remains.
    """
    excluded = set(exclude)
    candidates = [i for i in qualities if i not in excluded]
    if not candidates:
        raise ValueError("no frame left to choose a reference from")
    return max(sorted(candidates), key=lambda i: _reference_score(qualities[i]))
