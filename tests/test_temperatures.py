"""Which temperature a dark was taken at, and which darks make one master.

* Programs write SET-TEMP whatever the cooler achieved (N.I.N.A., MaxIm, SGP): the set-point stands
  for the temperature only when the measured CCD-TEMP is within ``masters.temperature_tolerance``
  of it; else the measured temperature is used, and the frame says so.

Ground truth from :mod:`ccdwatch.synth`: a warm camera is the same camera (same fixed pattern) with
8x the dark current, as a sensor ~15 degC warmer has.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.daemon.watch import Watcher
from ccdwatch.headers import normalise
from ccdwatch.keys import CalibKey, temperature_ref
from ccdwatch.models import Calibrated, Frame, Master
from ccdwatch.pipeline import Pipeline

from .helpers import make_config

COLD = synth.Camera(shape=(64, 80), hot_pixel_fraction=2e-3)
#: the same sensor, warm: 8x the dark current and hot pixels 8x as bright
WARM = dataclasses.replace(COLD, dark_current=0.4, hot_pixel_rate=160.0)
START = datetime(2024, 7, 1, 21, 0, tzinfo=UTC)
SKY = 2.0  # ADU/s
EXPTIME = 300.0


def shoot(incoming: Path, name: str, camera: synth.Camera, kind: str, *, minute: float, seed: int,
          exptime: float = EXPTIME, cards: dict[str, object] | None = None) -> Path:
    """One frame of ``camera`` (headers as MaxIm writes them, with ``cards`` replacing theirs)."""
    rng = np.random.default_rng(seed)
    sky = SKY if kind == "light" else 0.0
    data = synth.expose(camera, kind=kind, exptime=exptime, rng=rng, sky=sky)
    hdr = synth.frame_header(camera, kind=kind, exptime=exptime, date_obs=START + timedelta(minutes=minute),
                             filter="V" if kind in ("flat", "light") else None,
                             object="M51" if kind == "light" else None)
    hdr.update(cards or {})
    return synth.write_fits(incoming / f"{name}.fits", synth.quantise(data), hdr)


def run_once(cfg) -> Catalog:
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    return cat


def frame_like(**values: object) -> SimpleNamespace:
    base = {"imagetyp": "dark", "camera_key": "cam", "exptime": 300.0, "filter": None, "set_temp": None,
            "ccd_temp": None}
    return SimpleNamespace(**{**base, **values})


# ------------------------------------------------------------------------ set-point not reached
@pytest.mark.parametrize(("ccd", "expected"), [(-10.0, -10.0), (-9.9, -10.0), (-8.0, -10.0), (-7.9, -7.9),
                                               (18.3, 18.3), (None, -10.0)])
def test_set_point_stands_only_when_reached(ccd, expected):
    frame = frame_like(set_temp=-10.0, ccd_temp=ccd)
    assert temperature_ref(frame, 2.0) == expected
    assert temperature_ref(frame_like(ccd_temp=ccd), 2.0) == ccd  # no set-point: the measured one


def test_darks_off_their_set_point_are_not_keyed_at_it():
    reached = CalibKey.of(frame_like(set_temp=-10.0, ccd_temp=-9.9), 2.0)
    warm = CalibKey.of(frame_like(set_temp=-10.0, ccd_temp=18.3), 2.0)
    assert str(reached).endswith("|T=-10")
    assert warm != reached and str(warm).endswith("|T=18")


def test_header_warns_when_the_sensor_missed_its_set_point():
    base = {"IMAGETYP": "DARK", "EXPTIME": 300.0, "DATE-OBS": "2024-07-01T23:00:00", "INSTRUME": "ZWO ASI294MM Pro",
            "SET-TEMP": -10.0}
    warm = normalise({**base, "CCD-TEMP": 18.3}, filename="dark.fits", timezone="UTC")
    assert any("sensor not at its set-point" in w and "18.3" in w for w in warm.warnings)
    cold = normalise({**base, "CCD-TEMP": -9.9}, filename="dark.fits", timezone="UTC")
    assert not any("set-point" in w for w in cold.warnings)
    strict = normalise({**base, "CCD-TEMP": -9.0}, filename="dark.fits", timezone="UTC", setpoint_tolerance=0.5)
    assert any("sensor not at its set-point" in w for w in strict.warnings)


def test_warm_lights_get_the_warm_darks_not_the_set_point_ones(tmp_path):
    """A summer night: the cooler set to -20 reaches it at dusk (5 darks), then gives up at -5,
    where 5 more darks and the lights are taken; every header says SET-TEMP = -20. The warm lights
    must be calibrated with the warm darks: the sky comes out at its true level and the hot pixels
    (8x brighter when warm) are removed."""
    cfg = make_config(tmp_path, night={"timezone": "UTC"})
    inc = cfg.paths.incoming
    for i in range(5):
        shoot(inc, f"bias_{i}", COLD, "bias", minute=i, seed=100 + i, exptime=0.0)
        shoot(inc, f"dark_cold_{i}", COLD, "dark", minute=10 + 6 * i, seed=200 + i)
        shoot(inc, f"flat_{i}", COLD, "flat", minute=50 + i, seed=300 + i, exptime=3.0)
        shoot(inc, f"dark_warm_{i}", WARM, "dark", minute=60 + 6 * i, seed=400 + i, cards={"CCD-TEMP": -5.0})
    lights = [shoot(inc, f"light_{i}", WARM, "light", minute=100 + 6 * i, seed=500 + i, cards={"CCD-TEMP": -5.0})
              for i in range(3)]
    cat = run_once(cfg)
    with cat.reader() as s:
        darks = {m.ccd_temp: m for m in s.scalars(select(Master).where(Master.kind == "dark"))}
        assert sorted(darks) == [-20.0, -5.0]  # two masters: the set-point ones and the warm ones
        assert darks[-5.0].n_frames == darks[-20.0].n_frames == 5
        light = s.scalars(select(Frame).where(Frame.path == str(lights[0]))).one()
        assert any("sensor not at its set-point" in w for w in light.header_warnings)
        cal = s.scalars(select(Calibrated).where(Calibrated.frame_id == light.id, Calibrated.current)).one()
        assert cal.dark_id == darks[-5.0].id and not cal.partial
        events = " ".join(e.detail or "" for e in light.events)
        assert "sensor not at its set-point" in events
        path = cal.path
    cat.close()
    calibrated = fits.getdata(path) / fits.getheader(path)["GAIN"]  # ADU
    hot = synth.hot_pixels(COLD)
    truth = SKY * EXPTIME  # flat-fielded sky, ADU
    assert abs(np.median(calibrated[~hot]) - truth) < 10  # was 105 ADU too high: the dark current of -20
    assert abs(np.median(calibrated[hot] - truth)) < 500  # was +45000 ADU: 8x brighter hot pixels left
