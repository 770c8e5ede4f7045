"""One frame's quality: source detection, seeing, sky and saturation metrics.

Pure numerics: arrays in, new values out; the input image is never modified.

Source detection uses `sep` (the SExtractor library, already a dependency of astroalign) on a
float32 copy of the frame, less a background map: on frames of at least ``_SUBSAMPLE_MIN_MESHES``
meshes a side from a subsample of each mesh's pixels (`ccdwatch.qa.background`, a third of sep's
time at 2k), on smaller ones sep's own (with few meshes the subsample's level is too noisy under a
large star: a 128x192 light in 7 px seeing measured FWHM 8.06 px). Frames of at least
``_BINNED_MIN_SIZE`` pixels a side are detected on their 2 x 2-binned image (`_detect_binned`,
`ccdwatch.qa.binned`: a quarter of the pixels for the background and ``sep.extract``), and measured
at full resolution as the others. The per-star FWHM is twice the half-light radius
(``sep.flux_radius`` with ``frac=0.5``), which for a Gaussian PSF equals its FWHM and, unlike the
isophotal second moments, does not shrink for faint stars. The elongation is ``a/b`` of the
isophotal second moments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import sep

from ccdwatch import calib
from ccdwatch.qa import binned
from ccdwatch.qa.background import MESH, Background, background_levels, subtract_background, subtract_map

# The logger keeps the name it had when quality control was one module.
logger = logging.getLogger("ccdwatch.qa")

__all__ = ["FrameQuality", "Sources", "measure"]

#: sep object flags that make a source unfit for PSF statistics (blended, cut by the image edge).
_BAD_OBJECT_FLAGS = sep.OBJ_MERGED | sep.OBJ_TRUNC
#: Sources whose FWHM is below this fraction of the frame median are cosmic rays or hot pixels.
_SHARP_FRACTION = 0.5
#: Detections whose 8 neighbours hold less than this fraction of the peak (on average) are not
#: used to define the frame's typical star (a Gaussian of FWHM 1.3 px gives 0.15, 3 px 0.6).
_STAR_CONTRAST_MIN = 0.15
#: Dilation (px) of the segmentation map before the sky is measured on what is left.
_SKY_MASK_GROW = 3
#: About this many sky pixels (a regular subgrid) give the sky level and noise.
_SKY_SAMPLES = 110_000
#: Stars at least this many times the sky noise at their peak are "bright" for the FWHM median.
_BRIGHT_PEAK_SNR = 20.0
#: Frames with at least this many background meshes along each axis get the subsampled map.
_SUBSAMPLE_MIN_MESHES = 8
#: Frames at least this many pixels a side are detected on their 2 x 2-binned image (`_detect_binned`).
_BINNED_MIN_SIZE = 1024
#: sep's minimum area of a detection on the binned image, binned pixels (5 full-resolution ones, as
#: `_detect`: with 5 binned ones a 2k frame in 1.6 px seeing lost 35 of its 186 stars).
_BINNED_MINAREA = 2
#: Sampling step of the background inside a 32 px mesh of the binned image: 10 x 10 means of 4 pixels
#: (as many pixels as the 21 x 21 of a full-resolution mesh, at a quarter of the sorting).
_BINNED_STEP = 3
#: The first of the two centroid/FWHM passes measures this many of the brightest star-like detections.
_FIRST_PASS_STARS = 40
#: Sub-pixel sampling of the window's edge pixels in ``sep.winpos`` (sep's default is 11: 2.8x the time
#: for centroids that differ by < 0.002 px, 1/40 of their error on a bright star).
_WINPOS_SUBPIX = 5
#: Sub-pixel sampling of the edge pixels of the half-light aperture in ``sep.flux_radius`` (sep's
#: default 5: ~40 % more time for a median FWHM that differs by 0.2-0.5 %, both within 0.6 % of the
#: truth at FWHM 1.6-6 px, `benchmarks.qa`).
_FLUX_RADIUS_SUBPIX = 3
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class Sources:
    """Sources detected on one frame, sorted by flux, brightest first.

    Attributes
    ----------
    x, y : ndarray of float64
        Centroids in pixels, 0-based, the centre of the first pixel at (0, 0) (numpy and
        `sep` convention). Windowed (``sep.winpos``) where that converged, else isophotal.
    flux : ndarray of float64
        Background-subtracted flux in a circular aperture of radius ``1.5 * FWHM`` of the
        frame (ADU, or whatever unit the image is in).
    fwhm : ndarray of float64
        Per-source FWHM in pixels (twice the half-light radius).
    elongation : ndarray of float64
        Ratio ``a/b`` of the isophotal second-moment axes (1 for a round star).
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    fwhm: np.ndarray
    elongation: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)

    @property
    def xy(self) -> np.ndarray:
        """Positions as an ``(N, 2)`` array of ``(x, y)`` pixels (what astroalign wants)."""
        return np.column_stack([self.x, self.y])

    @classmethod
    def empty(cls) -> Sources:
        """A source list with no sources."""
        z = np.zeros(0, dtype=np.float64)
        return cls(x=z, y=z.copy(), flux=z.copy(), fwhm=z.copy(), elongation=z.copy())


@dataclass(frozen=True)
class FrameQuality:
    """Quality metrics of one frame.

    Attributes
    ----------
    n_stars : int
        Number of star-like detections above the threshold (cosmic-ray-like sharp
        detections are not counted; the count is not capped by ``max_sources``).
    fwhm : float
        Median FWHM of the good stars (unsaturated, unblended, away from the edges), pixels.
        NaN when there is no good star.
    elongation : float
        Median ``a/b`` of the same stars (1 = round). NaN when there is no good star.
    sky : float
        Median sky level with the sources masked, image units (ADU).
    sky_noise : float
        Robust (MAD-based) standard deviation of the sky, image units.
    saturated_fraction : float
        Fraction of the valid pixels at or above the saturation level (0 when no level given).
    """

    n_stars: int
    fwhm: float
    elongation: float
    sky: float
    sky_noise: float
    saturated_fraction: float

    def to_json(self) -> dict[str, float | int | None]:
        """Plain dict for JSON/SQL storage (NaN becomes None)."""
        out: dict[str, float | int | None] = {}
        for name in ("n_stars", "fwhm", "elongation", "sky", "sky_noise", "saturated_fraction"):
            v = getattr(self, name)
            out[name] = None if isinstance(v, float) and not math.isfinite(v) else v
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, float | int | None]) -> FrameQuality:
        """Inverse of :meth:`to_json`."""

        def f(key: str) -> float:
            v = d.get(key)
            return float("nan") if v is None else float(v)

        return cls(
            n_stars=int(d["n_stars"] or 0),
            fwhm=f("fwhm"),
            elongation=f("elongation"),
            sky=f("sky"),
            sky_noise=f("sky_noise"),
            saturated_fraction=f("saturated_fraction"),
        )


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """The uint8 ``mask`` dilated to every pixel within ``radius`` steps of the 4-connected cross (a
    diamond): the same as ``radius`` binary dilations by the cross (``scipy.ndimage.binary_dilation``
    with ``iterations=radius``), in one pass of OpenCV's."""
    d = np.abs(np.arange(2 * radius + 1) - radius)
    kernel = (np.add.outer(d, d) <= radius).astype(np.uint8)
    return cv2.dilate(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def _run_sep_extract(
    data: np.ndarray, thresh: float, *, err: np.ndarray | float, mask: np.ndarray, minarea: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """``sep.extract``, retried with larger internal buffers when a frame overflows them.

    sep's pixel stack (300,000 pixels above threshold by default) is too small for a frame full
    of nebulosity. It is allocated on every call, so it is raised only for this frame (a stack the
    size of a large frame is costly on every call), doubling, at least to the frame's size and at
    most to twice it; a frame that still overflows then fails with sep's own message.
    """
    def extract(**kw: float) -> tuple[np.ndarray, np.ndarray]:
        return sep.extract(data, thresh, err=err, mask=mask, minarea=minarea, segmentation_map=True, **kw)

    default = pixstack = sep.get_extract_pixstack()
    try:
        while True:
            try:
                return extract()
            except Exception as exc:  # sep raises plain Exception for its buffer overflows
                message = str(exc)
                if "pixel buffer full" in message and pixstack < 2 * data.size:
                    pixstack = int(min(max(data.size, 2 * pixstack), 2 * data.size))
                    sep.set_extract_pixstack(pixstack)
                    continue
                if "deblending overflow" not in message:
                    raise
                logger.debug("sep deblending overflow; retrying without deblending")
                return extract(deblend_cont=1.0)
    finally:
        if pixstack != default:
            sep.set_extract_pixstack(default)


def _fwhm_from_flux_radius(
    sub: np.ndarray, x: np.ndarray, y: np.ndarray, rmax: float, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    r50, flag = sep.flux_radius(sub, x, y, np.full(x.size, rmax), 0.5, mask=mask, subpix=_FLUX_RADIUS_SUBPIX)
    fwhm = 2.0 * np.asarray(r50, dtype=np.float64)
    # The sub-pixel aperture spreads each pixel's value uniformly over its square, which
    # widens the measured profile by a box of 1 px (variance 1/12 px^2 per axis); remove
    # that measurement artefact (the detector's own pixel integration stays in).
    fwhm = np.sqrt(np.clip(fwhm**2 - _FWHM_PER_SIGMA**2 / 12.0, 0.0, None))
    return fwhm, np.asarray(flag)


def _neighbour_contrast(sub: np.ndarray, xpeak: np.ndarray, ypeak: np.ndarray) -> np.ndarray:
    """Mean of the 8 pixels around each peak pixel divided by the peak (background-subtracted).

    About 0.6 for a star of FWHM 3 px, 0.2 for a badly undersampled one (FWHM 1.5 px), near 0
    for a hot pixel or a single-pixel cosmic-ray hit.
    """
    ny, nx = sub.shape
    xp = np.clip(np.asarray(xpeak, dtype=np.intp), 0, nx - 1)
    yp = np.clip(np.asarray(ypeak, dtype=np.intp), 0, ny - 1)
    peak = sub[yp, xp].astype(np.float64)
    around = np.zeros(peak.shape)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx or dy:  # neighbours outside the frame count as 0 (no padded copy of the frame)
                y, x = yp + dy, xp + dx
                inside = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
                around[inside] += sub[y[inside], x[inside]]
    with np.errstate(divide="ignore", invalid="ignore"):
        contrast = np.where(peak > 0, around / 8.0 / peak, 0.0)
    return contrast


def _windowed_centroids(
    sub: np.ndarray, x: np.ndarray, y: np.ndarray, fwhm: float, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``sep.winpos`` centroids; the isophotal ones where it fails or wanders off."""
    sig = np.full(x.size, max(fwhm, 0.5) / _FWHM_PER_SIGMA)
    xw, yw, flag = sep.winpos(sub, x, y, sig, mask=mask, subpix=_WINPOS_SUBPIX)
    converged = (np.asarray(flag) == 0) & np.isfinite(xw) & np.isfinite(yw)
    converged &= np.hypot(xw - x, yw - y) < max(fwhm, 1.0)
    return np.where(converged, xw, x), np.where(converged, yw, y)


def _valid_pixels(data: np.ndarray, mask: np.ndarray | None, *, copy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A float32 copy of ``data`` with the pixels to ignore set to 0, and the map of those pixels
    (not finite, or True in ``mask``). ``copy=False``: ``data`` itself as float32 (converted only if
    it is not), left as it is: a frame detected on its binned image is copied as its background is
    subtracted (`_detect_binned`)."""
    if np.ndim(data) != 2:
        raise ValueError(f"expected a 2-D image, got shape {np.shape(data)}")
    img = np.array(data, dtype=np.float32, order="C", copy=True) if copy else \
        np.asarray(data, dtype=np.float32, order="C")
    bad = ~np.isfinite(img)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != img.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {img.shape}")
        bad |= mask
    if copy:
        img[bad] = 0.0
    return img, bad


def _saturated_pixels(
    img: np.ndarray, bad: np.ndarray, saturation: float | None, n_valid: int
) -> tuple[np.ndarray, float]:
    """Map of the valid pixels at or above ``saturation`` and their fraction of the ``n_valid`` ones."""
    if saturation is None:
        return np.zeros(img.shape, dtype=bool), 0.0
    saturated = (img >= saturation) & ~bad
    return saturated, float(np.count_nonzero(saturated)) / n_valid


def _binned_detection(shape: tuple[int, ...]) -> bool:
    """Whether a frame of ``shape`` is detected on its 2 x 2-binned image (`_detect_binned`)."""
    return len(shape) == 2 and min(shape) >= _BINNED_MIN_SIZE


def _detect(
    img: np.ndarray, bad: np.ndarray, saturated: np.ndarray, detect_sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Background | sep.Background, tuple[slice, slice], np.ndarray,
           np.ndarray]:
    """Subtract the background map from ``img`` (bad pixels 0) and detect its sources.

    Returns the objects (sep's), which of them own a saturated pixel, the map of the sources
    (grown by ``_SKY_MASK_GROW``) on the sky's grid, the background (its global level and rms),
    that regular subgrid of about ``_SKY_SAMPLES`` pixels, ``img`` on it before the subtraction,
    and the subtracted image: ``img`` itself, subtracted in place (`_valid_pixels`' copy), or for
    a frame detected on its binned image a new one, ``img`` (the caller's frame) left as it is.
    """
    step = max(1, math.isqrt(img.size // _SKY_SAMPLES))
    grid = (slice(step // 2, None, step), slice(step // 2, None, step))
    img_on_grid = img[grid].copy()  # for the sky level: before the subtraction
    if _binned_detection(img.shape):
        objects, owners, sources, binned_bkg, sub = _detect_binned(img, bad, saturated, detect_sigma, grid)
        return objects, owners, sources, binned_bkg, grid, img_on_grid, sub
    # background map (64 px meshes) with saturated pixels kept out of the estimate
    bkg: Background | sep.Background
    if min(img.shape) >= _SUBSAMPLE_MIN_MESHES * MESH:
        bkg = subtract_background(img, bad | saturated)  # from a subsample of each mesh
    else:
        bkg = sep.Background(img, mask=bad | saturated)
        bkg.subfrom(img)  # in place: no background map and no second frame-sized array
    img[bad] = 0.0
    # Detection against the global background rms: a calibrated frame's noise is nearly uniform,
    # and the per-pixel rms map doubled sep's time. sep's global rms is the mean over meshes, so
    # meshes on a bright galaxy raise it a little: on the real M51 frames ~70 instead of ~130 of
    # the faintest sources pass, FWHM agrees to 1 %, and all 18 frames still align.
    objects, segmap = _run_sep_extract(img, detect_sigma, err=float(bkg.globalrms), mask=bad)
    sources = _grow((segmap > 0).view(np.uint8), _SKY_MASK_GROW)[grid] > 0
    return objects, _saturated_owners(segmap, saturated, objects.size), sources, bkg, grid, img_on_grid, img


def _detect_binned(
    img: np.ndarray, bad: np.ndarray, saturated: np.ndarray, detect_sigma: float, grid: tuple[slice, slice]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Background, np.ndarray]:
    """`_detect` on the 2 x 2-binned frame (`ccdwatch.qa.binned`); the background-subtracted frame
    (``bad`` pixels 0) is a new array, the last value returned: ``img`` is the caller's frame,
    whatever its ``bad`` pixels hold (NaN, a hot pixel's value), and is not changed. A binned pixel
    holding a bad one sets no background level and is 0 before sep sees it, as in `_detect`, so
    those values change nothing; the subtraction writes the copy (one pass where a copy with the
    bad pixels zeroed, then a subtraction in place, took two; 2026-12-01).

    The background levels come from the binned frame (meshes of the same 64 full-resolution pixels,
    `_BINNED_STEP`) and are subtracted from both; sep extracts from the binned one against its own
    rms with a minimum area of `_BINNED_MINAREA` binned pixels (5 full-resolution ones, as
    `_detect`). The objects, which of them own a saturated pixel and the grown source map come back
    in full-resolution pixels; the rms returned is a pixel's (twice the binned one: white noise).
    """
    small = binned.bin2(img)
    any_bad = bool(bad.any())
    small_bad = binned.block_any(bad) if any_bad else np.zeros(small.shape, dtype=bool)
    ignore = small_bad | binned.block_any(saturated) if saturated.any() else small_bad
    level, bkg = background_levels(small, ignore, mesh=MESH // 2, step=_BINNED_STEP)
    sub = np.empty_like(img)
    subtract_map(img, level, MESH, out=sub)
    subtract_map(small, level, MESH // 2)
    if any_bad:
        sub[bad] = 0.0
        small[small_bad] = 0.0
    objects, segmap = _run_sep_extract(small, detect_sigma, err=float(bkg.globalrms), mask=small_bad,
                                       minarea=_BINNED_MINAREA)
    owners = binned.owners_of(segmap, saturated, objects.size)
    rms = 2.0 * bkg.globalrms
    # sep's isophote at full resolution: the 3 x 3-smoothed pixels above the threshold
    objects, isophote = binned.to_full_resolution(objects, segmap, sub, detect_sigma * rms)
    sources = binned.grown_on_grid(isophote, grid, sub.shape, _SKY_MASK_GROW)
    return objects, owners, sources, Background(bkg.globalback, rms), sub


def _sky_level(
    sub: np.ndarray,
    img_on_grid: np.ndarray,
    grid: tuple[slice, slice],
    sources_on_grid: np.ndarray,
    bad: np.ndarray,
    saturated: np.ndarray,
    bkg: Background | sep.Background,
) -> tuple[float, float]:
    """Sky level (of the frame before subtraction) and sky noise, image units.

    From the valid, unsaturated pixels that belong to no source (grown by a few pixels), on a
    regular subgrid of about _SKY_SAMPLES pixels (every 6th pixel of every 6th row at 2k): their
    median is good to ~0.004 sigma and their MAD to ~0.4 %, and sorting more (every pixel of a large
    frame, or the 260,000 of before: about twice the time) buys nothing the catalogue needs. A
    crowded or tiny frame with fewer than 100 such pixels gets sep's global values.
    """
    sky_pixels = ~(sources_on_grid | bad[grid] | saturated[grid])
    if np.count_nonzero(sky_pixels) < 100:  # crowded or tiny frame: use sep's global values
        return float(bkg.globalback), float(bkg.globalrms)
    sky = calib.robust_median(img_on_grid[sky_pixels])  # its spread is not needed: the median alone
    _, sky_noise = calib.robust_stats(sub[grid][sky_pixels])
    return float(sky), float(sky_noise)


def _saturated_owners(segmap: np.ndarray, saturated: np.ndarray, n: int) -> np.ndarray:
    """Which of the ``n`` objects own a saturated pixel (the segmentation map holds index + 1)."""
    is_saturated = np.zeros(n, dtype=bool)
    if saturated.any():
        owners = np.unique(segmap[saturated])
        is_saturated[owners[owners > 0] - 1] = True
    return is_saturated


def _star_candidates(
    sub: np.ndarray, objects: np.ndarray, is_saturated: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per detection: ``clean`` (unblended, untruncated, no saturated pixel) and ``starlike``
    (clean with light around its peak: what defines the frame's typical star)."""
    n = objects.size
    flags = objects["flag"].astype(np.int64)

    # Hot pixels and cosmic rays have almost no light in the 8 pixels around their peak
    # (contrast ~0; a Gaussian star of FWHM 1.3 px has 0.15, of 3 px 0.6). The frame's typical
    # star is defined by the detections above that floor, so that a frame with more hot pixels
    # than stars (an uncalibrated one) still measures, centroids and counts its stars.
    clean = ((flags & _BAD_OBJECT_FLAGS) == 0) & ~is_saturated
    contrast = _neighbour_contrast(sub, objects["xpeak"], objects["ypeak"])
    starlike = clean & (contrast >= _STAR_CONTRAST_MIN)
    if not starlike.any():
        starlike = clean if clean.any() else np.ones(n, dtype=bool)
    return clean, starlike


def _centroids_and_fwhm(
    sub: np.ndarray, objects: np.ndarray, a: np.ndarray, b: np.ndarray, starlike: np.ndarray, bad: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Centroids ``x, y``, per-detection FWHM, the half-light aperture radius ``rmax`` and the
    frame's PSF FWHM (all pixels) of the detections, ``a`` and ``b`` their second-moment axes.

    Two passes: windowed centroids (like SExtractor's XWIN) with the current PSF size, then
    the half-light radius around them within about 2 FWHM; the first PSF size comes from
    the isophotal second moments (which underestimate it for faint stars). The first pass only
    sets the PSF size for the second: it measures the ``_FIRST_PASS_STARS`` brightest star-like
    detections, the second every detection.
    """
    x0 = objects["x"].astype(np.float64)
    y0 = objects["y"].astype(np.float64)
    guess = float(np.median(_FWHM_PER_SIGMA * np.sqrt(a * b)[starlike]))
    psf_fwhm = max(guess, 1.0)
    rmax = max(2.5 * guess, 4.0)
    first = np.flatnonzero(starlike)
    first = first[np.argsort(-objects["flux"][first], kind="stable")[:_FIRST_PASS_STARS]]
    for pick in (first, np.arange(objects.size)):
        x, y = _windowed_centroids(sub, x0[pick], y0[pick], psf_fwhm, bad)
        fwhm, rflag = _fwhm_from_flux_radius(sub, x, y, rmax, bad)
        ok = starlike[pick] & ((rflag & sep.APER_TRUNC) == 0) & np.isfinite(fwhm)
        if ok.any():
            psf_fwhm = float(np.median(fwhm[ok]))
            rmax = max(2.0 * psf_fwhm, 4.0)
    return x, y, fwhm, rmax, psf_fwhm


def _sharp_detections(
    sub: np.ndarray, x: np.ndarray, y: np.ndarray, fwhm: np.ndarray, good: np.ndarray, starlike: np.ndarray
) -> np.ndarray:
    """Detections much sharper than the typical star: cosmic rays and hot pixels.

    Sharp = much sharper than the typical star by half-light radius or by contrast (the
    contrast is robust to a neighbouring star inside the flux_radius aperture). The contrast
    is taken at the windowed centroid: a hot pixel in the wing of a star does not decide,
    while a lone hot pixel stays its own centroid.
    """
    contrast = _neighbour_contrast(sub, np.rint(x), np.rint(y))
    typical = good & starlike
    if not typical.any():
        typical = good
    if not typical.any():
        return np.zeros(x.size, dtype=bool)
    star_fwhm = float(np.median(fwhm[typical]))
    star_contrast = float(np.median(contrast[typical]))
    return (np.isfinite(fwhm) & (fwhm < _SHARP_FRACTION * star_fwhm)) | (
        contrast < _SHARP_FRACTION * star_contrast
    )


def _frame_psf(
    peak: np.ndarray, fwhm: np.ndarray, elongation: np.ndarray, good: np.ndarray, sky_noise: float
) -> tuple[float, float]:
    """Median FWHM (px) and elongation of the bright good stars (of all good ones if fewer than 5
    are bright); NaN when there is no good star."""
    peak_snr = peak.astype(np.float64) / max(sky_noise, 1e-12)
    bright = good & (peak_snr >= _BRIGHT_PEAK_SNR)
    use = bright if np.count_nonzero(bright) >= 5 else good
    if not use.any():
        return float("nan"), float("nan")
    return float(np.median(fwhm[use])), float(np.median(elongation[use]))


def _aperture_sources(
    sub: np.ndarray,
    bad: np.ndarray,
    star: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    fwhm: np.ndarray,
    elongation: np.ndarray,
    *,
    psf_fwhm: float,
    max_sources: int,
) -> Sources:
    """The ``star`` detections with their aperture fluxes, brightest first, at most ``max_sources``.

    The aperture radius is 1.5 ``psf_fwhm`` (99.8 % of a Gaussian star).
    """
    xs, ys = x[star], y[star]
    flux, _, _ = sep.sum_circle(sub, xs, ys, 1.5 * psf_fwhm, mask=bad, subpix=5)
    flux = np.asarray(flux, dtype=np.float64)
    order = np.argsort(-flux, kind="stable")[:max_sources]
    return Sources(
        x=np.ascontiguousarray(xs[order]),
        y=np.ascontiguousarray(ys[order]),
        flux=np.ascontiguousarray(flux[order]),
        fwhm=np.ascontiguousarray(fwhm[star][order]),
        elongation=np.ascontiguousarray(elongation[star][order]),
    )


def measure(
    data: np.ndarray,
    *,
    saturation: float | None = None,
    detect_sigma: float = 5.0,
    max_sources: int = 500,
    mask: np.ndarray | None = None,
) -> tuple[FrameQuality, Sources]:
    """Detect the sources of a frame and measure its seeing, sky and saturation.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Calibrated (or at least bias-subtracted) image, ADU. NaN marks missing pixels.
        Not modified.
    saturation : float, optional
        Level (image units) at and above which a pixel is saturated. Stars touching such a
        pixel are excluded from the PSF statistics. ``None``: nothing is saturated.
    detect_sigma : float
        Detection threshold in units of the local sky noise (per pixel, after sep's 3x3
        matched filter).
    max_sources : int
        Keep at most this many sources (the brightest) in the returned `Sources`.
    mask : ndarray of bool, optional
        True for pixels to ignore (bad columns, hot pixels), same shape as ``data``.

    Returns
    -------
    quality : FrameQuality
        Frame metrics (FWHM in pixels, sky in ADU).
    sources : Sources
        Star-like detections, brightest first, at most ``max_sources``.
    """
    img, bad = _valid_pixels(data, mask, copy=not _binned_detection(np.shape(data)))
    n_valid = int(img.size - np.count_nonzero(bad))
    if n_valid == 0:
        logger.warning("measure: no valid pixel in the frame")
        nan = float("nan")
        return FrameQuality(0, nan, nan, nan, nan, 0.0), Sources.empty()
    saturated, saturated_fraction = _saturated_pixels(img, bad, saturation, n_valid)
    objects, is_saturated, sources_on_grid, bkg, grid, img_on_grid, sub = _detect(img, bad, saturated, detect_sigma)
    del img  # the caller's frame, or the copy that is now ``sub``
    sky, sky_noise = _sky_level(sub, img_on_grid, grid, sources_on_grid, bad, saturated, bkg)
    if objects.size == 0:
        logger.debug("measure: no source above %.1f sigma", detect_sigma)
        nan = float("nan")
        return FrameQuality(0, nan, nan, sky, sky_noise, saturated_fraction), Sources.empty()

    a = np.maximum(objects["a"].astype(np.float64), 1e-3)
    b = np.maximum(objects["b"].astype(np.float64), 1e-3)
    elongation = a / b
    clean, starlike = _star_candidates(sub, objects, is_saturated)
    x, y, fwhm, rmax, psf_fwhm = _centroids_and_fwhm(sub, objects, a, b, starlike, bad)
    ny, nx = sub.shape
    edge = (x < rmax) | (y < rmax) | (x > nx - 1 - rmax) | (y > ny - 1 - rmax)
    good = clean & ~edge & np.isfinite(fwhm) & (fwhm > 0)
    sharp = _sharp_detections(sub, x, y, fwhm, good, starlike)
    good &= ~sharp
    star = ~sharp
    n_stars = int(np.count_nonzero(star))

    # PSF statistics from the bright good stars, then aperture fluxes with the frame's FWHM.
    frame_fwhm, frame_elong = _frame_psf(objects["peak"], fwhm, elongation, good, sky_noise)
    if math.isfinite(frame_fwhm):
        psf_fwhm = frame_fwhm
    sources = _aperture_sources(sub, bad, star, x, y, fwhm, elongation, psf_fwhm=psf_fwhm, max_sources=max_sources)
    quality = FrameQuality(
        n_stars=n_stars,
        fwhm=frame_fwhm,
        elongation=frame_elong,
        sky=sky,
        sky_noise=sky_noise,
        saturated_fraction=saturated_fraction,
    )
    logger.debug(
        "measure: %d stars (%d sharp rejected), FWHM %.2f px, sky %.1f +- %.1f",
        n_stars,
        int(np.count_nonzero(sharp)),
        frame_fwhm,
        sky,
        sky_noise,
    )
    return quality, sources
