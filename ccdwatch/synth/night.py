"""A whole synthetic night written to disk: biases and darks at dusk, dithered lights, flats at dawn."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ccdwatch.synth.camera import (
    DEFAULT_FLAT_LEVEL,
    KINDS,
    Camera,
    CosmicRays,
    _add_cosmic_rays,
    expose,
    overscan_cards,
    quantise,
    with_overscan,
)
from ccdwatch.synth.header import frame_header, write_fits
from ccdwatch.synth.stars import Stars, star_field, transform_stars

# The logger keeps the name it had when the synthetic camera was one module.
logger = logging.getLogger("ccdwatch.synth")

__all__ = ["NightTruth", "make_night"]

#: The camera of :func:`make_night` when none is given.
_DEFAULT_CAMERA = Camera()


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
    sky_colour, lamp_colour : (float, float, float)
        Colour camera: the sky's and the flat lamp's brightness in R, G, B relative to ``sky`` and
        the flat level (the stars' colours are ``stars.colour``).
    light_rays : list of CosmicRays
        The cosmic rays of each light in ``files["light"]`` (raw ADU, on the raw frame's pixels).
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
    sky_colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    lamp_colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    light_rays: list[CosmicRays] = field(default_factory=list)
    bias_offsets: dict[str, list[float]] = field(default_factory=dict)
    """The bias drift of each frame (ADU added to the camera's bias level), by kind, parallel to
    ``files``: all 0 without ``bias_drift``."""

    def light_stars(self, index: int) -> Stars:
        """True star positions on light ``index``."""
        dx, dy, rot = self.shifts[index]
        return transform_stars(self.stars, dx=dx, dy=dy, rotation_deg=rot)


@dataclass
class _NightSession:
    """The camera at work for one night: where and how it writes frames, and what it wrote so far."""

    directory: Path
    camera: Camera
    rng: np.random.Generator
    target: str
    style: str
    extension: str
    truth: NightTruth
    start: datetime
    bias_drift: float = 0.0

    def bias_offset(self, when: datetime) -> float:
        """The bias level's drift at ``when`` (ADU): half of ``bias_drift`` as a slow rise over 10
        hours from the night's start, half as a wobble of period 37 minutes (a real bias follows
        the electronics' temperature): identical exposures minutes apart see different levels."""
        if not self.bias_drift:
            return 0.0
        minutes = (when - self.start).total_seconds() / 60.0
        return float(self.bias_drift * 0.5 * (minutes / 600.0 + np.sin(2.0 * np.pi * minutes / 37.0)))

    def shoot(self, kind: str, name: str, exptime: float, when: datetime, *, filter: str | None = None,
              **kwargs: Any) -> None:
        """Expose one frame, write it as ``<name><extension>`` and file it in the truth."""
        camera = self.camera
        n_rays = int(kwargs.pop("cosmic_rays", 0))
        adu = expose(camera, kind=kind, exptime=exptime, rng=self.rng, **kwargs)
        # drawn after the exposure's noise, as `expose` would (no satellite in a night)
        rays = _add_cosmic_rays(adu, n_rays, self.rng)
        if kind == "light":
            self.truth.light_rays.append(rays)
        offset = self.bias_offset(when)
        if offset or camera.overscan:
            adu = with_overscan(camera, adu, offset=offset, rng=self.rng)
        header = frame_header(camera, kind=kind, exptime=exptime, date_obs=when, filter=filter,
                              object=self.target if kind == "light" else None, style=self.style)
        header.update(overscan_cards(camera))
        path = write_fits(self.directory / f"{name}{self.extension}", quantise(adu, saturation=camera.saturation),
                          header)
        self.truth.files[kind].append(path)
        self.truth.dates[kind].append(when)
        self.truth.bias_offsets.setdefault(kind, []).append(offset)


def _shoot_dusk(session: _NightSession, clock: datetime, *, n_bias: int, n_dark: int, dark_exptime: float,
                cosmic_rays: int, overhead: float) -> datetime:
    """Biases, then darks of ``dark_exptime`` from ``clock``; returns the time after the last one."""
    for i in range(n_bias):
        session.shoot("bias", f"bias_{i + 1:03d}", 0.0, clock)
        clock += timedelta(seconds=overhead)
    for i in range(n_dark):
        session.shoot("dark", f"dark_{dark_exptime:g}s_{i + 1:03d}", dark_exptime, clock, cosmic_rays=cosmic_rays)
        clock += timedelta(seconds=dark_exptime + overhead)
    return clock


def _light_order(filters: tuple[str, ...], n_light: int, *, interleave: bool) -> list[str]:
    """Filter of each light in observing order: filter by filter in turn, or all of one filter then the next."""
    return ([f for _ in range(n_light) for f in filters] if interleave
            else [f for f in filters for _ in range(n_light)])


def _file_safe(name: str) -> str:
    """``name`` with every character but letters, digits, '-' and '_' replaced by '_' ("object" if empty)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "object"


def _pointing(rng: np.random.Generator, index: int, *, dither: float, rotation: float) -> tuple[float, float, float]:
    """Offset ``(dx, dy, rotation_deg)`` of light ``index`` from the first, which is the reference."""
    if index == 0:
        dx = dy = rot = 0.0
    else:
        dx = float(rng.uniform(-dither, dither))
        dy = float(rng.uniform(-dither, dither))
        rot = float(rng.uniform(-rotation, rotation))
    return dx, dy, rot


def _shoot_lights(session: _NightSession, stars: Stars, clock: datetime, *, order: list[str], exptime: float,
                  dither: float, rotation: float, sky: float, fwhm: float, cosmic_rays: int,
                  overhead: float) -> datetime:
    """The dithered lights, one per entry of ``order``; returns the time after the last one."""
    truth = session.truth
    counters = dict.fromkeys(order, 0)
    safe_object = _file_safe(session.target)
    for j, filt in enumerate(order):
        dx, dy, rot = _pointing(session.rng, j, dither=dither, rotation=rotation)
        counters[filt] += 1
        session.shoot("light", f"{safe_object}_{filt}_{counters[filt]:03d}", exptime, clock, filter=filt,
                      sky=sky, stars=transform_stars(stars, dx=dx, dy=dy, rotation_deg=rot), fwhm=fwhm,
                      cosmic_rays=cosmic_rays, colour=truth.sky_colour)
        truth.shifts.append((dx, dy, rot))
        truth.light_filters.append(filt)
        clock += timedelta(seconds=exptime + overhead)
    return clock


def _shoot_dawn(session: _NightSession, clock: datetime, *, filters: tuple[str, ...], n_flat: int,
                flat_exptime: float, flat_level: float, overhead: float) -> datetime:
    """``n_flat`` flats per filter from ``clock``; returns the time after the last one."""
    for filt in filters:
        for i in range(n_flat):
            session.shoot("flat", f"flat_{filt}_{i + 1:03d}", flat_exptime, clock, filter=filt,
                          flat_level=flat_level, colour=session.truth.lamp_colour)
            session.truth.flat_filters.append(filt)
            clock += timedelta(seconds=flat_exptime + overhead)
    return clock


def make_night(
    directory: str | Path,
    *,
    camera: Camera = _DEFAULT_CAMERA,
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
    sky_colour: tuple[float, float, float] = (0.8, 1.0, 0.7),
    lamp_colour: tuple[float, float, float] = (0.6, 1.0, 0.4),
    star_colours: tuple[float, float] = (0.4, 1.6),
    bias_drift: float = 0.0,
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

    A colour camera (``camera.bayer_pattern``) sees the sky in ``sky_colour`` and the flat lamp in
    ``lamp_colour`` (R, G, B relative to G); each star's R and B fluxes are its G flux times a
    factor uniform in ``star_colours`` (drawn after the star field, so a monochrome night's
    frames do not change).

    ``bias_drift`` (ADU) makes the bias level drift through the night (see
    ``_NightSession.bias_offset``; the offsets are in ``NightTruth.bias_offsets``); a camera with
    ``overscan`` columns records the drift in its overscan strip, as a real CCD does.

    Returns
    -------
    NightTruth
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stars = star_field(camera.shape, n_stars, rng=rng, flux_range=flux_range)
    if camera.bayer_pattern is not None:
        tint = rng.uniform(*star_colours, size=(len(stars), 3))
        tint[:, 1] = 1.0
        stars = dataclasses.replace(stars, colour=tint)
    truth = NightTruth(
        camera=camera,
        files={k: [] for k in KINDS},
        stars=stars,
        shifts=[],
        sky=sky,
        fwhm=fwhm,
        exptimes={"bias": 0.0, "dark": dark_exptime, "flat": flat_exptime, "light": light_exptime},
        dates={k: [] for k in KINDS},
        style=style,
        sky_colour=sky_colour,
        lamp_colour=lamp_colour,
    )
    start = start if start.tzinfo is not None else start.replace(tzinfo=UTC)
    session = _NightSession(directory, camera, rng, object, style, extension, truth, start, bias_drift)
    clock = _shoot_dusk(session, start, n_bias=n_bias, n_dark=n_dark, dark_exptime=dark_exptime,
                        cosmic_rays=cosmic_rays, overhead=overhead)
    clock = _shoot_lights(session, stars, clock, order=_light_order(filters, n_light, interleave=interleave),
                          exptime=light_exptime, dither=dither, rotation=rotation, sky=sky, fwhm=fwhm,
                          cosmic_rays=cosmic_rays, overhead=overhead)
    clock = max(clock, start + timedelta(hours=10))
    _shoot_dawn(session, clock, filters=filters, n_flat=n_flat, flat_exptime=flat_exptime, flat_level=flat_level,
                overhead=overhead)
    logger.debug("wrote synthetic night into %s: %s", directory, {k: len(v) for k, v in truth.files.items()})
    return truth
