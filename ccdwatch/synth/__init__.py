"""Seeded synthetic CCD frames with known ground truth.

The numeric functions (everything except :func:`write_fits` and :func:`make_night`) are pure:
they take a :class:`Camera` (whose fixed-pattern properties are derived from ``Camera.seed``)
and an explicit :class:`numpy.random.Generator` for the per-exposure noise, and return new arrays.

Signal model of one exposure, in ADU before quantisation::

    raw = bias_pattern + Poisson(gain * (dark_rate * t + response * (sky * t + stars + flat_level))) / gain
          + Normal(0, read_noise) [+ cosmic rays] [+ satellite trail]

Coordinates are 0-based pixel indices with ``x`` the column and ``y`` the row; pixel ``(y, x)``
covers ``[x - 0.5, x + 0.5) x [y - 0.5, y + 0.5)``.

Modules: :mod:`~ccdwatch.synth.camera` (the detector's fixed pattern and one exposure's pixels),
:mod:`~ccdwatch.synth.stars` (star fields and their image), :mod:`~ccdwatch.synth.header` (header
cards and the FITS file as acquisition programs write them), :mod:`~ccdwatch.synth.night` (a whole
night on disk with its ground truth).
"""

from __future__ import annotations

from ccdwatch.synth.camera import (
    DEFAULT_FLAT_LEVEL,
    KINDS,
    Camera,
    CosmicRays,
    bias_pattern,
    cfa_channels,
    cosmic_rays,
    dark_rate,
    expose,
    flat_response,
    hot_pixels,
    quantise,
)
from ccdwatch.synth.camera import _add_cosmic_rays as _add_cosmic_rays
from ccdwatch.synth.camera import _add_satellite as _add_satellite
from ccdwatch.synth.camera import _pattern_rng as _pattern_rng
from ccdwatch.synth.camera import _vignetting_profile as _vignetting_profile
from ccdwatch.synth.header import _IMAGETYP as _IMAGETYP
from ccdwatch.synth.header import STYLES, frame_header, write_fits
from ccdwatch.synth.night import NightTruth, make_night
from ccdwatch.synth.stars import FWHM_PER_SIGMA, Stars, render_stars, star_field, transform_stars

__all__ = [
    "DEFAULT_FLAT_LEVEL",
    "FWHM_PER_SIGMA",
    "KINDS",
    "STYLES",
    "Camera",
    "CosmicRays",
    "NightTruth",
    "Stars",
    "bias_pattern",
    "cfa_channels",
    "cosmic_rays",
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
