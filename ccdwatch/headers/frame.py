"""The normalised frame: :class:`FrameInfo`, :func:`normalise` and the camera set-up key."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ccdwatch.headers.cards import _Cards
from ccdwatch.headers.cfa import header_pattern
from ccdwatch.headers.classify import ClassificationRule, ImageType, _base_name, _identify
from ccdwatch.headers.dates import _date_obs
from ccdwatch.headers.keywords import (
    _CCD_TEMP_KEYS,
    _EGAIN_KEYS,
    _EXPTIME_KEYS,
    _GAIN_KEYS,
    _INSTRUMENT_KEYS,
    _OFFSET_KEYS,
    _READOUT_KEYS,
    _SET_TEMP_KEYS,
    _SOFTWARE_KEYS,
    _TELESCOPE_KEYS,
)
from ccdwatch.headers.night import _check_start_hour, _night, _resolve_zone, site_zone
from ccdwatch.headers.pixels import PixelEvidence
from ccdwatch.headers.quantities import _CELSIUS, _binning, _coordinates, _exposure, _longitude, _shape
from ccdwatch.headers.sections import OverscanPlan, OverscanRules, frame_overscan
from ccdwatch.headers.values import _range
from ccdwatch.keys import TEMPERATURE_TOLERANCE, off_setpoint

# The package's logger, as before the split (the log format shows the logger name).
logger = logging.getLogger("ccdwatch.headers")


@dataclass(frozen=True)
class FrameInfo:
    """A frame's header, normalised. Units: seconds, degC, degrees; times aware UTC."""

    imagetyp: ImageType
    type_source: str
    """Human explanation: ``"IMAGETYP='Bias Frame'"``, ``"rule 2 (glob 'bias*')"``,
    ``"no image-type keyword ..."``."""
    exptime: float | None
    filter: str | None
    object: str | None
    date_obs: datetime | None
    """Start of exposure, timezone-aware UTC."""
    night: str | None
    """``'YYYY-MM-DD'``: the local date at the start of the night."""
    xbin: int
    ybin: int
    naxis1: int | None
    naxis2: int | None
    ccd_temp: float | None
    set_temp: float | None
    gain: float | None
    """Camera gain SETTING (CMOS 'GAIN', else a DSLR's ISOSPEED or ISO), not e-/ADU."""
    egain: float | None
    """Electrons per ADU."""
    offset: float | None
    readout_mode: str | None
    instrument: str | None
    telescope: str | None
    ra_deg: float | None
    dec_deg: float | None
    site_longitude: float | None
    """Degrees, east positive, in (-180, 180]."""
    software: str | None
    warnings: tuple[str, ...] = ()
    classified_by: str = "header"
    """Which evidence decided the type: ``rule``, ``header``, ``path``, ``pixels`` or ``none``."""
    ignored: bool = False
    """A rule says ccdwatch must not use this frame (``imagetyp = "ignore"``)."""
    rule: int | None = None
    """1-based index of the classification rule that set the type."""
    bayer_pattern: str | None = None
    """CFA pattern of the array as stored (``data[0, 0]`` has colour ``bayer_pattern[0]``), e.g.
    ``"RGGB"``; None for a monochrome frame. See :mod:`ccdwatch.headers.cfa`."""
    overscan: OverscanPlan | None = None
    """Overscan strip and data section (BIASSEC/TRIMSEC/DATASEC or ``[overscan.cameras]``) and how
    the level is measured; None: the frame is used whole. See :mod:`ccdwatch.headers.sections`."""


def _checked_exposure(cards: _Cards, imagetyp: ImageType, exptime: float | None) -> float | None:
    """The exposure time (s), warning when it is missing (but for a bias) or long for a bias."""
    missing = exptime is None and not any(cards.present(k) for k in _EXPTIME_KEYS)
    if missing and imagetyp is not ImageType.BIAS:
        cards.warn("exposure time: no EXPTIME/EXPOSURE card")
    if imagetyp is ImageType.BIAS and exptime is not None and exptime > 1.0:
        cards.warn(f"exposure time: a bias with an exposure of {exptime:g} s")
    return exptime


def _temperatures(cards: _Cards, setpoint_tolerance: float) -> tuple[float | None, float | None]:
    """(CCD-TEMP, SET-TEMP) in degC, warning when the sensor was not at its set-point."""
    temperature = _range(-273.15, 100.0)
    ccd_temp = cards.number(_CCD_TEMP_KEYS, "CCD temperature", check=temperature, units=_CELSIUS)
    set_temp = cards.number(_SET_TEMP_KEYS, "set-point temperature", check=temperature, units=_CELSIUS)
    if ccd_temp is not None and set_temp is not None and off_setpoint(ccd_temp, set_temp, setpoint_tolerance):
        cards.warn(f"CCD temperature: sensor not at its set-point (CCD-TEMP {ccd_temp:g} degC, SET-TEMP "
                   f"{set_temp:g} degC, more than {setpoint_tolerance:g} degC apart): its measured temperature "
                   "is used to match darks")
    return ccd_temp, set_temp


def normalise(
    header: Mapping[str, Any],
    *,
    filename: str,
    rules: Sequence[ClassificationRule] = (),
    timezone: str = "auto",
    night_start_hour: float = 12.0,
    pixels: PixelEvidence | None = None,
    bayer_pattern: str = "auto",
    bayer_instruments: Mapping[str, str] | None = None,
    overscan: OverscanRules | None = None,
    setpoint_tolerance: float = TEMPERATURE_TOLERANCE,
) -> FrameInfo:
    """Turn an untrusted raw FITS header into a :class:`FrameInfo`.

    Parameters
    ----------
    header : Mapping[str, Any]
        Raw header (astropy Header or dict). Never modified.
    filename : str
        The file's path relative to the incoming directory (or its name): its folder and file
        names are evidence of the type, and ``rules`` match them.
    rules : sequence of ClassificationRule, optional
        Applied in order; for each of image type, filter and object, the first matching rule
        that sets it overrides the header.
    timezone : str, optional
        For the night label and for DATE-LOC; see :func:`night_label`.
    night_start_hour : float, optional
        Local hour at which the night label changes (default 12).
    pixels : PixelEvidence, optional
        Statistics of the frame's pixels, which decide where the header and the path disagree.
    bayer_pattern : str, optional
        ``"auto"`` (the header's BAYERPAT/COLORTYP), ``"none"`` (monochrome) or a pattern that
        replaces the header's; see :func:`ccdwatch.headers.cfa.header_pattern`.
    bayer_instruments : mapping, optional
        The same per camera: lower-case INSTRUME -> value; it wins over ``bayer_pattern``.
    overscan : OverscanRules, optional
        ``[overscan]``: where the overscan and data sections come from (:mod:`~ccdwatch.headers.sections`).
    setpoint_tolerance : float, optional
        ``masters.temperature_tolerance``: a CCD-TEMP further from SET-TEMP (degC) is warned about.

    Returns
    -------
    FrameInfo
        Problems noticed while reading are in ``warnings``; unusable values become ``None``.

    Raises
    ------
    ValueError
        Only for a bad ``timezone`` or ``night_start_hour`` (programming/config errors), never for
        header content.
    """
    zone = _resolve_zone(timezone)
    start_hour = _check_start_hour(night_start_hour)
    cards = _Cards(header)
    exptime = _exposure(cards)
    ident = _identify(cards, filename, rules, pixels, exptime)
    imagetyp, type_source, filter_name, object_name = ident[:4]
    exptime = _checked_exposure(cards, imagetyp, exptime)
    longitude = _longitude(cards)
    date_obs = _date_obs(cards, zone if zone is not None or longitude is None else site_zone(longitude))
    night = _night(date_obs, zone, longitude, start_hour) if date_obs is not None else None
    xbin, ybin = _binning(cards)
    naxis1, naxis2 = _shape(cards)
    ccd_temp, set_temp = _temperatures(cards, setpoint_tolerance)
    ra_deg, dec_deg = _coordinates(cards)
    instrument = cards.first_text(_INSTRUMENT_KEYS)
    cfa = header_pattern(cards, naxis2=naxis2,
                         override=(bayer_instruments or {}).get((instrument or "").lower(), bayer_pattern))
    plan = frame_overscan(header, (naxis2, naxis1), instrument, overscan, warn=cards.warn, mosaic=cfa is not None)
    info = FrameInfo(
        imagetyp=imagetyp,
        type_source=type_source,
        exptime=exptime,
        filter=filter_name,
        object=object_name,
        date_obs=date_obs,
        night=night,
        xbin=xbin, ybin=ybin,
        naxis1=naxis1, naxis2=naxis2,
        ccd_temp=ccd_temp, set_temp=set_temp,
        gain=cards.number(_GAIN_KEYS, "gain setting", check=_range(0.0, 1e6)),
        egain=cards.number(_EGAIN_KEYS, "e-/ADU", check=_range(0.0, 1e6, lo_open=True)),
        offset=cards.number(_OFFSET_KEYS, "offset", check=_range(-1e9, 1e9)),
        readout_mode=cards.first_text(_READOUT_KEYS),
        instrument=instrument,
        telescope=cards.first_text(_TELESCOPE_KEYS),
        ra_deg=ra_deg, dec_deg=dec_deg,
        site_longitude=longitude,
        software=cards.first_text(_SOFTWARE_KEYS),
        warnings=tuple(cards.warnings),
        classified_by=ident.by,
        ignored=ident.ignored,
        rule=ident.rule,
        bayer_pattern=cfa,
        overscan=plan,
    )
    if info.warnings:
        logger.debug("%s: %s", _base_name(filename), "; ".join(info.warnings))
    return info


def _number_text(value: float) -> str:
    return f"{value:.6g}"


def camera_key(info: FrameInfo) -> str:
    """A stable, readable key of the camera set-up a frame was taken with.

    Frames can share calibration masters only when their keys are equal: instrument, binning,
    image shape, and gain setting (a DSLR's ISO) / offset / readout mode when the header gives them, and the
    Bayer pattern of a colour frame (a mosaic master must have the light's pattern: the same
    sensor read from an odd subframe origin or in the other row order is another set-up, and a
    monochrome master must not calibrate a mosaic). Filter, exposure, temperature and date are
    not part of it; a monochrome frame's key is what it always was. A frame with an overscan plan
    (:mod:`ccdwatch.headers.sections`) adds it (``os=median[2049:2080,1:2048]|trim=[1:2048,1:2048]``):
    overscan-corrected, trimmed masters only calibrate lights handled the same way.

    Returns
    -------
    str
        e.g. ``"QSI 532|bin2x2|1092x736"``, ``"ZWO ASI294MM|bin1x1|4144x2822|gain=120|offset=30"`` or
        ``"ZWO ASI294MC|bin1x1|4144x2822|gain=120|offset=30|cfa=RGGB"``.
    """

    def part(text: str | None, missing: str) -> str:
        return missing if text is None else text.replace("|", "/")

    shape = f"{info.naxis1 if info.naxis1 is not None else '?'}x{info.naxis2 if info.naxis2 is not None else '?'}"
    pieces = [part(info.instrument, "unknown camera"), f"bin{info.xbin}x{info.ybin}", shape]
    if info.gain is not None:
        pieces.append(f"gain={_number_text(info.gain)}")
    if info.offset is not None:
        pieces.append(f"offset={_number_text(info.offset)}")
    if info.readout_mode is not None:
        pieces.append(f"mode={part(info.readout_mode, '')}")
    if info.bayer_pattern is not None:
        pieces.append(f"cfa={info.bayer_pattern}")
    if info.overscan is not None:
        pieces.append(info.overscan.key)
    return "|".join(pieces)
