"""The synthetic camera: its detector's fixed pattern and the pixels of one exposure.

The functions are pure: they take a :class:`Camera` (whose fixed-pattern properties are derived
from ``Camera.seed``) and an explicit :class:`numpy.random.Generator` for the per-exposure noise,
and return new arrays.

Signal model of one exposure, in ADU before quantisation::

    raw = bias_pattern + Poisson(gain * (dark_rate * t + response * (sky * t + stars + flat_level))) / gain
          + Normal(0, read_noise) [+ cosmic rays] [+ satellite trail]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ccdwatch.synth.stars import FWHM_PER_SIGMA, Stars, render_stars

__all__ = [
    "DEFAULT_FLAT_LEVEL",
    "KINDS",
    "Camera",
    "CosmicRays",
    "bias_pattern",
    "cfa_channels",
    "cosmic_rays",
    "dark_rate",
    "expose",
    "flat_response",
    "hot_pixels",
    "quantise",
    "with_overscan",
]

KINDS = ("bias", "dark", "flat", "light")

#: Default level of a synthetic flat field in ADU at unit response.
DEFAULT_FLAT_LEVEL = 20000.0


@dataclass(frozen=True)
class Camera:
    """A synthetic CCD camera.

    Parameters
    ----------
    shape : (ny, nx)
        Detector size in pixels.
    bias_level : float
        Mean bias (offset) in ADU.
    read_noise : float
        Read noise in ADU rms.
    gain : float
        Gain in e-/ADU.
    dark_current : float
        Mean dark current of ordinary pixels in ADU/s/pixel.
    hot_pixel_fraction : float
        Fraction of pixels that are hot.
    hot_pixel_rate : float
        Typical dark current of a hot pixel in ADU/s (individual rates are 0.5-1.5 times this).
    vignetting : float
        Fractional illumination drop at the detector corners relative to the centre.
    saturation : float
        Largest value the ADC can output, ADU.
    instrument : str
        INSTRUME header value.
    bayer_pattern : str or None
        A one-shot-colour sensor's colour filter array, as stored (``data[0, 0]`` has colour
        ``bayer_pattern[0]``); None: monochrome.
    channel_response : (float, float, float)
        Relative response of the R, G and B pixels (filter transmission x quantum efficiency).
    seed : int
        Seed of the fixed pattern (bias structure, dark map, flat response, hot pixels): the same
        for every frame taken with this camera.
    """

    shape: tuple[int, int] = (256, 384)
    bias_level: float = 1000.0
    read_noise: float = 8.0
    gain: float = 1.5
    dark_current: float = 0.05
    hot_pixel_fraction: float = 2e-4
    hot_pixel_rate: float = 20.0
    vignetting: float = 0.25
    saturation: float = 65535.0
    instrument: str = "SynthCam 1"
    seed: int = 1234
    bayer_pattern: str | None = None
    channel_response: tuple[float, float, float] = (1.0, 1.0, 1.0)
    header_gain: float | None = None
    """The gain (e-/ADU) its EGAIN card says, when it lies (None: ``gain``, the truth)."""
    overscan: int = 0
    """Columns of overscan read out to the right of the ``shape`` pixels (0: none). The frame
    written is then ``ny x (nx + overscan)``, with BIASSEC/TRIMSEC/DATASEC cards."""


def _pattern_rng(camera: Camera, stream: int) -> np.random.Generator:
    """Generator for one fixed-pattern component of ``camera`` (independent streams)."""
    return np.random.default_rng([int(camera.seed), stream])


def bias_pattern(camera: Camera) -> np.ndarray:
    """Noise-free bias level of every pixel.

    ``bias_level`` plus a fixed column pattern (rms 2 ADU) and a gentle row gradient
    (+-1.5 ADU from bottom to top), as real readout electronics show.

    Returns
    -------
    numpy.ndarray
        float64 array of ``camera.shape``, ADU.
    """
    ny, nx = camera.shape
    rng = _pattern_rng(camera, 1)
    columns = rng.normal(0.0, 2.0, size=nx)
    rows = np.linspace(-1.5, 1.5, ny)
    return camera.bias_level + rows[:, None] + columns[None, :]


def hot_pixels(camera: Camera) -> np.ndarray:
    """Boolean map of the camera's hot pixels (``round(hot_pixel_fraction * npix)`` of them)."""
    ny, nx = camera.shape
    n = round(camera.hot_pixel_fraction * ny * nx)
    rng = _pattern_rng(camera, 2)
    mask = np.zeros(ny * nx, dtype=bool)
    mask[rng.choice(ny * nx, size=n, replace=False)] = True
    return mask.reshape(ny, nx)


def dark_rate(camera: Camera) -> np.ndarray:
    """Dark current of every pixel including hot pixels.

    Ordinary pixels have ``dark_current`` times a factor uniform in [0.8, 1.2]; hot pixels have
    ``hot_pixel_rate`` times a factor uniform in [0.5, 1.5].

    Returns
    -------
    numpy.ndarray
        float64 array of ``camera.shape``, ADU/s.
    """
    rng = _pattern_rng(camera, 3)
    rate = camera.dark_current * rng.uniform(0.8, 1.2, size=camera.shape)
    hot = hot_pixels(camera)
    rate[hot] = camera.hot_pixel_rate * rng.uniform(0.5, 1.5, size=int(hot.sum()))
    return rate


def _vignetting_profile(shape: tuple[int, int], vignetting: float) -> np.ndarray:
    """Smooth illumination, 1 at the centre and ``1 - vignetting`` at the corners (quadratic in r)."""
    ny, nx = shape
    y = (np.arange(ny) - (ny - 1) / 2.0) / ((ny - 1) / 2.0 if ny > 1 else 1.0)
    x = (np.arange(nx) - (nx - 1) / 2.0) / ((nx - 1) / 2.0 if nx > 1 else 1.0)
    r2 = (x[None, :] ** 2 + y[:, None] ** 2) / 2.0  # 1 at the corners
    return 1.0 - vignetting * r2


def flat_response(camera: Camera) -> np.ndarray:
    """Relative response of every pixel (optics x detector), normalised to median 1.

    Vignetting falling quadratically with radius to ``1 - vignetting`` at the corners, times a
    pixel-to-pixel sensitivity with 1 % rms.

    Returns
    -------
    numpy.ndarray
        float64 array of ``camera.shape``, dimensionless.
    """
    rng = _pattern_rng(camera, 4)
    prnu = 1.0 + rng.normal(0.0, 0.01, size=camera.shape)
    response = _vignetting_profile(camera.shape, camera.vignetting) * prnu
    return response / np.median(response)



def cfa_channels(camera: Camera) -> np.ndarray | None:
    """Index (0 R, 1 G, 2 B) of every pixel's colour filter; None for a monochrome camera."""
    if camera.bayer_pattern is None:
        return None
    ny, nx = camera.shape
    cell = np.array([["RGB".index(c) for c in camera.bayer_pattern[:2]],
                     ["RGB".index(c) for c in camera.bayer_pattern[2:]]])
    return cell[np.arange(ny)[:, None] % 2, np.arange(nx)[None, :] % 2]


def _light(camera: Camera, stars: Stars | None, *, level: float, colour: tuple[float, float, float],
           fwhm: float, exptime: float) -> np.ndarray:
    """Light reaching each pixel (ADU at unit response): uniform ``level`` plus the stars; for a
    colour camera, each pixel sees its own colour of them (``colour`` of the uniform light, the
    stars' ``colour``) times its colour's response."""
    channels = cfa_channels(camera)
    if channels is None:
        light = np.full(camera.shape, level, dtype=float)
        if stars is not None and len(stars):
            light += render_stars(camera.shape, stars, fwhm=fwhm, exptime=exptime)
        return light
    light = np.zeros(camera.shape, dtype=float)
    for c in range(3):
        plane = np.full(camera.shape, level * colour[c], dtype=float)
        if stars is not None and len(stars):
            ratio = stars.colour[:, c] if stars.colour is not None else 1.0
            tinted = Stars(stars.x, stars.y, np.asarray(stars.flux) * ratio, shape=stars.shape)
            plane += render_stars(camera.shape, tinted, fwhm=fwhm, exptime=exptime)
        light = np.where(channels == c, plane * camera.channel_response[c], light)
    return light


@dataclass(frozen=True)
class CosmicRays:
    """Cosmic-ray hits at known places (ground truth for detectors).

    Attributes
    ----------
    y, x : numpy.ndarray of int
        Every pixel each hit deposited charge in (a pixel hit twice appears twice).
    energy : numpy.ndarray of float
        Charge deposited in that pixel, ADU.
    hit : numpy.ndarray of int
        Index (0..n-1) of the hit each pixel belongs to: a single pixel or a short straight track.
    shape : (ny, nx)
    """

    y: np.ndarray
    x: np.ndarray
    energy: np.ndarray
    hit: np.ndarray
    shape: tuple[int, int]

    def image(self) -> np.ndarray:
        """The deposited charge, float64 ADU of ``shape`` (0 where no ray hit)."""
        out = np.zeros(self.shape)
        np.add.at(out, (self.y, self.x), self.energy)
        return out

    def mask(self) -> np.ndarray:
        """Boolean map of the hit pixels."""
        out = np.zeros(self.shape, dtype=bool)
        out[self.y, self.x] = True
        return out


def cosmic_rays(shape: tuple[int, int], n: int, rng: np.random.Generator, *,
                energy: tuple[float, float] = (500.0, 5000.0), max_length: int = 4) -> CosmicRays:
    """``n`` cosmic-ray hits, each a single pixel or a short horizontal or vertical track of
    1 to ``max_length`` pixels, each pixel receiving a charge uniform in ``energy`` (ADU).

    Tracks running off the detector are cut there. The defaults draw the same numbers as the
    synthetic camera always did (`expose`'s ``cosmic_rays``).
    """
    ny, nx = shape
    ys: list[int] = []
    xs: list[int] = []
    es: list[float] = []
    hits: list[int] = []
    for h in range(n):
        y, x = int(rng.integers(0, ny)), int(rng.integers(0, nx))
        length = int(rng.integers(1, max_length + 1))
        step_y, step_x = (0, 1) if rng.random() < 0.5 else (1, 0)
        for k in range(length):
            yy, xx = y + k * step_y, x + k * step_x
            if yy < ny and xx < nx:
                ys.append(yy)
                xs.append(xx)
                es.append(float(rng.uniform(*energy)))
                hits.append(h)
    return CosmicRays(np.array(ys, dtype=np.int64), np.array(xs, dtype=np.int64), np.array(es, dtype=float),
                      np.array(hits, dtype=np.int64), (int(ny), int(nx)))


def _add_cosmic_rays(image: np.ndarray, n: int, rng: np.random.Generator) -> CosmicRays:
    """Add ``n`` short cosmic-ray tracks (1-4 pixels, 500-5000 ADU each pixel) in place; returns them."""
    rays = cosmic_rays(image.shape, n, rng)
    np.add.at(image, (rays.y, rays.x), rays.energy)
    return rays


def _add_satellite(image: np.ndarray, rng: np.random.Generator, *, width: float) -> None:
    """Add a straight satellite trail crossing the frame (Gaussian profile, 300 ADU peak) in place."""
    ny, nx = image.shape
    angle = rng.uniform(0.0, math.pi)
    cx, cy = rng.uniform(0.25, 0.75) * (nx - 1), rng.uniform(0.25, 0.75) * (ny - 1)
    yy, xx = np.mgrid[0:ny, 0:nx]
    distance = np.abs(-(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle))
    sigma = max(width, 1.0) / FWHM_PER_SIGMA
    image += 300.0 * np.exp(-0.5 * (distance / sigma) ** 2)


def expose(
    camera: Camera,
    *,
    kind: str,
    exptime: float,
    rng: np.random.Generator,
    sky: float = 0.0,
    stars: Stars | None = None,
    fwhm: float = 3.0,
    flat_level: float | None = None,
    cosmic_rays: int = 0,
    satellite: bool = False,
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Simulate one exposure, returned in ADU before quantisation.

    Parameters
    ----------
    camera : Camera
        The camera (fixed pattern).
    kind : {"bias", "dark", "flat", "light"}
        Frame type. Bias and dark frames receive no light.
    exptime : float
        Exposure time in s (dark current accumulates for this long; use 0 for biases).
    rng : numpy.random.Generator
        Source of the per-exposure noise.
    sky : float
        Sky background in ADU/s/pixel at unit response (flat/light only).
    stars : Stars or None
        Point sources (flux in ADU/s) for lights.
    fwhm : float
        Seeing FWHM in pixels.
    flat_level : float or None
        Uniform illumination in ADU per pixel for flats (default 20000 for ``kind="flat"``).
    cosmic_rays : int
        Number of cosmic-ray hits to add.
    satellite : bool
        Add a satellite trail across the frame.
    colour : (float, float, float)
        Colour camera: the sky's (or the flat lamp's) brightness in R, G, B relative to ``sky``
        (``flat_level``). Stars take their colours from ``stars.colour``.

    Returns
    -------
    numpy.ndarray
        float64 ADU, not clipped or rounded (see :func:`quantise`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if exptime < 0:
        raise ValueError(f"exptime must be >= 0, got {exptime}")
    if kind == "flat" and flat_level is None:
        flat_level = DEFAULT_FLAT_LEVEL
    illuminated = kind in ("flat", "light")
    if not illuminated and (sky or stars is not None or flat_level or satellite):
        raise ValueError(f"a {kind} frame receives no light (sky/stars/flat_level/satellite given)")

    expected = dark_rate(camera) * exptime  # ADU, before the response
    if illuminated:
        light = _light(camera, stars, level=sky * exptime + (flat_level or 0.0), colour=colour, fwhm=fwhm,
                       exptime=exptime)
        expected += flat_response(camera) * light
    electrons = rng.poisson(np.clip(expected, 0.0, None) * camera.gain)
    image = electrons / camera.gain + bias_pattern(camera)
    image += rng.normal(0.0, camera.read_noise, size=camera.shape)
    if cosmic_rays:
        _add_cosmic_rays(image, cosmic_rays, rng)
    if satellite:
        _add_satellite(image, rng, width=fwhm)
    return image


def quantise(adu: np.ndarray, *, saturation: float = 65535.0) -> np.ndarray:
    """Round to integers and clip to ``[0, saturation]`` as an ADC does; returns uint16."""
    top = min(float(saturation), 65535.0)
    return np.clip(np.rint(adu), 0.0, top).astype(np.uint16)


def with_overscan(camera: Camera, image: np.ndarray, *, offset: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` (ADU, ``camera.shape``) shifted by this exposure's bias ``offset`` (a drift of the
    bias level through the night) and widened by ``camera.overscan`` columns of overscan: the
    bias level plus the same offset and read noise, no light, no dark current, no column pattern.
    Without overscan columns the image is returned shifted only."""
    shifted = image + offset
    if camera.overscan <= 0:
        return shifted
    strip = camera.bias_level + offset + rng.normal(0.0, camera.read_noise, size=(camera.shape[0], camera.overscan))
    return np.hstack([shifted, strip])


def overscan_cards(camera: Camera) -> dict[str, str]:
    """BIASSEC, TRIMSEC and DATASEC of a frame written by :func:`with_overscan` (none without
    overscan columns)."""
    if camera.overscan <= 0:
        return {}
    ny, nx = camera.shape
    data = f"[1:{nx},1:{ny}]"
    return {"BIASSEC": f"[{nx + 1}:{nx + camera.overscan},1:{ny}]", "TRIMSEC": data, "DATASEC": data}
