"""Cosmic-ray detection on one calibrated frame: a fast single pass, or L.A.Cosmic (astroscrappy).

`detect` (the default, ``calibration.cosmic_rays = "fast"``) follows L.A.Cosmic's tests
(van Dokkum 2001) in one pass, but computes them only where something is sharp:

1. *Candidates*, on the whole frame with two cheap filters: pixels standing more than
   ``prefilter`` sky sigmas above the mean of their 8 neighbours, and the neighbours of those
   (a weak pixel of a track sits beside a strong one).
2. *Significance*, per candidate: ``S = (pixel - median5) / noise``, where ``median5`` is the
   median of its 5x5 box (the local level without the ray: a ray covers fewer than half of its
   pixels) and the noise model is ``sigma_sky**2 + max(median5 - sky, 0) / gain``, the sky
   level and sigma measured robustly on the frame. With no gain known, the sky's noise is taken
   as all Poisson (``gain = sky / sigma_sky**2``), which overestimates a star's noise: the
   cautious side.
3. *Fine structure*: a star is smooth, so the median of its 3x3 box, and the lower mean of
   the pixel's two pairs of direct neighbours (left-right, up-down; this one for a star centred
   on a pixel corner), stand well above the 5x5 median (``F``), while a ray leaves both at the
   background (a track lies along one pair at most). A pixel is a ray only where its Laplacian
   (the pixel minus the mean of its 4 direct neighbours) exceeds ``objlim * max(F, noise)``:
   about 1 for a star core of any brightness at FWHM >= 2 px.
4. *Grow*, twice: the 8 neighbours of a ray pixel are rays too when they pass both tests at
   ``sigfrac`` times the thresholds, the ray pixels counting as their local median (the faint
   ends of tracks and charge shared with the next pixel, not the wings of a star beside a ray).

On a 2k frame this costs two 3x3 filters over the frame and a few medians per candidate
(tens of ms), against seconds for astroscrappy's full-frame median filters. `detect_lacosmic`
runs astroscrappy (an optional dependency) for those who want the reference implementation.

Pure numerics: arrays in, a new boolean mask out; the input is never modified.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from ccdwatch import calib

logger = logging.getLogger(__name__)

__all__ = ["BAD_COSMIC", "BAD_HOT", "METHODS", "CosmicRayResult", "bad_pixel_plane", "detect", "detect_lacosmic",
           "find", "lacosmic_available"]

#: ``calibration.cosmic_rays`` values.
METHODS = ("fast", "lacosmic", "off")

#: Bits of a calibrated light's BADPIX plane (BANZAI's values): a bad (hot) pixel, a cosmic ray.
#: Any non-zero value keeps the pixel out of stacks.
BAD_HOT = 1
BAD_COSMIC = 8

_NEIGHBOURS_8 = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32) / 8.0


@dataclass(frozen=True)
class CosmicRayResult:
    """Cosmic rays found on a frame.

    Attributes
    ----------
    mask : ndarray of bool
        The ray pixels (pixels already masked on input are never among them).
    hits : int
        Number of hits: groups of 8-connected ray pixels.
    """

    mask: np.ndarray

    @property
    def pixels(self) -> int:
        """Number of ray pixels."""
        return int(np.count_nonzero(self.mask))

    @property
    def hits(self) -> int:
        if not self.mask.any():
            return 0
        n, _ = cv2.connectedComponents(self.mask.view(np.uint8), connectivity=8)
        return int(n) - 1


def find(data: np.ndarray, method: str, *, mask: np.ndarray | None = None,
         gain: float | None = None) -> CosmicRayResult | None:
    """The cosmic rays of ``data`` by ``method`` (one of `METHODS`); None for ``"off"``."""
    if method == "off":
        return None
    if method == "fast":
        return CosmicRayResult(detect(data, mask=mask, gain=gain))
    if method == "lacosmic":
        return CosmicRayResult(detect_lacosmic(data, mask=mask, gain=gain))
    raise ValueError(f"unknown cosmic-ray method {method!r}; use one of {', '.join(METHODS)}")


def bad_pixel_plane(hot: np.ndarray | None, rays: np.ndarray | None) -> np.ndarray | None:
    """A calibrated light's BADPIX plane (uint8): `BAD_HOT` on hot pixels, `BAD_COSMIC` on cosmic
    rays, both bits where both; None when neither map is known."""
    if hot is None and rays is None:
        return None
    known = [m for m in (hot, rays) if m is not None]
    plane = np.zeros(np.shape(known[0]), dtype=np.uint8)
    if hot is not None:
        plane[np.asarray(hot, dtype=bool)] |= BAD_HOT
    if rays is not None:
        plane[np.asarray(rays, dtype=bool)] |= BAD_COSMIC
    return plane


def _sky(work: np.ndarray) -> tuple[float, float]:
    """Sky level and sigma of a frame (robust, on a regular subsample of ~64k pixels); sigma > 0."""
    step = max(1, int(math.sqrt(work.size / 65536)))
    level, sigma = calib.robust_stats(work[::step, ::step])
    if not math.isfinite(level):
        return 0.0, 1.0
    if not math.isfinite(sigma) or sigma <= 0:
        sigma = max(abs(level) * 1e-3, 1e-6)
    return level, sigma


def _candidates(work: np.ndarray, sky: float, sigma: float, gain: float, prefilter: float,
                usable: np.ndarray | None) -> np.ndarray:
    """Flat indices (sorted) of the pixels worth testing: those standing ``prefilter`` times
    their noise (the sky's plus their own Poisson noise above it) above the mean of their 8
    neighbours."""
    sharp = cv2.filter2D(work, -1, _NEIGHBOURS_8, borderType=cv2.BORDER_REFLECT)
    np.subtract(work, sharp, out=sharp)
    seeds = sharp > np.float32(prefilter * sigma)
    if usable is not None:
        seeds &= usable
    flat = np.flatnonzero(seeds)
    excess = sharp.ravel()[flat]
    del sharp
    level = np.maximum(work.ravel()[flat] - np.float32(sky), 0)
    keep = excess * excess > np.float32(prefilter**2) * (np.float32(sigma**2) + level / np.float32(gain))
    return flat[keep]


def _box(work: np.ndarray, y: np.ndarray, x: np.ndarray, half: int) -> np.ndarray:
    """(n, (2 half + 1)**2) values of the box around each (y, x), edges repeated."""
    ny, nx = work.shape
    d = np.arange(-half, half + 1)
    yy = np.clip(y[:, None, None] + d[None, :, None], 0, ny - 1)
    xx = np.clip(x[:, None, None] + d[None, None, :], 0, nx - 1)
    return work[yy, xx].reshape(len(y), (2 * half + 1) ** 2)


def _median(values: np.ndarray) -> np.ndarray:
    """Median of each row of an odd number of values."""
    k = values.shape[1] // 2
    return np.partition(values, k, axis=1)[:, k]


def detect(
    data: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    gain: float | None = None,
    sigclip: float = 5.0,
    sigfrac: float = 0.5,
    objlim: float = 5.0,
    prefilter: float = 3.0,
) -> np.ndarray:
    """Cosmic-ray pixels of a calibrated frame (the fast single pass described in the module).

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Calibrated frame, ADU (or electrons with ``gain=1``); NaN marks missing pixels. Not modified.
    mask : ndarray of bool, optional
        Pixels already known bad (hot, saturated): never reported, nor their 8 neighbours (the
        rim of a saturated star is not linear), though their values are the neighbours'
        surroundings.
    gain : float, optional
        e-/ADU of ``data``, for the Poisson noise of pixels above the sky; None: from the sky.
    sigclip : float
        Significance (sigma of the noise model) above the local 5x5 median of a ray pixel.
    sigfrac : float
        A ray's neighbour needs ``sigfrac * sigclip``.
    objlim : float
        Least ratio of a ray pixel's excess to the fine structure (``median3 - median5``) around it.
    prefilter : float
        Candidates stand this many sky sigmas above the mean of their 8 neighbours (a ray of
        ``sigclip`` sigma does: keep ``prefilter <= sigclip * 0.6``).

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    if np.ndim(data) != 2:
        raise ValueError(f"expected a 2-D image, got shape {np.shape(data)}")
    work = np.asarray(data, dtype=np.float32)
    missing = ~np.isfinite(work)
    sky, sigma = _sky(work)
    if missing.any():
        work = np.where(missing, np.float32(sky), work)
    usable = ~missing if mask is None else ~(missing | np.asarray(mask, dtype=bool))
    g = gain if gain and gain > 0 else max(sky, sigma**2) / sigma**2
    seeds = _candidates(work, sky, sigma, g, prefilter, usable if (mask is not None or missing.any()) else None)
    out = np.zeros(work.shape, dtype=bool)
    significance, shape = _tests(work, seeds, sky, sigma, g)
    found = seeds[_clear(usable, seeds) & (significance > sigclip) & (shape > objlim)]
    # grow twice: a track's faint pixels (more would creep into the wings of a star beside a ray)
    for _ in range(2):
        out.ravel()[found] = True
        near = _neighbours(found, work.shape)
        near = near[~out.ravel()[near]]
        near = near[_clear(usable, near)]
        if near.size == 0:
            break
        significance, shape = _tests(work, near, sky, sigma, g, flagged=out)
        found = near[(significance > sigfrac * sigclip) & (shape > sigfrac * objlim)]
    out.ravel()[found] = True
    return out


def _tests(work: np.ndarray, flat: np.ndarray, sky: float, sigma: float, gain: float,
           flagged: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """At each pixel (flat index): its significance above the 5x5 median, and its Laplacian
    over the fine structure (see the module); ``flagged`` pixels (rays found) count as the
    median there, so that a ray's neighbour is judged against its other surroundings."""
    y, x = np.divmod(flat, work.shape[1])
    box = _box(work, y, x, 2)
    med5 = _median(box)
    if flagged is not None:
        box = np.where(_box(flagged, y, x, 2), med5[:, None], box)
    box = box.reshape(-1, 5, 5)
    med3 = _median(box[:, 1:4, 1:4].reshape(-1, 9))  # the 3x3 box is the centre of the 5x5 one
    # the discrete Laplacian (/ -4): the pixel above the mean of its 4 direct neighbours
    sharp = box[:, 2, 2] - (box[:, 2, 1] + box[:, 2, 3] + box[:, 1, 2] + box[:, 3, 2]) / 4
    # a star's smooth core: its 3x3 median, or (a star centred on a pixel corner, 4 bright pixels)
    # the lower of the pixel's two pairs of direct neighbours (row, column), stand above the 5x5 median
    pairs = np.minimum(box[:, 2, 1] + box[:, 2, 3], box[:, 1, 2] + box[:, 3, 2]) / 2
    fine = np.maximum(med3, pairs) - med5
    noise = np.sqrt(sigma**2 + np.maximum(med5 - sky, 0.0) / gain)
    return (box[:, 2, 2] - med5) / noise, sharp / np.maximum(fine, noise)


def _clear(usable: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Whether each pixel (flat index) and its 8 neighbours are usable: the rim of a saturated
    star (or a hot pixel) is no place to judge sharpness."""
    y, x = np.divmod(flat, usable.shape[1])
    return np.asarray(_box(usable, y, x, 1).all(axis=1))


def _neighbours(flat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The 8 neighbours (and the pixels themselves) of the flat indices ``flat``, sorted, unique."""
    ny, nx = shape
    y, x = np.divmod(flat, nx)
    dy, dx = np.mgrid[-1:2, -1:2]
    yy, xx = y[:, None] + dy.ravel(), x[:, None] + dx.ravel()
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    return np.unique(yy[inside] * nx + xx[inside])


def lacosmic_available() -> bool:
    """Whether astroscrappy (L.A.Cosmic) can be imported."""
    import importlib.util

    return importlib.util.find_spec("astroscrappy") is not None


def detect_lacosmic(data: np.ndarray, *, mask: np.ndarray | None = None, gain: float | None = None,
                    sigclip: float = 4.5, objlim: float = 5.0) -> np.ndarray:
    """Cosmic-ray pixels by L.A.Cosmic (astroscrappy, the code ccdproc's ``cosmicray_lacosmic``
    runs); seconds per 2k frame. The sky's noise sets the read noise when ``gain`` is unknown."""
    try:
        import astroscrappy  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - config.py refuses "lacosmic" without it
        raise RuntimeError("calibration.cosmic_rays = 'lacosmic' needs astroscrappy: "
                           "pip install astroscrappy, or use 'fast'") from None
    work = np.asarray(data, dtype=np.float32)
    missing = ~np.isfinite(work)
    sky, sigma = _sky(work)
    work = np.where(missing, np.float32(sky), work)
    g = gain if gain and gain > 0 else max(sky, sigma**2) / sigma**2
    readnoise = math.sqrt(max(sigma**2 - max(sky, 0.0) / g, 0.0) * g * g)  # electrons
    bad = missing if mask is None else missing | np.asarray(mask, dtype=bool)
    found, _ = astroscrappy.detect_cosmics(work, inmask=bad, gain=g, readnoise=readnoise, sigclip=sigclip,
                                           objlim=objlim, sepmed=True, cleantype="meanmask", niter=4,
                                           inbkg=None, verbose=False)
    return np.asarray(found, dtype=bool) & ~bad
