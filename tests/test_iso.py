"""A DSLR's ISO is its gain setting: frames at different ISO never share masters or stacks.

Ekos' indi_gphoto writes ISOSPEED, other programs ISO, and no GAIN card. The ISO is part of the
camera set-up like a CMOS camera's GAIN setting, and never taken for a gain in e-/ADU.
Ground truth from :mod:`ccdwatch.synth`: the same sensor at twice the ISO gives twice the ADU per
electron (half the e-/ADU), so its dark current and hot pixels are twice as bright in ADU.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.daemon.watch import Watcher
from ccdwatch.detector import DetectorConfig, detector_values
from ccdwatch.headers import camera_key, normalise
from ccdwatch.models import Calibrated, Frame, Master
from ccdwatch.pipeline import Pipeline

from .helpers import make_config

ISO800 = synth.Camera(shape=(64, 80), hot_pixel_fraction=2e-3, instrument="Canon DSLR EOS 6D")
#: the same sensor at ISO 1600: twice the ADU per electron
ISO1600 = dataclasses.replace(ISO800, gain=ISO800.gain / 2, dark_current=2 * ISO800.dark_current,
                              hot_pixel_rate=2 * ISO800.hot_pixel_rate, read_noise=2 * ISO800.read_noise)
START = datetime(2024, 7, 1, 21, 0, tzinfo=UTC)
SKY, EXPTIME = 2.0, 300.0


def dslr(iso: int, imagetyp: str, key: str = "ISOSPEED") -> dict[str, object]:
    return {"NAXIS1": 6024, "NAXIS2": 4020, "INSTRUME": "Canon DSLR EOS 6D", "IMAGETYP": imagetyp,
            "EXPTIME": 120.0, "DATE-OBS": "2024-07-01T23:00:00", key: iso, "BAYERPAT": "RGGB",
            "XBINNING": 1, "YBINNING": 1}


@pytest.mark.parametrize("key", ["ISOSPEED", "ISO"])
def test_iso_is_the_gain_setting_of_the_camera_set_up(key):
    keys = {}
    for iso, typ in ((800, "Light Frame"), (1600, "Dark Frame"), (3200, "Bias Frame"), (800, "Dark Frame")):
        info = normalise(dslr(iso, typ, key), filename="f.fits", timezone="UTC")
        assert info.gain == iso and info.egain is None
        keys[(iso, typ)] = camera_key(info)
    assert keys[(800, "Light Frame")] == keys[(800, "Dark Frame")] == "Canon DSLR EOS 6D|bin1x1|6024x4020|gain=800|cfa=RGGB"
    assert len({keys[(800, "Light Frame")], keys[(1600, "Dark Frame")], keys[(3200, "Bias Frame")]}) == 3


def test_a_gain_card_wins_over_iso():
    info = normalise({**dslr(800, "LIGHT"), "GAIN": 120}, filename="f.fits", timezone="UTC")
    assert info.gain == 120


@pytest.mark.parametrize("mode", ["auto", "electrons", "setting"])
def test_iso_is_never_a_gain_in_electrons_per_adu(mode):
    for header in (dslr(800, "LIGHT"), dslr(800, "LIGHT", "ISO"), {**dslr(3, "LIGHT"), "ISO": 1.5}):
        values = detector_values(header, "Canon DSLR EOS 6D", DetectorConfig(gain_card=mode))
        assert values.gain is None and values.gain_source == "unknown"
    with_egain = detector_values({**dslr(800, "LIGHT"), "EGAIN": 1.7}, "Canon DSLR EOS 6D", DetectorConfig())
    assert (with_egain.gain, with_egain.gain_source) == (1.7, "header EGAIN")


def shoot(incoming: Path, name: str, camera: synth.Camera, iso: int, kind: str, *, minute: float, seed: int,
          exptime: float = EXPTIME) -> Path:
    """A frame as Ekos' indi_gphoto writes it: ISOSPEED, CCD-TEMP, no GAIN or EGAIN."""
    data = synth.expose(camera, kind=kind, exptime=exptime, rng=np.random.default_rng(seed),
                        sky=SKY if kind == "light" else 0.0)
    hdr = synth.frame_header(camera, kind=kind, exptime=exptime, date_obs=START + timedelta(minutes=minute),
                             filter="V" if kind in ("flat", "light") else None,
                             object="M51" if kind == "light" else None, style="ekos", ISOSPEED=iso)
    return synth.write_fits(incoming / f"{name}.fits", synth.quantise(data), hdr)


def test_lights_are_calibrated_with_darks_of_their_iso(tmp_path):
    """ISO 800 lights, with biases, flats and darks at ISO 800 and darks at ISO 1600 (twice the
    dark signal in ADU): before, every frame had one camera set-up and the six darks one master
    (its hot pixels 1.5x those of the lights)."""
    cfg = make_config(tmp_path, night={"timezone": "UTC"})
    inc = cfg.paths.incoming
    for i in range(3):
        shoot(inc, f"bias_{i}", ISO800, 800, "bias", minute=i, seed=100 + i, exptime=0.0)
        shoot(inc, f"flat_{i}", ISO800, 800, "flat", minute=5 + i, seed=300 + i, exptime=3.0)
        shoot(inc, f"dark800_{i}", ISO800, 800, "dark", minute=10 + 6 * i, seed=200 + i)
        shoot(inc, f"dark1600_{i}", ISO1600, 1600, "dark", minute=30 + 6 * i, seed=400 + i)
    light = shoot(inc, "light_0", ISO800, 800, "light", minute=60, seed=500)
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    with cat.reader() as s:
        darks = {m.camera_key.split("|")[3]: m for m in s.scalars(select(Master).where(Master.kind == "dark"))}
        assert sorted(darks) == ["gain=1600", "gain=800"] and {m.n_frames for m in darks.values()} == {3}
        frame = s.scalars(select(Frame).where(Frame.path == str(light))).one()
        cal = s.scalars(select(Calibrated).where(Calibrated.frame_id == frame.id, Calibrated.current)).one()
        assert cal.dark_id == darks["gain=800"].id
        path = cal.path
    cat.close()
    header = fits.getheader(path)
    assert header["BUNIT"] == "adu"  # the ISO was not taken for a gain
    calibrated = fits.getdata(path)
    hot = synth.hot_pixels(ISO800)
    assert abs(np.median(calibrated[~hot]) - SKY * EXPTIME) < 10
    assert abs(np.median(calibrated[hot] - SKY * EXPTIME)) < 300  # was -3000: the ISO 1600 darks mixed in
