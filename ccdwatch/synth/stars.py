"""Star fields of the synthetic camera: known positions and fluxes, dithers, and their noise-free image.

Coordinates are 0-based pixel indices with ``x`` the column and ``y`` the row; pixel ``(y, x)``
covers ``[x - 0.5, x + 0.5) x [y - 0.5, y + 0.5)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

__all__ = ["FWHM_PER_SIGMA", "Stars", "render_stars", "star_field", "transform_stars"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548...


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
    colour : numpy.ndarray or None
        (n, 3): each star's flux in R, G, B relative to ``flux`` (a colour camera's truth); None:
        1 in every colour.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    shape: tuple[int, int] | None = field(default=None, compare=False)
    colour: np.ndarray | None = field(default=None, compare=False)

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
        colour=stars.colour,
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
    for x0, y0, f in zip(np.asarray(stars.x), np.asarray(stars.y), np.asarray(stars.flux), strict=False):
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
