"""The noise model against synthetic ground truth: read noise measured from biases, predicted
variance of calibrated lights and of stacks against the measured scatter of many independent
realisations, and the gain and read-noise settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ccdwatch import calib, noise, synth
from ccdwatch.config import ConfigError, parse_config
from ccdwatch.detector import DetectorConfig, detector_values, parse_detector

CAMERA = synth.Camera(shape=(64, 96), read_noise=8.0, gain=1.5, dark_current=0.05, seed=7)
N_BIAS, N_DARK, N_FLAT = 8, 5, 5
T_DARK, T_LIGHT, SKY = 120.0, 60.0, 2.0  # s, s, ADU/s: dark scale 0.5 (the bias term does not cancel)


def stars() -> synth.Stars:
    ny, nx = CAMERA.shape
    return synth.Stars(x=np.array([20.3, 50.7, 75.1]), y=np.array([20.6, 40.2, 30.9]),
                       flux=np.array([3000.0, 8000.0, 1500.0]), shape=(ny, nx))


def shoot(kind: str, rng: np.random.Generator, **kwargs) -> np.ndarray:
    return synth.quantise(synth.expose(CAMERA, kind=kind, rng=rng, **kwargs))


@dataclass
class Realisation:
    light: np.ndarray  # calibrated, ADU
    sigma: np.ndarray  # predicted, ADU
    read_noise: float  # measured from the biases, ADU


def realise(rng: np.random.Generator) -> Realisation:
    """Masters from their own frames and one light, all with new noise, reduced as the pipeline does."""
    biases = [shoot("bias", rng, exptime=0.0).astype(np.float32) for _ in range(N_BIAS)]
    read_noise = noise.pair_noise(biases)
    bias = calib.combine(biases, method="sigma_clip")
    darks = [calib.calibrate(shoot("dark", rng, exptime=T_DARK), bias=bias) for _ in range(N_DARK)]
    dark_noise = noise.combined_noise(noise.pair_noise(darks), N_DARK, "median")
    dark = calib.combine(darks, method="median")
    scale = T_LIGHT / T_DARK
    flats = [calib.calibrate(shoot("flat", rng, exptime=3.0), bias=bias, dark=dark, dark_scale=3.0 / T_DARK)
             for _ in range(N_FLAT)]
    scales = [1.0 / calib.robust_median(f) for f in flats]
    flat_noise = noise.combined_noise(noise.pair_noise(flats, scales), N_FLAT, "median")
    flat = calib.normalise_flat(calib.combine(flats, method="median", scales=scales))
    raw = shoot("light", rng, exptime=T_LIGHT, sky=SKY, stars=stars(), fwhm=3.0)
    light = calib.calibrate(raw, bias=bias, dark=dark, dark_scale=scale, flat=flat)
    sigma = noise.light_sigma(raw, light, gain=CAMERA.gain, read_noise=read_noise, bias=bias, dark=dark,
                              dark_scale=scale, flat=flat,
                              bias_noise=noise.combined_noise(read_noise, N_BIAS, "sigma_clip"),
                              dark_noise=dark_noise, flat_noise=flat_noise)
    return Realisation(light, sigma, read_noise)


@pytest.fixture(scope="module")
def realisations() -> list[Realisation]:
    rng = np.random.default_rng(2026)
    return [realise(rng) for _ in range(160)]


def regions() -> dict[str, np.ndarray]:
    """Sky pixels (no star light to speak of) and star pixels (star light > 5x the sky), hot pixels out."""
    starlight = synth.render_stars(CAMERA.shape, stars(), fwhm=3.0, exptime=T_LIGHT)
    cold = ~synth.hot_pixels(CAMERA)
    return {"sky": cold & (starlight < 0.01), "stars": cold & (starlight > 5 * SKY * T_LIGHT)}


def test_read_noise_measured_from_biases_within_two_percent(realisations):
    measured = np.array([r.read_noise for r in realisations])
    truth = math.hypot(CAMERA.read_noise, math.sqrt(1 / 12))  # the ADC's rounding adds 1/12 ADU^2
    assert np.median(measured) == pytest.approx(truth, rel=0.02)
    assert np.all(np.abs(measured / truth - 1) < 0.06)  # each night's 8 biases alone


@pytest.mark.parametrize("region", ["sky", "stars"])
def test_predicted_variance_matches_the_scatter_of_independent_realisations(realisations, region):
    where = regions()[region]
    assert where.sum() > (2000 if region == "sky" else 30)
    lights = np.stack([r.light for r in realisations])[:, where]
    measured = lights.var(axis=0, ddof=1).mean()
    predicted = np.mean([np.square(r.sigma[where]).mean() for r in realisations])
    assert predicted / measured == pytest.approx(1.0, abs=0.05), (region, predicted, measured)


def test_inverse_variance_stack_uncertainty_matches_the_scatter_of_stacks():
    """Frames of different depth (noise 10 to 28): ivar weights, and the stack's predicted sigma
    against the scatter of 300 stacks of new noise; the weighted stack is less noisy than the
    equal-weight one."""
    rng = np.random.default_rng(5)
    sigmas = np.array([10.0, 14.0, 20.0, 28.0, 12.0])
    shape = (40, 50)
    truth = np.full(shape, 100.0)
    stacks, predicted, plain = [], [], []
    for _ in range(300):
        frames = [truth + rng.normal(0, s, shape).astype(np.float32) for s in sigmas]
        variances = [float(s * s) for s in sigmas]
        weights = [noise.frame_weight("ivar", v) for v in variances]
        out = noise.combine_weighted(frames, variances, weights, [60.0] * 5, method="sigma_clip", sigma=3.0)
        stacks.append(out.image)
        predicted.append(np.square(out.sigma).mean())
        plain.append(noise.combine_weighted(frames, variances, [1.0] * 5, [60.0] * 5, method="sigma_clip").image)
        assert np.all(out.expmap <= 300.0) and np.mean(out.expmap) > 290.0
    measured = np.stack(stacks).var(axis=0, ddof=1).mean()
    assert np.mean(predicted) / measured == pytest.approx(1.0, abs=0.03)  # 0.955 without `clip_excess`
    assert np.mean(predicted) == pytest.approx(1 / np.sum(1 / sigmas**2), rel=0.08)
    assert np.stack(plain).var(axis=0, ddof=1).mean() > 1.3 * measured


def test_equal_weights_give_calib_combine_values_exactly():
    rng = np.random.default_rng(1)
    frames = [rng.normal(100, 5, (30, 40)).astype(np.float32) for _ in range(7)]
    frames[2][5, 5] = 5000.0
    frames[3][7, 8] = np.nan
    for method in ("sigma_clip", "mean", "median"):
        out = noise.combine_weighted(frames, [25.0] * 7, [1.0] * 7, [10.0] * 7, method=method)
        values, used = calib.combine(frames, method=method, return_count=True)
        np.testing.assert_array_equal(out.image, values)
        np.testing.assert_array_equal(out.used, used)
        np.testing.assert_array_equal(out.expmap, used * 10.0)


# ------------------------------------------------------------------------------ gain and read noise
@pytest.mark.parametrize(("header", "gain", "source"), [
    ({"EGAIN": 1.3, "GAIN": 120}, 1.3, "header EGAIN"),  # ZWO: GAIN is the setting
    ({"E-GAIN": "0.82"}, 0.82, "header E-GAIN"),
    ({"GAIN": 120, "OFFSET": 30}, None, "unknown"),  # a setting, never e-/ADU
    ({"GAIN": 1.37}, 1.37, "header GAIN"),  # plausible e-/ADU
    ({"GAIN": 2}, None, "unknown"),  # a whole number: a setting unless the config says otherwise
    ({}, None, "unknown"),
])
def test_gain_from_the_header(header, gain, source):
    v = detector_values(header, "Cam", DetectorConfig())
    assert (v.gain, v.gain_source) == (gain, source)
    if "GAIN" in header and source != "header GAIN":
        assert v.gain_setting == float(header["GAIN"])


def test_gain_and_read_noise_from_the_config_per_camera():
    cfg = parse_config({"detector": {"cameras": {"QSI 532": {"gain": 1.3, "read_noise": 9},
                                                 "Mono": {"gain_card": "electrons"}}}}, base=Path("."))
    v = detector_values({"EGAIN": 2.0, "RDNOISE": 12.0}, "qsi 532", cfg.detector)
    assert (v.gain, v.read_noise) == (1.3, 9.0) and v.gain_source.startswith("config")
    assert detector_values({"GAIN": 2}, "Mono", cfg.detector).gain == 2.0
    v = detector_values({"EGAIN": 2.0, "RDNOISE": 12.0}, "Other", cfg.detector)
    assert (v.gain, v.read_noise, v.read_noise_source) == (2.0, 12.0, "header RDNOISE")


@pytest.mark.parametrize(("table", "message"), [
    ({"cameras": {"QSI": {"gian": 1.3}}}, "did you mean 'detector.cameras.QSI.gain'"),
    ({"cameras": {"QSI": {"gain": 0}}}, "'detector.cameras.QSI.gain' must be a number > 0"),
    ({"cameras": {"QSI": {"read_noise": -1}}}, "'detector.cameras.QSI.read_noise' must be a number >= 0"),
    ({"gain_card": "maybe"}, "'detector.gain_card' must be one of"),
    ({"gaincard": "auto"}, "did you mean 'detector.gain_card'"),
    ({"cameras": {"QSI": 1.3}}, "'detector.cameras.QSI' must be a table"),
])
def test_detector_settings_errors_name_the_key(table, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config({"detector": table}, base=Path("."))
    with pytest.raises(ValueError):
        parse_detector(table)



def test_light_cards_units_and_the_optional_plane():
    """Electrons with GAIN/RDNOISE cards saying where they came from; a GAIN setting kept as
    GAINSET; no gain: ADU and no UNCERT; ``calibration.uncertainty = false``: no UNCERT either."""
    from ccdwatch.jobs.uncertainty import NoiseSpec, light_noise

    rng = np.random.default_rng(3)
    raw = shoot("light", rng, exptime=T_LIGHT, sky=SKY)
    data = calib.calibrate(raw)
    values = detector_values({"EGAIN": 1.5, "GAIN": 120, "RDNOISE": 12.0}, "Cam", DetectorConfig())
    for plane in (True, False):
        unc = light_noise(NoiseSpec(**vars(values), plane=plane), raw, data.copy(), masters={}, paths={},
                          dark_scale=1.0)
        image, flux = data.copy(), np.array([100.0], np.float32)
        cards, hdus = unc.finish(image, flux)
        assert cards["BUNIT"][0] == "electron" and cards["GAIN"][0] == 1.5 and "EGAIN" in cards["GAIN"][1]
        assert cards["GAINSET"][0] == 120 and cards["RDNOISE"][0] == pytest.approx(12.0)
        np.testing.assert_allclose(image, data * np.float32(1.5), rtol=1e-6)
        assert flux[0] == pytest.approx(150.0)
        assert [h.name for h in hdus] == (["UNCERT"] if plane else [])
    unknown = detector_values({"GAIN": 120}, "Cam", DetectorConfig())
    cards, hdus = light_noise(NoiseSpec(**vars(unknown)), raw, data, masters={}, paths={}, dark_scale=1.0).finish(
        data.copy(), np.zeros(1, np.float32))
    assert cards["BUNIT"][0] == "adu" and cards["GAIN"] is None and hdus == []
