"""What the synthetic camera's acquisition program writes: header cards in the style of MaxIm DL,
N.I.N.A. or Ekos, and the FITS file itself."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ccdwatch.synth.camera import KINDS, Camera

__all__ = ["STYLES", "frame_header", "write_fits"]


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
    **extra: builtins.object,
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

    A colour camera adds BAYERPAT (and, but for Ekos, XBAYROFF/YBAYROFF = 0 and ROWORDER
    'TOP-DOWN'). All styles carry INSTRUME, DATE-OBS (ISO 8601 UTC, milliseconds, no zone suffix),
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
    header: dict[str, builtins.object] = {}
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
        header["EGAIN"] = camera.gain if camera.header_gain is None else camera.header_gain
        header["SWCREATE"] = "N.I.N.A. 3.1.2.9001"
    elif style == "maxim":
        header["EGAIN"] = camera.gain if camera.header_gain is None else camera.header_gain
        header["SWCREATE"] = "MaxIm DL Version 6.50"
    else:
        header["PROGRAM"] = "KStars"
    if camera.bayer_pattern is not None:  # the stored array's pattern, its rows read top-down
        header["BAYERPAT"] = camera.bayer_pattern
        if style != "ekos":
            header["XBAYROFF"] = 0
            header["YBAYROFF"] = 0
            header["ROWORDER"] = "TOP-DOWN"
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
