"""Seeded synthetic CCD frames with known ground truth.

The numeric functions (everything except :func:`write_fits` and :func:`make_night`) are pure:
they take a :class:`Camera` (whose fixed-pattern properties are derived from ``Camera.seed``)
and an explicit :class:`numpy.random.Generator` for the per-exposure noise, and return new arrays.

Signal model of one exposure, in ADU before quantisation::

    raw = bias_pattern + Poisson(gain * (dark_rate * t + response * (sky * t + stars + flat_level))) / gain
          + Normal(0, read_noise) [+ cosmic rays] [+ satellite trail]

Coordinates are 0-based pixel indices with ``x`` the column and ``y`` the row; pixel ``(y, x)``
covers ``[x - 0.5, x + 0.5) x [y - 0.5, y + 0.5)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from scipy.special import erf

logger = logging.getLogger(__name__)

__all__ = [
    "Camera",
    "NightTruth",
    "Stars",
    "bias_pattern",
    "dark_rate",
    "expose",
    "flat_response",
    "frame_header",
    "hot_pixels",
    "make_night",
    "quantise",
    "render_stars",
    "star_field",
    "transform_stars",
    "write_fits",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548...
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


@dataclass(frozen=True)
class Stars:
    """A list of point sources.

    Attributes
    ----------
    x, y : numpy.ndarray
        Pixel coordinates (0-based; ``x`` is the column).
    flux : numpy.ndarray
        Total flux in ADU/s (at unit flat response).
    shape : (ny, nx) or None
        Shape of the image the coordinates refer to, when known (used as the default rotation
        centre by :func:`transform_stars`).
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    shape: tuple[int, int] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.x)


def star_field(
    shape: tuple[int, int],
    n: int,
    *,
    rng: np.random.Generator,
    flux_range: tuple[float, float] = (50.0, 5000.0),
    margin: int = 20,
) -> Stars:
    """Random stars, uniform in position at least ``margin`` pixels from the edges.

    Fluxes are log-uniform in ``flux_range`` (ADU/s).
    """
    ny, nx = shape
    x = rng.uniform(margin, nx - 1 - margin, size=n)
    y = rng.uniform(margin, ny - 1 - margin, size=n)
    lo, hi = flux_range
    flux = np.exp(rng.uniform(math.log(lo), math.log(hi), size=n))
    return Stars(x=x, y=y, flux=flux, shape=(int(ny), int(nx)))


def transform_stars(
    stars: Stars,
    *,
    dx: float = 0.0,
    dy: float = 0.0,
    rotation_deg: float = 0.0,
    center: tuple[float, float] | None = None,
) -> Stars:
    """Rotate stars about ``center`` then shift them by ``(dx, dy)`` pixels.

    ``x' = cx + cos(a)(x - cx) - sin(a)(y - cy) + dx``,
    ``y' = cy + sin(a)(x - cx) + cos(a)(y - cy) + dy`` (counter-clockwise for ``origin='lower'``).

    Parameters
    ----------
    center : (cx, cy) or None
        Rotation centre in pixels. Default: the image centre ``((nx-1)/2, (ny-1)/2)`` when
        ``stars.shape`` is known, else the middle of the stars' bounding box.
    """
    if center is None:
        if stars.shape is not None:
            ny, nx = stars.shape
            center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
        elif len(stars):
            center = (
                (float(np.min(stars.x)) + float(np.max(stars.x))) / 2.0,
                (float(np.min(stars.y)) + float(np.max(stars.y))) / 2.0,
            )
        else:
            center = (0.0, 0.0)
    cx, cy = center
    a = math.radians(rotation_deg)
    c, s = math.cos(a), math.sin(a)
    x = np.asarray(stars.x, dtype=float) - cx
    y = np.asarray(stars.y, dtype=float) - cy
    return Stars(
        x=cx + c * x - s * y + dx,
        y=cy + s * x + c * y + dy,
        flux=np.array(stars.flux, dtype=float, copy=True),
        shape=stars.shape,
    )


def render_stars(shape: tuple[int, int], stars: Stars, *, fwhm: float, exptime: float) -> np.ndarray:
    """Noise-free image of Gaussian stars, integrated exactly over each pixel.

    Each star contributes ``flux * exptime`` ADU in total (minus whatever falls off the detector);
    the PSF is integrated over the pixel area with the error function, so the sum is conserved
    for any sub-pixel position. The PSF is truncated at 6 sigma.

    Returns
    -------
    numpy.ndarray
        float64 array of ``shape``, ADU.
    """
    if fwhm <= 0:
        raise ValueError(f"fwhm must be positive, got {fwhm}")
    ny, nx = shape
    image = np.zeros((ny, nx), dtype=float)
    sigma = fwhm / FWHM_PER_SIGMA
    half = math.ceil(6.0 * sigma) + 1
    norm = 1.0 / (math.sqrt(2.0) * sigma)
    for x0, y0, f in zip(np.asarray(stars.x), np.asarray(stars.y), np.asarray(stars.flux)):
        ix, iy = round(float(x0)), round(float(y0))
        x_lo, x_hi = max(ix - half, 0), min(ix + half + 1, nx)
        y_lo, y_hi = max(iy - half, 0), min(iy + half + 1, ny)
        if x_lo >= x_hi or y_lo >= y_hi:
            continue
        xe = np.arange(x_lo, x_hi + 1) - 0.5
        ye = np.arange(y_lo, y_hi + 1) - 0.5
        px = 0.5 * np.diff(erf((xe - x0) * norm))
        py = 0.5 * np.diff(erf((ye - y0) * norm))
        image[y_lo:y_hi, x_lo:x_hi] += (f * exptime) * np.outer(py, px)
    return image


def _add_cosmic_rays(image: np.ndarray, n: int, rng: np.random.Generator) -> None:
    """Add ``n`` short cosmic-ray tracks (1-4 pixels, 500-5000 ADU each pixel) in place."""
    ny, nx = image.shape
    for _ in range(n):
        y, x = int(rng.integers(0, ny)), int(rng.integers(0, nx))
        length = int(rng.integers(1, 5))
        step_y, step_x = (0, 1) if rng.random() < 0.5 else (1, 0)
        for k in range(length):
            yy, xx = y + k * step_y, x + k * step_x
            if yy < ny and xx < nx:
                image[yy, xx] += rng.uniform(500.0, 5000.0)


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
        light = np.full(camera.shape, sky * exptime + (flat_level or 0.0), dtype=float)
        if stars is not None and len(stars):
            light += render_stars(camera.shape, stars, fwhm=fwhm, exptime=exptime)
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


_IMAGETYP = {
    "maxim": {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field", "light": "Light Frame"},
    "nina": {"bias": "BIAS", "dark": "DARK", "flat": "FLAT", "light": "LIGHT"},
    "ekos": {"bias": "Bias", "dark": "Dark", "flat": "Flat", "light": "Light"},
}
STYLES = tuple(_IMAGETYP)


def frame_header(
    camera: Camera,
    *,
    kind: str,
    exptime: float,
    date_obs: datetime,
    filter: str | None = None,
    object: str | None = None,
    style: str = "maxim",
    utc_offset_hours: float = -7.0,
    **extra: object,
) -> dict[str, object]:
    """Header cards as the named acquisition program writes them.

    Styles
    ------
    ``"maxim"`` (MaxIm DL)
        IMAGETYP 'Bias Frame'/'Dark Frame'/'Flat Field'/'Light Frame', EXPTIME and EXPOSURE,
        XBINNING/YBINNING, CCD-TEMP, SET-TEMP, EGAIN, SWCREATE.
    ``"nina"`` (N.I.N.A.)
        IMAGETYP 'BIAS'/'DARK'/'FLAT'/'LIGHT', EXPOSURE only, GAIN/OFFSET (camera settings), and
        DATE-LOC (local time at ``utc_offset_hours``).
    ``"ekos"`` (KStars/Ekos, INDI)
        FRAME 'Bias'/'Dark'/'Flat'/'Light' (no IMAGETYP), EXPTIME only.

    All styles carry INSTRUME, DATE-OBS (ISO 8601 UTC, milliseconds, no zone suffix),
    FILTER (when given) and OBJECT (when given). ``date_obs`` naive is taken as UTC.
    Extra keyword arguments are added as further cards (upper-cased names).

    Returns
    -------
    dict
        Card name -> value, in writing order.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if style not in _IMAGETYP:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    when = date_obs if date_obs.tzinfo is not None else date_obs.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    iso = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}"
    header: dict[str, object] = {}
    if style == "ekos":
        header["FRAME"] = _IMAGETYP[style][kind]
        header["EXPTIME"] = float(exptime)
    elif style == "nina":
        header["IMAGETYP"] = _IMAGETYP[style][kind]
        header["EXPOSURE"] = float(exptime)
    else:
        header["IMAGETYP"] = _IMAGETYP[style][kind]
        header["EXPTIME"] = float(exptime)
        header["EXPOSURE"] = float(exptime)
    header["DATE-OBS"] = iso
    if style == "nina":
        local = when.astimezone(timezone(timedelta(hours=utc_offset_hours)))
        header["DATE-LOC"] = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    header["XBINNING"] = 1
    header["YBINNING"] = 1
    header["CCD-TEMP"] = -20.0
    if style != "ekos":
        header["SET-TEMP"] = -20.0
    header["INSTRUME"] = camera.instrument
    if style == "nina":
        header["GAIN"] = 100
        header["OFFSET"] = 50
        header["EGAIN"] = camera.gain
        header["SWCREATE"] = "N.I.N.A. 3.1.2.9001"
    elif style == "maxim":
        header["EGAIN"] = camera.gain
        header["SWCREATE"] = "MaxIm DL Version 6.50"
    else:
        header["PROGRAM"] = "KStars"
    if filter is not None:
        header["FILTER"] = filter
    if object is not None:
        header["OBJECT"] = object
    for key, value in extra.items():
        header[key.upper()] = value
    return header


def write_fits(path: str | Path, data: np.ndarray, header: Mapping[str, object]) -> Path:
    """Write one primary-HDU FITS file as a camera program would.

    uint16 data are stored as BITPIX=16 with BZERO=32768 (astropy's default for unsigned
    integers); float data are written as float32. Overwrites an existing file.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    from astropy.io import fits

    path = Path(path)
    array = np.asarray(data)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    hdr = fits.Header()
    for key, value in header.items():
        hdr[key] = value
    fits.PrimaryHDU(data=array, header=hdr, uint=True).writeto(path, overwrite=True)
    return path


@dataclass
class NightTruth:
    """Ground truth of a synthetic night written by :func:`make_night`.

    Attributes
    ----------
    camera : Camera
    files : dict
        Paths by kind ("bias", "dark", "flat", "light"), in observing order.
    stars : Stars
        Stars in the reference frame (= the first light's pointing), flux in ADU/s.
    shifts : list of (dx, dy, rotation_deg)
        Transformation of ``stars`` for each light in ``files["light"]`` (the first is (0, 0, 0)),
        as applied by :func:`transform_stars` about the image centre.
    sky : float
        Sky background, ADU/s/pixel.
    fwhm : float
        Seeing FWHM, pixels.
    light_filters : list of str
        Filter of each light in ``files["light"]``.
    flat_filters : list of str
        Filter of each flat in ``files["flat"]``.
    exptimes : dict
        Exposure time by kind, s.
    dates : dict
        DATE-OBS (aware UTC datetimes) by kind, parallel to ``files``.
    style : str
        Header style used.
    """

    camera: Camera
    files: dict[str, list[Path]]
    stars: Stars
    shifts: list[tuple[float, float, float]]
    sky: float
    fwhm: float
    light_filters: list[str] = field(default_factory=list)
    flat_filters: list[str] = field(default_factory=list)
    exptimes: dict[str, float] = field(default_factory=dict)
    dates: dict[str, list[datetime]] = field(default_factory=dict)
    style: str = "maxim"

    def light_stars(self, index: int) -> Stars:
        """True star positions on light ``index``."""
        dx, dy, rot = self.shifts[index]
        return transform_stars(self.stars, dx=dx, dy=dy, rotation_deg=rot)


def make_night(
    directory: str | Path,
    *,
    camera: Camera = Camera(),
    seed: int = 0,
    n_bias: int = 5,
    n_dark: int = 5,
    dark_exptime: float = 300.0,
    n_flat: int = 5,
    flat_exptime: float = 3.0,
    flat_level: float = DEFAULT_FLAT_LEVEL,
    filters: tuple[str, ...] = ("V", "R"),
    n_light: int = 6,
    light_exptime: float = 200.0,
    object: str = "M51",
    style: str = "maxim",
    start: datetime = datetime(2024, 3, 10, 20, 0, tzinfo=UTC),
    dither: float = 3.0,
    rotation: float = 0.2,
    n_stars: int = 60,
    flux_range: tuple[float, float] = (20.0, 2000.0),
    sky: float = 2.0,
    fwhm: float = 3.0,
    interleave: bool = False,
    cosmic_rays: int = 0,
    overhead: float = 5.0,
    extension: str = ".fits",
) -> NightTruth:
    """Write a realistic synthetic night of uint16 FITS frames into ``directory``.

    Order: ``n_bias`` biases and ``n_dark`` darks (``dark_exptime``) at dusk from ``start``; then
    ``n_light`` lights per filter of ``object`` (all of one filter then the next, or filter by
    filter in turn when ``interleave``), each dithered by up to ``dither`` pixels and rotated by up
    to ``rotation`` degrees (the first light is the reference, unshifted); then ``n_flat`` flats
    per filter at dawn (10 h after ``start``, or after the last light if later). ``overhead``
    seconds separate consecutive frames. Star fluxes are log-uniform in ``flux_range`` (ADU/s;
    the default keeps the brightest star's peak below saturation at 200 s and FWHM 3 px).

    Files are named ``bias_001.fits``, ``dark_300s_001.fits``, ``{object}_{filter}_001.fits``,
    ``flat_{filter}_001.fits``. The same arguments always give byte-identical files.

    Returns
    -------
    NightTruth
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stars = star_field(camera.shape, n_stars, rng=rng, flux_range=flux_range)
    files: dict[str, list[Path]] = {k: [] for k in KINDS}
    dates: dict[str, list[datetime]] = {k: [] for k in KINDS}
    truth = NightTruth(
        camera=camera,
        files=files,
        stars=stars,
        shifts=[],
        sky=sky,
        fwhm=fwhm,
        exptimes={"bias": 0.0, "dark": dark_exptime, "flat": flat_exptime, "light": light_exptime},
        dates=dates,
        style=style,
    )
    start = start if start.tzinfo is not None else start.replace(tzinfo=UTC)
    clock = start

    def shoot(kind: str, name: str, exptime: float, when: datetime, *, filter: str | None = None,
              **kwargs: object) -> None:
        adu = expose(camera, kind=kind, exptime=exptime, rng=rng, **kwargs)  # type: ignore[arg-type]
        header = frame_header(camera, kind=kind, exptime=exptime, date_obs=when, filter=filter,
                              object=object if kind == "light" else None, style=style)
        path = write_fits(directory / f"{name}{extension}", quantise(adu, saturation=camera.saturation), header)
        files[kind].append(path)
        dates[kind].append(when)

    for i in range(n_bias):
        shoot("bias", f"bias_{i + 1:03d}", 0.0, clock)
        clock += timedelta(seconds=overhead)
    for i in range(n_dark):
        shoot("dark", f"dark_{dark_exptime:g}s_{i + 1:03d}", dark_exptime, clock, cosmic_rays=cosmic_rays)
        clock += timedelta(seconds=dark_exptime + overhead)

    order = ([f for _ in range(n_light) for f in filters] if interleave
             else [f for f in filters for _ in range(n_light)])
    counters = dict.fromkeys(filters, 0)
    safe_object = "".join(c if c.isalnum() or c in "-_" else "_" for c in object) or "object"
    for j, filt in enumerate(order):
        if j == 0:
            dx = dy = rot = 0.0
        else:
            dx = float(rng.uniform(-dither, dither))
            dy = float(rng.uniform(-dither, dither))
            rot = float(rng.uniform(-rotation, rotation))
        counters[filt] += 1
        shoot("light", f"{safe_object}_{filt}_{counters[filt]:03d}", light_exptime, clock, filter=filt,
              sky=sky, stars=transform_stars(stars, dx=dx, dy=dy, rotation_deg=rot), fwhm=fwhm,
              cosmic_rays=cosmic_rays)
        truth.shifts.append((dx, dy, rot))
        truth.light_filters.append(filt)
        clock += timedelta(seconds=light_exptime + overhead)

    clock = max(clock, start + timedelta(hours=10))
    for filt in filters:
        for i in range(n_flat):
            shoot("flat", f"flat_{filt}_{i + 1:03d}", flat_exptime, clock, filter=filt, flat_level=flat_level)
            truth.flat_filters.append(filt)
            clock += timedelta(seconds=flat_exptime + overhead)
    logger.debug("wrote synthetic night into %s: %s", directory, {k: len(v) for k, v in files.items()})
    return truth
