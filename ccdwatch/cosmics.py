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
   That pairs test also takes a compact hit (a pair, an L, a 2x2 square: what a binned camera
   with a compact PSF shows) for a star: such a hit is a ray too where it is the maximum of its
   3x3 box and the 8 pixels around its brightest 2x2 square stay at the background, where a
   star of FWHM >= 2 px puts at least a fifth of its core's level (`_compact`).
4. *Grow* along the 8 neighbours until none passes (at most ``grow`` steps): a ray's
   neighbour is a ray too when it passes both tests at ``sigfrac`` times the thresholds, judged
   by its surroundings without the ray: the ray's pixels (and known bad pixels) count as the
   local median in the 5x5 box and are left out of the 3x3 median, the pairs and the Laplacian.
   A track is masked whole (its faint ends, the charge shared with the next pixel, the parts
   between seeds, past a hot pixel), while a star beside a ray keeps its brighter pixels in
   view and stays out.

On a 2k frame this costs two 3x3 filters over the frame and a few medians per candidate
(tens of ms), against seconds for astroscrappy's full-frame median filters. `detect_lacosmic`
runs astroscrappy (an optional dependency) for those who want the reference implementation.

Pure numerics: arrays in, a new boolean mask out; the input is never modified.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
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

#: Fraction of a 2x2 core's level a star spreads at least into the 8 pixels around it (0.27 at FWHM 2
#: px, less a margin; see `_compact`).
RING_MIN = 0.2
#: A compact hit's ring stands this many of its noises below a star's (see `_compact`).
COMPACT_Z = 2.5

#: A pixel less the mean of its 8 neighbours, as one filter (one pass: the neighbours' mean, then a
#: subtraction, took two).
_ABOVE_NEIGHBOURS_8 = np.full((3, 3), -1.0 / 8.0, dtype=np.float32)
_ABOVE_NEIGHBOURS_8[1, 1] = 1.0


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

    @functools.cached_property
    def hits(self) -> int:  # once: the job asks twice
        return _groups(self.mask)


def _groups(mask: np.ndarray) -> int:
    """Number of 8-connected groups of True pixels in ``mask``: a few hundred ray pixels are
    linked among themselves (each to its right and lower neighbours in the set) and labelled by
    the least index of their group, rather than the whole frame labelled."""
    flat = np.flatnonzero(mask)
    n = flat.size
    if n == 0:
        return 0
    nx = mask.shape[1]
    x = flat % nx
    first, second = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        near = flat + dy * nx + dx
        j = np.minimum(np.searchsorted(flat, near), n - 1)
        linked = (flat[j] == near) & (x + dx >= 0) & (x + dx < nx)
        first.append(np.flatnonzero(linked))
        second.append(j[linked])
    a, b = np.concatenate(first), np.concatenate(second)
    label = np.arange(n)
    while True:  # each pixel takes the least label of its links, then of its label's pixel
        new = label.copy()
        least = np.minimum(label[a], label[b])
        np.minimum.at(new, a, least)
        np.minimum.at(new, b, least)
        new = new[new]
        if np.array_equal(new, label):
            return int(np.count_nonzero(label == np.arange(n)))
        label = new


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
    for mask, bit in ((hot, BAD_HOT), (rays, BAD_COSMIC)):
        if mask is not None:  # a masked OR: no boolean indexing (~7x faster at 2k)
            np.bitwise_or(plane, np.uint8(bit), out=plane, where=np.asarray(mask, dtype=bool))
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
    sharp = cv2.filter2D(work, -1, _ABOVE_NEIGHBOURS_8, borderType=cv2.BORDER_REFLECT)
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
    inner = (y >= half) & (y < ny - half) & (x >= half) & (x < nx - half)
    if not work.flags.c_contiguous or not inner.any():
        return _clipped_box(work, y, x, d)
    # boxes clear of the edges: one gather of the flat frame at fixed offsets
    out = np.empty((len(y), d.size**2), dtype=work.dtype)
    out[inner] = work.ravel()[(y[inner] * nx + x[inner])[:, None] + (d[:, None] * nx + d[None, :]).ravel()]
    if not inner.all():
        out[~inner] = _clipped_box(work, y[~inner], x[~inner], d)
    return out


def _clipped_box(work: np.ndarray, y: np.ndarray, x: np.ndarray, d: np.ndarray) -> np.ndarray:
    ny, nx = work.shape
    yy = np.clip(y[:, None, None] + d[None, :, None], 0, ny - 1)
    xx = np.clip(x[:, None, None] + d[None, None, :], 0, nx - 1)
    return work[yy, xx].reshape(len(y), d.size**2)


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
    grow: int = 10,
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
    grow : int
        At most this many steps of growth into the 8 neighbours (a track's pixels between seeds).

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    if np.ndim(data) != 2:
        raise ValueError(f"expected a 2-D image, got shape {np.shape(data)}")
    work = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(work)
    sky, sigma = _sky(work)
    missing = not finite.all()
    if missing:
        work = np.where(finite, work, np.float32(sky))
    # finite and not masked, in one pass: for booleans a > b is a & ~b
    usable = finite if mask is None else np.greater(finite, np.asarray(mask, dtype=bool))
    g = gain if gain and gain > 0 else max(sky, sigma**2) / sigma**2
    seeds = _candidates(work, sky, sigma, g, prefilter, usable if (mask is not None or missing) else None)
    out = np.zeros(work.shape, dtype=bool)
    significance, shape, box, noise = _tests(work, seeds, sky, sigma, g)
    strong = _clear(usable, seeds) & (significance > sigclip)
    compact = strong & (shape <= objlim)  # a star, or a hit of 2-4 pixels (`_compact` tells them apart)
    compact[compact] = _compact(box[compact], noise[compact]) > COMPACT_Z
    found = seeds[strong & ((shape > objlim) | compact)]
    del box, noise
    # grow along 8-connected neighbours until none passes (a track's faint and its unseeded
    # pixels); a known bad pixel beside one counts as a ray there, not as a reason to stop
    flagged = ~usable  # the rays found so far and the known bad pixels
    for _ in range(grow):
        out.ravel()[found] = True
        flagged.ravel()[found] = True
        near = _neighbours(found, work.shape)
        near = near[~out.ravel()[near] & usable.ravel()[near]]
        if near.size == 0:
            break
        significance, shape = _grow_tests(work, near, sky, sigma, g, flagged)
        found = near[(significance > sigfrac * sigclip) & (shape > sigfrac * objlim)]
    out.ravel()[found] = True
    return out


def _tests(work: np.ndarray, flat: np.ndarray, sky: float, sigma: float,
           gain: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """At each pixel (flat index): its significance above the 5x5 median, and its Laplacian
    over the fine structure (see the module). Also returns the 5x5 boxes (n, 5, 5) and each
    pixel's noise, for `_compact`."""
    y, x = np.divmod(flat, work.shape[1])
    box = _box(work, y, x, 2)
    med5 = _median(box)
    box = box.reshape(-1, 5, 5)
    med3 = _median(box[:, 1:4, 1:4].reshape(-1, 9))  # the 3x3 box is the centre of the 5x5 one
    # the discrete Laplacian (/ -4): the pixel above the mean of its 4 direct neighbours
    sharp = box[:, 2, 2] - (box[:, 2, 1] + box[:, 2, 3] + box[:, 1, 2] + box[:, 3, 2]) / 4
    # a star's smooth core: its 3x3 median, or (a star centred on a pixel corner, 4 bright pixels)
    # the lower of the pixel's two pairs of direct neighbours (row, column), stand above the 5x5 median
    pairs = np.minimum(box[:, 2, 1] + box[:, 2, 3], box[:, 1, 2] + box[:, 3, 2]) / 2
    fine = np.maximum(med3, pairs) - med5
    noise = np.sqrt(sigma**2 + np.maximum(med5 - sky, 0.0) / gain)
    return (box[:, 2, 2] - med5) / noise, sharp / np.maximum(fine, noise), box, noise


def _grow_tests(work: np.ndarray, flat: np.ndarray, sky: float, sigma: float, gain: float,
                flagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_tests` for a ray's neighbours, judged by their unflagged surroundings: ``flagged``
    pixels (rays found, known bad pixels) count as the median in the 5x5 box and are left out of
    the 3x3 median, the pairs and the Laplacian. A track's next pixel then stands above the
    background beside it, while a star's pixel beside a ray keeps the star's brighter pixels in
    view. (Counting the flagged pixels as the median there too, as a first growth step may,
    makes each pixel of such a star look sharp in turn: grown until done, it eats the star.)"""
    y, x = np.divmod(flat, work.shape[1])
    box = _box(work, y, x, 2)
    gone = _box(flagged, y, x, 2)
    filled = np.where(gone, _median(box)[:, None], box)
    med5 = _median(filled)
    noise = np.sqrt(sigma**2 + np.maximum(med5 - sky, 0.0) / gain)
    box = np.where(gone, np.float32(np.nan), box).reshape(-1, 5, 5)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: the median stands in below
        med3 = np.nanmedian(box[:, 1:4, 1:4].reshape(-1, 9), axis=1)
        around = np.nanmean(np.stack([box[:, 2, 1], box[:, 2, 3], box[:, 1, 2], box[:, 3, 2]], axis=1), axis=1)
        pairs = np.fmin(np.nanmean(np.stack([box[:, 2, 1], box[:, 2, 3]], axis=1), axis=1),
                        np.nanmean(np.stack([box[:, 1, 2], box[:, 3, 2]], axis=1), axis=1))
    around = np.where(np.isnan(around), med5, around)
    fine = np.fmax(np.fmax(med3, pairs), med5) - med5
    return (box[:, 2, 2] - med5) / noise, (box[:, 2, 2] - around) / np.maximum(fine, noise)


def _compact(box: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """How far (in its noise) the ring around a local maximum's 2x2 group stays below what a star
    would put there: ``(RING_MIN * (square - border) - (ring - border)) / noise``, the square
    being the brightest 2x2 one holding the pixel (its mean), the ring the 8 pixels sharing an
    edge with it (their mean), the border the median of the 16 pixels around the 3x3 box (the
    local level, raised less than the 5x5 median by a bright neighbour); -inf where the pixel is
    not the maximum of its 3x3 box.

    A compact hit (a pair, an L, a 2x2 square) has its whole charge inside the square and leaves
    the ring at the background, while a star spreads at least 0.27 of its core's level into that
    ring at FWHM 2 px (near a pixel corner, the worst case; 0.39 at 2.7 px), which the pairs test
    of `_tests` must take for a star."""
    best = np.full(len(box), -np.inf, dtype=np.float32)
    ring = np.zeros(len(box), dtype=np.float32)
    for a in (1, 2):
        for b in (1, 2):
            total = box[:, a, b] + box[:, a, b + 1] + box[:, a + 1, b] + box[:, a + 1, b + 1]
            around = (box[:, a - 1, b] + box[:, a - 1, b + 1] + box[:, a + 2, b] + box[:, a + 2, b + 1]
                      + box[:, a, b - 1] + box[:, a + 1, b - 1] + box[:, a, b + 2] + box[:, a + 1, b + 2])
            better = total > best
            best = np.where(better, total, best)
            ring = np.where(better, around, ring)
    border = np.median(np.concatenate([box[:, 0], box[:, 4], box[:, 1:4, 0], box[:, 1:4, 4]], axis=1), axis=1)
    peak = box[:, 2, 2] >= box[:, 1:4, 1:4].reshape(-1, 9).max(axis=1)
    # noise of the difference in pixel noises: ring (8), square (4), border (median of 16, times 1 - RING_MIN)
    spread = np.float32(math.sqrt(1 / 8 + RING_MIN**2 / 4 + (1 - RING_MIN) ** 2 * 1.57 / 16))
    z = (RING_MIN * (best / 4 - border) - (ring / 8 - border)) / (spread * noise)
    return np.where(peak, z, -np.inf)


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
