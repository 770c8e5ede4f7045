"""Header normalisation across the habits of real camera programs (ccdwatch.headers)."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.time import Time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccdwatch.headers import (
    MAX_STRING,
    ClassificationRule,
    FrameInfo,
    ImageType,
    camera_key,
    header_to_jsonable,
    night_label,
    normalise,
    parse_image_type,
)

REAL_NIGHT = Path(__file__).resolve().parents[2] / "shared" / "data" / "phy241_m51"

B, D, F, L, U = ImageType.BIAS, ImageType.DARK, ImageType.FLAT, ImageType.LIGHT, ImageType.UNKNOWN

# A MaxIm DL light frame as written at the PHY241 site (QSI 532, 2x2).
MAXIM = {
    "SIMPLE": True, "BITPIX": 16, "NAXIS": 2, "NAXIS1": 1092, "NAXIS2": 736,
    "DATE-OBS": "2012-02-19T01:54:56", "EXPTIME": 200.0, "EXPOSURE": 200.0,
    "SET-TEMP": 0.0, "CCD-TEMP": 0.0, "XBINNING": 2, "YBINNING": 2, "FILTER": "I       ",
    "IMAGETYP": "LIGHT   ", "SITELAT": "53 22 49", "SITELONG": "-01 29 07", "EGAIN": 2.4000000953674316,
    "SWCREATE": "MaxIm DL Version 5.08", "OBJECT": "        ", "TELESCOP": "Meade LX200ACF 10inch f/6.7",
    "INSTRUME": "QSI 532 ",
}


def info_of(header: dict, **kwargs) -> FrameInfo:
    kwargs.setdefault("filename", "frame.fits")
    kwargs.setdefault("timezone", "UTC")
    return normalise(header, **kwargs)


# ------------------------------------------------------------------------------ image types


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bias Frame", B), ("BIAS", B), ("bias", B), ("zero", B), ("ZERO", B), ("Offset", B), ("Bias_Frame", B),
        ("Dark Frame", D), ("DARK", D), ("Flat Dark", D), ("DarkFlat", D), ("DARKFLAT", D), ("Dark-Flat", D),
        ("dark flat", D),
        ("Flat Field", F), ("FLAT", F), ("skyflat", F), ("SKYFLAT", F), ("domeflat", F), ("twilight flat", F),
        ("Flat Frame", F), ("LAMPFLAT", F), ("Flat", F), ("DFLAT", F),
        ("Light Frame", L), ("LIGHT", L), ("object", L), ("OBJECT", L), ("science", L), ("Tricolor Image", L),
        ("  light  ", L), ("Light_Frame", L), ("EXPOSE", L),
        ("Master Bias", U), ("MasterDark", U), ("master_flat", U), ("focus", U), ("FOCUS", U), ("test", U),
        ("SNAPSHOT", U), ("arc", U),
        ("", None), ("   ", None), (None, None), ("gibberish", None), ("bi as frame x", None),
    ],
)
def test_parse_image_type(value, expected):
    assert parse_image_type(value) is expected


@pytest.mark.parametrize(
    ("header", "expected", "source"),
    [
        ({"IMAGETYP": "Bias Frame"}, B, "IMAGETYP='Bias Frame'"),  # MaxIm DL, TheSkyX
        ({"IMAGETYP": "DARKFLAT"}, D, "IMAGETYP='DARKFLAT'"),  # N.I.N.A.
        ({"FRAME": "Flat"}, F, "FRAME='Flat'"),  # Ekos/INDI
        ({"OBSTYPE": "OBJECT"}, L, "OBSTYPE='OBJECT'"),  # IRAF/NOAO
        ({"IMGTYPE": "zero"}, B, "IMGTYPE='zero'"),
        ({"IMAGETYPE": "Light"}, L, "IMAGETYPE='Light'"),
        ({"imagetyp": "dark"}, D, "IMAGETYP='dark'"),  # dict with lower-case keys
        ({"IMAGETYP": "Light Frame", "FRAME": "Dark"}, L, "IMAGETYP='Light Frame'"),  # IMAGETYP first
        ({"IMAGETYP": "  ", "FRAME": "Dark"}, D, "FRAME='Dark'"),  # blank IMAGETYP skipped
        ({"IMAGETYP": "weird", "OBSTYPE": "flat"}, F, "OBSTYPE='flat'"),  # unrecognised one skipped
    ],
)
def test_image_type_keywords(header, expected, source):
    info = info_of(header)
    assert info.imagetyp is expected
    assert info.type_source == source


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"IMAGETYP": "Master Bias"}, "master"),
        ({"IMAGETYP": "focus"}, "focus"),
        ({"IMAGETYP": "test"}, "test"),
        ({"IMAGETYP": "zebra"}, "not a recognised image type"),
        ({"EXPTIME": 1.0}, "no image-type keyword"),
        ({"IMAGETYP": ""}, "no image-type keyword"),
    ],
)
def test_unknown_types_keep_a_reason(header, reason):
    info = info_of(header)
    assert info.imagetyp is U
    assert reason in info.type_source
    if header.get("IMAGETYP"):
        assert header["IMAGETYP"] in info.type_source  # says which value it was


# --------------------------------------------------------------------------------- exposure


@pytest.mark.parametrize(
    ("header", "expected", "warns"),
    [
        ({"EXPTIME": 200.0}, 200.0, False),
        ({"EXPOSURE": 2.5}, 2.5, False),  # N.I.N.A. writes EXPOSURE only
        ({"EXP_TIME": 30}, 30.0, False),
        ({"EXPOSURE TIME": "15.0"}, 15.0, False),
        ({"EXPTIME": "120 s"}, 120.0, False),
        ({"EXPTIME": "500 ms"}, 0.5, False),
        ({"EXPTIME": 0.0, "IMAGETYP": "Bias Frame"}, 0.0, False),
        ({"EXPTIME": "abc", "EXPOSURE": 30.0}, 30.0, True),  # bad first synonym: next one used
        ({"EXPTIME": "abc"}, None, True),
        ({"EXPTIME": -1.0}, None, True),
        ({"EXPTIME": float("nan")}, None, True),
        ({"EXPTIME": float("inf")}, None, True),
        ({"EXPTIME": True}, None, True),
        ({"EXPTIME": 10**400}, None, True),
        ({"IMAGETYP": "Light"}, None, True),  # missing
    ],
)
def test_exposure_variants(header, expected, warns):
    info = info_of(header)
    assert info.exptime == expected
    assert any("exposure" in w for w in info.warnings) is warns


# ----------------------------------------------------------------------------------- filter


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"FILTER": "I       "}, "I"),
        ({"FILTER": "Ha 7nm"}, "Ha 7nm"),
        ({"FILTNAME": "R"}, "R"),
        ({"FLTNAME": "B"}, "B"),
        ({"INSFILTE": "V"}, "V"),
        ({"FILTER": ""}, None),
        ({"FILTER": "   "}, None),
        ({"FILTER": "None"}, None),
        ({"FILTER": "Clear"}, "Clear"),  # a real wheel position, kept
        ({"FILTER": " ", "FILTNAME": "Lum"}, "Lum"),
        ({"FILTER1": "g'", "FILTER2": "clear"}, "g'"),
        ({"FILTER1": "open", "FILTER2": "ND1"}, "ND1"),
        ({"FILTER1": "V", "FILTER2": "ND1"}, "V+ND1"),
        ({"FILTER1": "Open", "FILTER2": "Open"}, "Open"),
        ({"FILTER1": "", "FILTER2": ""}, None),
        ({"FILTER": "R\x00\x1b[31m"}, "R [31m"),
        ({}, None),
    ],
)
def test_filter_variants(header, expected):
    assert info_of(header).filter == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"OBJECT": "M51"}, "M51"),
        ({"OBJECT": "  M 51  "}, "M 51"),
        ({"OBJECT": "        "}, None),
        ({"OBJECT": "", "OBJNAME": "NGC 5194"}, "NGC 5194"),
        ({"OBJECT": "M51\nrm -rf /\r\n"}, "M51 rm -rf /"),
        ({"OBJECT": "x" * 10_000}, "x" * MAX_STRING),
        ({"OBJECT": b"M\xff51"}, "M\ufffd51"),
        ({"OBJECT": 42}, "42"),
    ],
)
def test_object_variants(header, expected):
    assert info_of(header).object == expected


# ---------------------------------------------------------------------------------- binning


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"XBINNING": 2, "YBINNING": 2}, (2, 2)),
        ({"XBINNING": 1, "YBINNING": 2}, (1, 2)),
        ({"BINX": 3, "BINY": 3}, (3, 3)),
        ({"XBIN": "2", "YBIN": "2"}, (2, 2)),
        ({"CCDXBIN": 4, "CCDYBIN": 4}, (4, 4)),
        ({"CCDSUM": "2 2"}, (2, 2)),
        ({"CCDSUM": "1 2"}, (1, 2)),
        ({"BINNING": "2x2"}, (2, 2)),
        ({"BINNING": "3"}, (3, 3)),
        ({"BINNING": 2}, (2, 2)),
        ({"XBINNING": 2.0}, (2, 2)),  # one axis given: square
        ({}, (1, 1)),
        ({"XBINNING": 0, "YBINNING": -2}, (1, 1)),
        ({"XBINNING": "abc", "BINX": 2}, (2, 2)),
        ({"XBINNING": 1.5}, (1, 1)),
        ({"CCDSUM": "two"}, (1, 1)),
    ],
)
def test_binning_variants(header, expected):
    info = info_of(header)
    assert (info.xbin, info.ybin) == expected
    assert isinstance(info.xbin, int) and isinstance(info.ybin, int)


# ----------------------------------------------------------------------- temperature & camera


@pytest.mark.parametrize(
    ("header", "ccd", "setpoint"),
    [
        ({"CCD-TEMP": -20.1, "SET-TEMP": -20.0}, -20.1, -20.0),  # MaxIm, N.I.N.A.
        ({"CCD_TEMP": -10.0}, -10.0, None),  # Ekos
        ({"CCDTEMP": "-15.5", "SETTEMP": -15}, -15.5, -15.0),
        ({"DET-TEMP": -100.0, "CCD-SET": -100.0}, -100.0, -100.0),
        ({"TEMPERAT": "-5 C", "SET_TEMP": 0}, -5.0, 0.0),
        ({"CCD-TEMP": float("nan"), "CCD_TEMP": -7.0}, -7.0, None),
        ({"CCD-TEMP": -999.0}, None, None),
        ({"CCD-TEMP": "cold"}, None, None),
    ],
)
def test_temperature_variants(header, ccd, setpoint):
    info = info_of(header)
    assert info.ccd_temp == ccd
    assert info.set_temp == setpoint


def test_camera_settings_and_names():
    info = info_of({
        "GAIN": 120, "EGAIN": 0.25, "OFFSET": 30, "READOUTM": "High Gain Mode", "INSTRUME": "ZWO ASI2600MM Pro",
        "TELESCOP": "RedCat 51", "SWCREATE": "N.I.N.A. 3.1", "NAXIS1": 6248, "NAXIS2": 4176,
    })
    assert (info.gain, info.egain, info.offset) == (120.0, 0.25, 30.0)
    assert info.readout_mode == "High Gain Mode"
    assert (info.instrument, info.telescope, info.software) == ("ZWO ASI2600MM Pro", "RedCat 51", "N.I.N.A. 3.1")
    assert (info.naxis1, info.naxis2) == (6248, 4176)
    other = info_of({"BLKLEVEL": 10, "READMODE": 1, "CAMERA": "SBIG STL-11000", "PROGRAM": "KStars"})
    assert (other.offset, other.readout_mode) == (10.0, "1")
    assert (other.instrument, other.software) == ("SBIG STL-11000", "KStars")
    assert info_of({"CREATOR": "SharpCap"}).software == "SharpCap"
    assert info_of({"SOFTWARE": "APT"}).software == "APT"
    bad = info_of({"EGAIN": 0.0, "GAIN": "high", "NAXIS1": -5, "NAXIS2": 1.5})
    assert (bad.egain, bad.gain, bad.naxis1, bad.naxis2) == (None, None, None, None)
    assert len(bad.warnings) >= 4


# -------------------------------------------------------------------------------- RA / Dec


@pytest.mark.parametrize(
    ("header", "ra", "dec"),
    [
        ({"RA": 202.4696, "DEC": 47.1952}, 202.4696, 47.1952),  # N.I.N.A./Ekos: degrees
        ({"OBJCTRA": "13 29 52.7", "OBJCTDEC": "+47 11 43"}, 15 * (13 + 29 / 60 + 52.7 / 3600),
         47 + 11 / 60 + 43 / 3600),  # MaxIm: hours / degrees
        ({"RA": "13:29:52.7", "DEC": "-00:30:00"}, 15 * (13 + 29 / 60 + 52.7 / 3600), -0.5),  # ACP strings
        ({"RA": "13h29m52.7s", "DEC": "47d11m43s"}, 15 * (13 + 29 / 60 + 52.7 / 3600),
         47 + 11 / 60 + 43 / 3600),
        ({"RA": "202.4696", "DEC": "47.1952"}, 202.4696, 47.1952),  # decimal strings are degrees
        ({"RA": 400.0, "DEC": 10.0, "OBJCTRA": "01 00 00", "OBJCTDEC": "10 00 00"}, 15.0, 10.0),
        ({"RA": "25 00 00", "DEC": "10"}, None, None),
        ({"RA": 10.0, "DEC": 95.0}, None, None),
        ({"RA": "13 75 00", "DEC": "10"}, None, None),
        ({"RA": float("nan"), "DEC": 1.0}, None, None),
        ({"RA": 10.0}, None, None),
    ],
)
def test_coordinates(header, ra, dec):
    info = info_of(header)
    if ra is None:
        assert info.ra_deg is None and info.dec_deg is None
        assert any("coordinates" in w for w in info.warnings)
    else:
        assert info.ra_deg == pytest.approx(ra, abs=1e-9)
        assert info.dec_deg == pytest.approx(dec, abs=1e-9)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"SITELONG": "-01 29 07"}, -(1 + 29 / 60 + 7 / 3600)),  # MaxIm, west of Greenwich
        ({"SITELONG": "+10:30:00"}, 10.5),
        ({"SITELONG": "-00 30 00"}, -0.5),  # the sign of a zero-degree field survives
        ({"SITELONG": -111.6}, -111.6),
        ({"SITELONG": 248.4}, 248.4 - 360),  # INDI: 0..360 east
        ({"LONG-OBS": "111 36 00 W"}, -111.6),
        ({"OBSLONG": "139.7 E"}, 139.7),
        ({"OBSGEO-L": 17.5}, 17.5),
        ({"SITELONG": "far away", "OBSGEO-L": 5.0}, 5.0),
        ({"SITELONG": 500.0}, None),
        ({}, None),
    ],
)
def test_site_longitude(header, expected):
    lon = info_of(header).site_longitude
    if expected is None:
        assert lon is None
    else:
        assert lon == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------------------------ dates


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"DATE-OBS": "2012-02-19T03:22:22"}, utc(2012, 2, 19, 3, 22, 22)),
        ({"DATE-OBS": "2012-02-19T03:22:22.250"}, utc(2012, 2, 19, 3, 22, 22, 250000)),
        ({"DATE-OBS": "2012-02-19T03:22:22.1234567"}, utc(2012, 2, 19, 3, 22, 22, 123457)),
        ({"DATE-OBS": "2012-02-19T03:22:22Z"}, utc(2012, 2, 19, 3, 22, 22)),
        ({"DATE-OBS": "2012-02-19 03:22:22"}, utc(2012, 2, 19, 3, 22, 22)),
        ({"DATE-OBS": "2012-02-19T05:22:22+02:00"}, utc(2012, 2, 19, 3, 22, 22)),
        ({"DATE-OBS": "2012-02-19", "TIME-OBS": "03:22:22.5"}, utc(2012, 2, 19, 3, 22, 22, 500000)),
        ({"DATE-OBS": "2012-02-19", "UT": "03:22:22"}, utc(2012, 2, 19, 3, 22, 22)),
        ({"DATE-OBS": "2012-02-19", "UTSTART": "03 22 22"}, utc(2012, 2, 19, 3, 22, 22)),
        ({"DATE-OBS": "2012-02-19", "UT-START": "03:22"}, utc(2012, 2, 19, 3, 22)),
        ({"DATE-OBS": "19/02/98", "UT": "03:22:22"}, utc(1998, 2, 19, 3, 22, 22)),  # pre-2000 FITS form
        ({"DATE-OBS": "2016-12-31T23:59:60"}, utc(2017, 1, 1)),  # leap second: no exception
        ({"MJD-OBS": Time("2012-02-19T03:22:22", scale="utc").mjd}, utc(2012, 2, 19, 3, 22, 22)),
        ({"JD-OBS": Time("2012-02-19T03:22:22", scale="utc").jd}, utc(2012, 2, 19, 3, 22, 22)),
        ({"JD": str(Time("2012-02-19T03:22:22", scale="utc").jd)}, utc(2012, 2, 19, 3, 22, 22)),
        ({"DATE-OBS": "garbage", "MJD-OBS": 55976.0}, utc(2012, 2, 19)),
        ({"DATE-OBS": "2012-02-19", "MJD-OBS": 55976.5}, utc(2012, 2, 19, 12)),  # date-only: MJD wins
    ],
)
def test_date_variants(header, expected):
    when = info_of(header).date_obs
    assert when is not None and when.tzinfo is not None
    assert when.utcoffset() == timedelta(0)
    assert abs(when - expected) < timedelta(milliseconds=1)


@pytest.mark.parametrize(
    "header",
    [
        {"DATE-OBS": "not a date"},
        {"DATE-OBS": "2012-13-45T00:00:00"},
        {"DATE-OBS": "2012-02-19T25:61:00"},
        {"DATE-OBS": "2012-02-19"},  # no time of day anywhere
        {"DATE-OBS": "2012-02-19", "UT": "noon"},
        {"DATE-OBS": "0001-01-01T00:00:00"},
        {"DATE-OBS": "9999-12-31T23:59:59.9999999"},
        {"DATE-OBS": 12345},
        {"MJD-OBS": float("nan")},
        {"MJD-OBS": 1e300},
        {"JD": 55976.0},  # a reduced JD is not a JD
        {"IMAGETYP": "LIGHT"},  # no date at all
    ],
)
def test_bad_dates_give_none_and_a_warning(header):
    info = info_of(header)
    assert info.date_obs is None and info.night is None
    assert any(w.startswith("date") for w in info.warnings)


def test_date_loc_only_is_converted_with_the_known_zone_and_warned():
    # N.I.N.A. at UTC-7: DATE-LOC is the local clock; with no DATE-OBS it is the only time.
    header = {"IMAGETYP": "LIGHT", "EXPOSURE": 60.0, "DATE-LOC": "2024-03-10T14:15:30.250"}
    info = info_of(header, timezone="-07:00")
    assert info.date_obs == utc(2024, 3, 10, 21, 15, 30, 250000)
    assert info.night == "2024-03-10"
    assert any("DATE-LOC" in w for w in info.warnings)
    phoenix = info_of(header, timezone="America/Phoenix")
    assert phoenix.date_obs == info.date_obs
    # DATE-OBS present: DATE-LOC is ignored, no warning
    both = info_of({**header, "DATE-OBS": "2024-03-10T21:15:30.250"}, timezone="Europe/London")
    assert both.date_obs == info.date_obs and not any("DATE-LOC" in w for w in both.warnings)



def test_date_loc_only_at_a_site_known_by_its_longitude_is_read_in_the_sites_zone():
    """No zone set ('auto') and a site longitude: DATE-LOC is read in the site's zone (the offset of
    its longitude's hour), the zone its night is reckoned in. Read in this machine's zone, a Hawaii
    frame on a UTC server came 10 h early and a night before its own."""
    header = {"IMAGETYP": "LIGHT", "EXPOSURE": 60.0, "DATE-LOC": "2024-03-09T22:01:03.123", "SITELONG": -155.47}
    info = info_of(header, timezone="auto")
    assert info.date_obs == utc(2024, 3, 10, 8, 1, 3, 123000)
    assert info.night == "2024-03-09"
    assert any("DATE-LOC" in w and "UTC-10" in w for w in info.warnings), info.warnings
    # a zone that is set still wins; and without a longitude, this machine's zone, as before
    assert info_of(header, timezone="-08:00").date_obs == utc(2024, 3, 10, 6, 1, 3, 123000)

# ------------------------------------------------------------------------------- the night


@pytest.mark.parametrize(
    ("date_obs", "lon", "night"),
    [
        # PHY241, 1.49 deg west of Greenwich: lights after local midnight belong to the evening before
        (utc(2012, 2, 19, 1, 54, 56), -1.485, "2012-02-18"),
        (utc(2012, 2, 19, 3, 22, 22), -1.485, "2012-02-18"),
        (utc(2012, 2, 24, 17, 40, 35), -1.485, "2012-02-24"),  # twilight flats, same evening
        (utc(2012, 2, 19, 12, 10), -1.485, "2012-02-19"),  # local 12:04: a new night has begun
        (utc(2012, 2, 19, 11, 58), -1.485, "2012-02-18"),  # local 11:52: still last night
        # Arizona, 111.6 deg west: 7.44 h behind UT
        (utc(2024, 3, 11, 3, 0), -111.6, "2024-03-10"),  # local 19:33 on the 10th
        (utc(2024, 3, 11, 12, 0), -111.6, "2024-03-10"),  # local 04:33 on the 11th
        (utc(2024, 3, 11, 20, 0), -111.6, "2024-03-11"),  # local 12:33 on the 11th
        # Japan, 139.7 deg east: 9.31 h ahead of UT
        (utc(2024, 3, 10, 12, 0), 139.7, "2024-03-10"),  # local 21:19
        (utc(2024, 3, 10, 20, 0), 139.7, "2024-03-10"),  # local 05:19 on the 11th
        (utc(2024, 3, 10, 2, 0), 139.7, "2024-03-09"),  # local 11:19 on the 10th
    ],
)
def test_night_label_at_sites_west_and_east(date_obs, lon, night):
    assert night_label(date_obs, longitude_deg=lon) == night
    assert night_label(date_obs.replace(tzinfo=None), longitude_deg=lon) == night  # naive = UTC


@pytest.mark.parametrize(
    ("date_obs", "zone", "start", "night"),
    [
        (utc(2024, 7, 1, 23, 30), "UTC", 12.0, "2024-07-01"),
        (utc(2024, 7, 2, 0, 30), "UTC", 12.0, "2024-07-01"),  # across midnight
        (utc(2024, 7, 2, 11, 59), "UTC", 12.0, "2024-07-01"),
        (utc(2024, 7, 2, 12, 0), "UTC", 12.0, "2024-07-02"),
        (utc(2024, 7, 1, 22, 30), "Europe/London", 12.0, "2024-07-01"),  # BST: 23:30 local
        (utc(2024, 7, 1, 23, 30), "Europe/London", 12.0, "2024-07-01"),  # 00:30 local on the 2nd
        (utc(2024, 7, 2, 11, 30), "Europe/London", 12.0, "2024-07-02"),  # 12:30 local: next night
        (utc(2024, 7, 2, 11, 30), "UTC", 12.0, "2024-07-01"),
        (utc(2024, 7, 2, 3, 0), "+10:00", 12.0, "2024-07-02"),  # 13:00 local
        (utc(2024, 7, 2, 3, 0), "-05:30", 12.0, "2024-07-01"),  # 21:30 local on the 1st
        (utc(2024, 7, 2, 3, 0), "UTC", 2.0, "2024-07-02"),
        (utc(2024, 7, 2, 3, 0), "UTC", 4.0, "2024-07-01"),
    ],
)
def test_night_label_with_zones_and_start_hours(date_obs, zone, start, night):
    assert night_label(date_obs, timezone=zone, night_start_hour=start) == night


def test_night_label_auto_without_longitude_uses_this_machines_zone():
    when = utc(2024, 7, 2, 3, 0)
    expected = (when.astimezone() - timedelta(hours=12)).date().isoformat()
    assert night_label(when) == expected


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "+25:00", "../etc/passwd", "/etc/localtime", "UTC+"])
def test_invalid_timezone_is_a_value_error_naming_it(zone):
    with pytest.raises(ValueError, match="timezone") as excinfo:
        night_label(utc(2024, 1, 1), timezone=zone)
    assert repr(zone) in str(excinfo.value)
    with pytest.raises(ValueError):
        normalise({}, filename="x.fits", timezone=zone)


def test_normalise_night_uses_the_header_longitude_in_auto_mode():
    light = normalise(MAXIM, filename="M51_I_001.fit", timezone="auto")
    assert light.night == "2012-02-18"
    flat = normalise({**MAXIM, "DATE-OBS": "2012-02-24T17:40:35", "IMAGETYP": "FLAT"}, filename="f.fit")
    assert flat.night == "2012-02-24"
    # a site 160.5 deg (10.7 h) east: 01:54 UT is 12:37 local, so the night of the 19th has begun
    east = normalise({**MAXIM, "SITELONG": "+160:30:00"}, filename="x.fit", timezone="auto")
    assert east.night == "2012-02-19"
    # an explicit zone ignores the longitude
    assert normalise({**MAXIM, "SITELONG": "+160:30:00"}, filename="x.fit", timezone="UTC").night == "2012-02-18"


# ------------------------------------------------------------------------------------ rules


def test_rule_overrides_a_lying_header():
    rules = [ClassificationRule(glob="BIAS*", imagetyp=ImageType.BIAS)]
    info = info_of({**MAXIM, "IMAGETYP": "Light Frame"}, filename="/data/night/bias_001.fits", rules=rules)
    assert info.imagetyp is B
    assert info.type_source.startswith("rule 1 (glob 'BIAS*')")
    assert "Light Frame" in info.type_source  # says what the header claimed
    assert info_of(MAXIM, filename="m51_001.fits", rules=rules).imagetyp is L  # no match: header


def test_rules_first_match_wins():
    rules = [
        ClassificationRule(glob="*.txt", imagetyp=ImageType.DARK),  # does not match
        ClassificationRule(glob="flat*", imagetyp=ImageType.FLAT, filter="Ha"),
        ClassificationRule(glob="*", imagetyp=ImageType.LIGHT, filter="L", object="M51"),
    ]
    flat = info_of({}, filename="flat_003.fit", rules=rules)
    assert (flat.imagetyp, flat.filter, flat.object) == (F, "Ha", "M51")  # object only from rule 3
    assert flat.type_source == "rule 2 (glob 'flat*')"
    other = info_of({"IMAGETYP": "Dark"}, filename="img_003.fit", rules=rules)
    assert (other.imagetyp, other.filter, other.object) == (L, "L", "M51")
    assert other.type_source.startswith("rule 3 (glob '*')")
    reversed_rules = info_of({}, filename="flat_003.fit", rules=rules[::-1])
    assert reversed_rules.imagetyp is L and reversed_rules.type_source.startswith("rule 1 ")


def test_rule_with_header_conditions():
    rules = [
        ClassificationRule(header={"IMAGETYP": "", "OBJECT": "*flat*"}, imagetyp=ImageType.FLAT),
        ClassificationRule(glob="*.fit", header={"instrume": "QSI*"}, object="unnamed"),
    ]
    hit = info_of({"OBJECT": "Sky Flat East", "INSTRUME": "QSI 532"}, filename="a.fit", rules=rules)
    assert hit.imagetyp is F and hit.object == "unnamed"
    assert hit.type_source == "rule 1 (IMAGETYP blank, OBJECT='*flat*')"
    typed = info_of({"IMAGETYP": "Light", "OBJECT": "Sky Flat East"}, filename="a.fits", rules=rules)
    assert typed.imagetyp is L and typed.object == "Sky Flat East"  # IMAGETYP not blank, not *.fit
    assert rules[1].header == {"INSTRUME": "QSI*"}  # keys upper-cased
    assert rules[0].matches("x.fit", {"OBJECT": "FLAT"}) and not rules[0].matches("x.fit", {"OBJECT": "M51"})


def test_rule_can_set_unknown_and_a_string_type():
    rule = ClassificationRule(glob="focus*", imagetyp="unknown")
    assert rule.imagetyp is U
    info = info_of({"IMAGETYP": "Light Frame"}, filename="focus_01.fits", rules=[rule])
    assert info.imagetyp is U and "rule 1" in info.type_source


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"imagetyp": ImageType.BIAS}, "condition"),
        ({"glob": "*", "header": {}}, "at least one of"),
        ({"glob": "*", "imagetyp": "sky"}, "imagetyp"),
        ({"header": {"IMAGETYP": 3}, "filter": "R"}, "header"),
        ({"glob": 5, "filter": "R"}, "glob"),
    ],
)
def test_invalid_rules_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassificationRule(**kwargs)


def test_rules_are_hashable_and_comparable():
    a = ClassificationRule(glob="b*", header={"X": "1"}, imagetyp=ImageType.BIAS)
    b = ClassificationRule(glob="b*", header={"x": "1"}, imagetyp="bias")
    assert a == b and hash(a) == hash(b)


# ------------------------------------------------------------------------------- hostility


HOSTILE = [
    {"EXPTIME": "abc", "OBJECT": "M51\n\r\x00\x07evil", "FILTER": "\x1b[2J"},
    {"OBJECT": "A" * 10_000, "INSTRUME": "B" * 10_000, "IMAGETYP": "L" * 10_000, "DATE-OBS": "2" * 10_000},
    {"EXPTIME": float("nan"), "CCD-TEMP": float("-inf"), "GAIN": float("nan"), "RA": float("inf")},
    {"IMAGETYP": 12, "EXPTIME": [1, 2], "FILTER": {"a": 1}, "XBINNING": "2x", "NAXIS1": "wide"},
    {"IMAGETYP": None, "DATE-OBS": None, "SITELONG": None, "OBJCTRA": None, "OBJCTDEC": "+91 00 00"},
    {"IMAGETYP": b"\xff\xfe", "OBJECT": "\ud800lone surrogate", "FILTER": "\u202eR\u200b"},
    {"DATE-OBS": "2012-02-19", "UT": "99:99:99", "SITELONG": "1 2 3 4 5", "CCDSUM": "9999 1"},
    {"DATE-LOC": "2024-13-01T00:00:00", "MJD-OBS": "55976,5", "BINNING": "0x0"},
    {"SITELONG": "...", "RA": "::", "DEC": "-", "JD": -1e308, "EXPTIME": "1e999"},
    {"IMAGETYP": "Light", "EXPTIME": 10**5000, "XBINNING": 10**5000, "NAXIS1": 2**70},
    {1: "x", None: "y", "": "", "HIERARCH ESO DET DIT": 5.0},
]


@pytest.mark.parametrize("header", HOSTILE)
def test_hostile_values_never_raise(header):
    before = copy.deepcopy(header)
    info = normalise(header, filename="../../etc/passwd\x00.fits", timezone="auto")
    assert header == before  # the input is not modified
    for text in (info.filter, info.object, info.instrument, info.type_source.split("=")[0]):
        assert text is None or (len(text) <= 2 * MAX_STRING and text.isprintable())
    for text in (info.filter, info.object, info.instrument, info.readout_mode, info.software):
        assert text is None or (0 < len(text) <= MAX_STRING and text == text.strip())
    json.dumps(header_to_jsonable(header), allow_nan=False)
    camera_key(info)


def test_control_characters_and_long_strings_are_cleaned():
    info = info_of({"OBJECT": "M51\n\r\tcore", "INSTRUME": "QSI\x00 532", "FILTER": "x" * 10_000})
    assert info.object == "M51 core"
    assert info.instrument == "QSI 532"
    assert info.filter == "x" * MAX_STRING


def test_astropy_header_is_accepted_like_a_dict():
    header = fits.Header()
    for key, value in MAXIM.items():
        header[key] = value
    header["HISTORY"] = "calibrated by nobody"
    a, b = normalise(header, filename="a.fit"), normalise(dict(MAXIM), filename="a.fit")
    assert a == b
    assert (a.imagetyp, a.exptime, a.filter, a.object, a.xbin, a.ybin) == (L, 200.0, "I", None, 2, 2)
    assert (a.instrument, a.egain, a.ccd_temp, a.set_temp) == ("QSI 532", pytest.approx(2.4), 0.0, 0.0)
    assert a.warnings == ()


# ------------------------------------------------------------------------------- camera key


def test_camera_key_ignores_filter_exposure_and_date_but_not_binning():
    light = info_of(MAXIM)
    flat = info_of({**MAXIM, "IMAGETYP": "FLAT", "FILTER": "V", "EXPTIME": 0.3, "DATE-OBS": "2012-02-24T17:40:35"})
    dark = info_of({**MAXIM, "IMAGETYP": "DARK", "CCD-TEMP": -0.4})
    assert camera_key(light) == camera_key(flat) == camera_key(dark) == "QSI 532|bin2x2|1092x736"
    binned = info_of({**MAXIM, "XBINNING": 1, "YBINNING": 1, "NAXIS1": 2184, "NAXIS2": 1472})
    assert camera_key(binned) != camera_key(light)
    assert camera_key(info_of({**MAXIM, "XBINNING": 1, "YBINNING": 1})) != camera_key(light)
    assert camera_key(info_of({**MAXIM, "NAXIS1": 512, "NAXIS2": 512})) != camera_key(light)  # subframe


def test_camera_key_includes_cmos_settings_only_when_present():
    cmos = {"INSTRUME": "ZWO ASI294MM", "NAXIS1": 4144, "NAXIS2": 2822, "GAIN": 120, "OFFSET": 30}
    assert camera_key(info_of(cmos)) == "ZWO ASI294MM|bin1x1|4144x2822|gain=120|offset=30"
    assert camera_key(info_of({**cmos, "GAIN": 0})) != camera_key(info_of(cmos))
    moded = camera_key(info_of({**cmos, "READOUTM": "High|Speed"}))
    assert moded.endswith("|mode=High/Speed") and moded.count("|") == 5
    assert camera_key(info_of({})) == "unknown camera|bin1x1|?x?"


# ------------------------------------------------------------------------------------- JSON


def test_header_to_jsonable_round_trips_through_json():
    header = fits.Header()
    for key, value in MAXIM.items():
        header[key] = value
    header["COMMENT"] = "first comment"
    header["COMMENT"] = "second comment"
    header["HISTORY"] = "one history"
    header["HIERARCH ESO DET DIT"] = 5.0
    out = header_to_jsonable(header)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert out["COMMENT"] == ["first comment", "second comment"]
    assert out["HISTORY"] == ["one history"]
    assert out["EXPTIME"] == 200.0 and out["SIMPLE"] is True and out["NAXIS1"] == 1092
    assert out["FILTER"] == "I"  # astropy strips the padding
    assert out["ESO DET DIT"] == 5.0


def test_header_to_jsonable_on_hostile_dicts():
    header = {
        "A": b"\xff\x00bytes", "B": "\ud800", "C": float("-inf"), "D": complex(1, 2), "E": None,
        "F": "x" * 100_000, 7: "int key", "COMMENT": "c", "G": float("nan"), "H": float("inf"), "I": 10**5000,
        "J": 2**64, "K": -(2**63), "A ": "dup", "L": [1, 2],
    }
    out = header_to_jsonable(header)
    text = json.dumps(out, allow_nan=False)
    text.encode("utf-8")  # storable as UTF-8 (no lone surrogates)
    assert json.loads(text) == out
    assert out["C"] == "-Infinity" and out["E"] is None and out["7"] == "int key"
    assert out["COMMENT"] == ["c"] and len(out["F"]) < 20_000
    assert out["G"] == "NaN" and out["H"] == "Infinity" and out["I"].startswith("<integer")
    assert out["J"] == str(2**64) and out["K"] == -(2**63) and out["L"] == "[1, 2]"


# --------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_phy241_night():
    if not (REAL_NIGHT.is_dir() and any(REAL_NIGHT.glob("*.fit"))):
        pytest.skip("the real PHY241 night (../shared/data/phy241_m51) is not present")
    infos = {p.name: normalise(fits.getheader(p), filename=p.name) for p in sorted(REAL_NIGHT.glob("*.fit"))}
    assert len(infos) == 27
    by_type: dict[ImageType, list[FrameInfo]] = {}
    for info in infos.values():
        by_type.setdefault(info.imagetyp, []).append(info)
        # OBJECT is blank: the lights' target is the one their names give (M51_I_001.fit), no other has one
        assert info.object == ("M51" if info.imagetyp is ImageType.LIGHT else None)
        assert (info.xbin, info.ybin) == (2, 2)
        assert info.warnings == ()
        assert info.date_obs is not None and info.date_obs.tzinfo is not None
    assert {t: len(v) for t, v in by_type.items()} == {B: 3, D: 3, F: 3, L: 18}
    assert all(i.exptime == 300.0 for i in by_type[D])
    assert all(i.exptime == 200.0 and i.filter == "I" for i in by_type[L])
    assert all(i.filter == "I" for i in by_type[F])
    # the headers say 0.3, 0.3 and 0.33 s (the third twilight flat was lengthened as the sky darkened)
    assert sorted(i.exptime for i in by_type[F]) == pytest.approx([0.3, 0.3, 0.33])
    assert len({camera_key(i) for i in infos.values()}) == 1
    assert camera_key(infos["bias1.fit"]) == "QSI 532|bin2x2|1092x736"
    assert {i.night for i in by_type[L]} == {"2012-02-18"}
    assert {i.night for i in by_type[F]} == {"2012-02-24"}


# ------------------------------------------------------------------------------- properties

_KEYS = st.sampled_from([
    "IMAGETYP", "FRAME", "OBSTYPE", "EXPTIME", "EXPOSURE", "FILTER", "FILTER1", "FILTER2", "OBJECT",
    "DATE-OBS", "TIME-OBS", "UT", "MJD-OBS", "JD", "DATE-LOC", "SITELONG", "XBINNING", "YBINNING", "CCDSUM",
    "BINNING", "CCD-TEMP", "SET-TEMP", "GAIN", "EGAIN", "OFFSET", "READOUTM", "INSTRUME", "RA", "DEC",
    "OBJCTRA", "OBJCTDEC", "NAXIS1", "NAXIS2", "COMMENT",
]) | st.text(max_size=12)
_VALUES = st.none() | st.text(max_size=40) | st.integers() | st.floats() | st.booleans() | st.sampled_from([
    "2012-02-19T03:22:22", "2012-02-19", "03:22:22", "-01 29 07", "13 29 52", "2x2", "2 2", "Bias Frame",
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.dictionaries(_KEYS, _VALUES, max_size=12),
       zone=st.sampled_from(["auto", "UTC", "Europe/London", "-07:00"]))
def test_normalise_never_raises_on_random_headers(header, zone):
    info = normalise(header, filename="random.fits", timezone=zone)
    assert isinstance(info.imagetyp, ImageType) and info.type_source
    assert info.xbin >= 1 and info.ybin >= 1
    assert info.date_obs is None or info.date_obs.utcoffset() == timedelta(0)
    assert (info.night is None) == (info.date_obs is None)
    for value in (info.exptime, info.ccd_temp, info.gain, info.ra_deg, info.dec_deg, info.site_longitude):
        assert value is None or math.isfinite(value)
    json.dumps(header_to_jsonable(header), allow_nan=False)
    camera_key(info)


def test_timezone_objects_are_not_accepted_silently():
    with pytest.raises(ValueError, match="timezone"):
        night_label(utc(2024, 1, 1), timezone=UTC)  # type: ignore[arg-type]
