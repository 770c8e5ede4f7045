"""The gain measured from the flats by photon transfer (`ccdwatch.ptc`) against synthetic truth, and
what the pipeline does with it: the master flat's cards and record, the warning when the header's
gain lies (none when it is right), ``detector.gain_from_flats = "use"``."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import calib, noise, ptc, synth
from ccdwatch.catalog import Catalog
from ccdwatch.daemon.watch import Watcher
from ccdwatch.detector import DetectorConfig, DetectorValues, gain_check, parse_detector
from ccdwatch.models import Calibrated, Frame, Master
from ccdwatch.pipeline import Pipeline
from ccdwatch.report.checks import night_warnings
from ccdwatch.report.collect import collect

from .helpers import make_config


def flats(camera: synth.Camera, n: int, seed: int) -> tuple[list[np.ndarray], float]:
    """``n`` bias-subtracted flats (ADU) and the read noise measured from 5 biases (ADU)."""
    rng = np.random.default_rng(seed)
    biases = [synth.quantise(synth.expose(camera, kind="bias", exptime=0.0, rng=rng)).astype(np.float32)
              for _ in range(5)]
    bias = calib.combine(biases, method="median")
    out = [synth.quantise(synth.expose(camera, kind="flat", exptime=3.0, rng=rng)).astype(np.float32) - bias
           for _ in range(n)]
    return out, noise.pair_noise(biases)


@pytest.mark.parametrize("gain", [0.8, 1.5, 3.0])
def test_gain_from_five_flats_within_three_percent(gain):
    camera = synth.Camera(shape=(256, 384), gain=gain, read_noise=8.0, seed=3)
    frames, rn = flats(camera, 5, seed=int(gain * 10))
    m = ptc.photon_transfer_gain(frames, read_noise=rn)
    assert m is not None and m.pairs == 4 and m.read_noise == pytest.approx(8.0, rel=0.05)
    assert m.gain == pytest.approx(gain, rel=0.03)
    # the standard error is honest: small, and the truth within 4 of it (or 1 %)
    assert 0 < m.scatter < 0.02 * gain
    assert abs(m.gain - gain) < max(4 * m.scatter, 0.01 * gain)
    # the read noise matters little at a flat's level: neglected, the gain comes out < 1 % low
    rough = ptc.photon_transfer_gain(frames)
    assert rough is not None and 0.99 < rough.gain / m.gain < 1.0


def test_no_measurement_from_one_flat_or_tiny_frames():
    frames, _ = flats(synth.Camera(shape=(64, 64), seed=1), 2, seed=1)
    assert ptc.photon_transfer_gain(frames[:1]) is None
    assert ptc.photon_transfer_gain([f[:10, :10] for f in frames]) is None


def used(gain: float | None, source: str = "header EGAIN") -> DetectorValues:
    return DetectorValues(gain, source if gain else "unknown", None, "unknown")


def test_gain_check_names_both_values_the_camera_and_the_fix():
    cfg = DetectorConfig()
    assert gain_check(1.29, 0.01, used(1.4), "QSI 532", cfg) is None  # 8 %: within 20 %
    level, message = gain_check(1.29, 0.01, used(2.4), "QSI 532", cfg)
    assert level == "warning"
    assert "1.29" in message and "2.4" in message and "header EGAIN" in message
    assert '[detector.cameras."QSI 532"] gain = 1.29' in message
    assert "use the measured gain" not in message  # "warn": the lights keep the header's gain
    tight = dataclasses.replace(cfg, gain_tolerance=0.05)
    assert gain_check(1.29, 0.01, used(1.4), "QSI 532", tight)[0] == "warning"
    level, message = gain_check(1.29, 0.01, used(None), "QSI 532", cfg)
    assert level == "note" and "no gain is known" in message
    use = dataclasses.replace(cfg, gain_from_flats="use")
    assert "use the measured gain" in gain_check(1.29, 0.01, used(2.4), "QSI 532", use)[1]


def test_gain_from_flats_settings():
    cfg = parse_detector({"gain_from_flats": "use", "gain_tolerance": 0.1})
    assert (cfg.gain_from_flats, cfg.gain_tolerance) == ("use", 0.1)
    assert parse_detector({}).gain_from_flats == "warn"
    with pytest.raises(ValueError, match="detector.gain_from_flats"):
        parse_detector({"gain_from_flats": "yes"})
    with pytest.raises(ValueError, match="detector.gain_tolerance"):
        parse_detector({"gain_tolerance": 0})


# ------------------------------------------------------------------------------ the pipeline
TRUE_GAIN = 1.5
LYING = synth.Camera(shape=(160, 224), gain=TRUE_GAIN, header_gain=2.4, instrument="Liar 1", seed=5)


def reduce(tmp_path, camera: synth.Camera, mode: str = "warn"):
    cfg = make_config(tmp_path, detector={"gain_from_flats": mode})
    truth = synth.make_night(cfg.paths.incoming, camera=camera, seed=11, n_bias=5, n_dark=3, n_flat=5,
                             filters=("V",), n_light=2, light_exptime=200.0, dark_exptime=200.0, sky=5.0,
                             n_stars=20)
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    return cfg, truth, cat


def flat_master(cat: Catalog) -> tuple[Master, fits.Header, list[str], list[str]]:
    with cat.reader() as s:
        flat = s.scalars(select(Master).where(Master.kind == "flat")).one()
        s.expunge(flat)
        warnings, notes = night_warnings(collect(s, flat.night))
    return flat, fits.getheader(flat.path), warnings, notes


def sky_noise(truth: synth.NightTruth, frame: Frame, hdul: fits.HDUList) -> tuple[float, float]:
    """A calibrated light's predicted (UNCERT) and measured noise on its truly star-free sky."""
    index = [p.name for p in truth.files["light"]].index(frame.path.rsplit("/", 1)[-1])
    stars = synth.render_stars(LYING.shape, truth.light_stars(index), fwhm=truth.fwhm, exptime=200.0)
    sky = (stars < 0.01) & ~synth.hot_pixels(LYING)
    sky[:4], sky[-4:], sky[:, :4], sky[:, -4:] = False, False, False, False
    predicted = math.sqrt(float(np.mean(np.square(hdul["UNCERT"].data[sky]))))
    return predicted, float(np.std(hdul[0].data[sky]))


def test_a_lying_header_gain_is_measured_and_warned_about_once(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        cfg, truth, cat = reduce(tmp_path, LYING)
    flat, header, warnings, _ = flat_master(cat)
    assert header["GAINMEAS"] == pytest.approx(TRUE_GAIN, rel=0.03) and header["GAINPAIR"] == 4
    assert 0 < header["GAINMERR"] < 0.03
    assert flat.params["gain_measured"] == header["GAINMEAS"]
    assert (flat.params["gain_used"], flat.params["gain_used_source"]) == (2.4, "header EGAIN")
    logged = [r for r in caplog.records if r.levelno == logging.WARNING and "gain measured" in r.getMessage()]
    assert len(logged) == 1
    assert '[detector.cameras."Liar 1"] gain = 1.5' in logged[0].getMessage()
    assert "2.4" in logged[0].getMessage()
    assert [w for w in warnings if "gain measured" in w and f"#{flat.id}" in w]
    # "warn" changes nothing else: the lights keep the header's gain, and their UNCERT is too small
    # (sky 1000 ADU, read noise 8 ADU: sqrt((1000/2.4 + 64) / (1000/1.5 + 64)) = 0.81)
    with cat.reader() as s:
        c = s.scalars(select(Calibrated).where(Calibrated.current)).first()
        hdul = fits.open(c.path)
        assert hdul[0].header["GAIN"] == 2.4
        predicted, measured_noise = sky_noise(truth, s.get(Frame, c.frame_id), hdul)
        assert predicted / measured_noise == pytest.approx(0.81, abs=0.04)
    cat.close()


def test_no_warning_when_the_header_gain_is_right(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        cfg, truth, cat = reduce(tmp_path, dataclasses.replace(LYING, header_gain=None))
    flat, header, warnings, notes = flat_master(cat)
    assert header["GAINMEAS"] == pytest.approx(TRUE_GAIN, rel=0.03)
    assert "gain_check" not in flat.params
    assert not [r for r in caplog.records if "gain measured" in r.getMessage()]
    assert not [w for w in warnings + notes if "gain measured" in w]
    cat.close()


def test_use_gives_the_lights_the_measured_gain_and_an_honest_uncertainty(tmp_path):
    cfg, truth, cat = reduce(tmp_path, LYING, mode="use")
    flat, header, warnings, _ = flat_master(cat)
    measured = header["GAINMEAS"]
    assert [w for w in warnings if "use the measured gain" in w]
    with cat.reader() as s:
        for c in s.scalars(select(Calibrated).where(Calibrated.current)):
            frame = s.get(Frame, c.frame_id)
            hdul = fits.open(c.path)
            assert hdul[0].header["GAIN"] == measured and hdul[0].header["BUNIT"] == "electron"
            assert "measured from the flats" in hdul[0].header.comments["GAIN"]
            predicted, measured_noise = sky_noise(truth, frame, hdul)
            assert predicted == pytest.approx(measured_noise, rel=0.04)
    cat.close()
