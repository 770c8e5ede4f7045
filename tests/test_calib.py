"""Calibration numerics (ccdwatch.calib) checked against the ground truth of ccdwatch.synth."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ccdwatch import calib
from ccdwatch.calib import (
    COMBINE_METHODS,
    calibrate,
    combine,
    dark_scale,
    hot_pixel_mask,
    normalise_flat,
    robust_stats,
)
from ccdwatch.synth import (
    Camera,
    bias_pattern,
    dark_rate,
    expose,
    flat_response,
    hot_pixels,
    quantise,
)

CAMERA = Camera()  # 256 x 384
N_BIAS = 9
N_DARK = 5
N_FLAT = 5
T_DARK = 300.0  # s
T_LIGHT = 200.0  # s
T_FLAT = 2.0  # s
SKY = 20.0  # ADU/s/pixel -> 4000 ADU in a 200 s light
FLAT_LEVEL = 20000.0  # ADU


@dataclass
class Night:
    biases: list[np.ndarray]
    darks: list[np.ndarray]
    flats: list[np.ndarray]
    light: np.ndarray
    bias: np.ndarray
    dark: np.ndarray
    flat_raw: np.ndarray
    flat: np.ndarray


def _frames(kind: str, n: int, exptime: float, rng: np.random.Generator, **kw) -> list[np.ndarray]:
    return [quantise(expose(CAMERA, kind=kind, exptime=exptime, rng=rng, **kw)) for _ in range(n)]


@pytest.fixture(scope="module")
def night() -> Night:
    """Raw uint16 frames of one synthetic night and masters built as the pipeline builds them."""
    rng = np.random.default_rng(2024)
    biases = _frames("bias", N_BIAS, 0.0, rng)
    darks = _frames("dark", N_DARK, T_DARK, rng)
    flats = _frames("flat", N_FLAT, T_FLAT, rng, flat_level=FLAT_LEVEL)
    light = quantise(expose(CAMERA, kind="light", exptime=T_LIGHT, rng=rng, sky=SKY))
    bias = combine(biases, method="sigma_clip")
    dark = combine([calibrate(d, bias=bias) for d in darks], method="median")
    flat_frames = [calibrate(f, bias=bias, dark=dark, dark_scale=dark_scale(T_FLAT, T_DARK)) for f in flats]
    flat_raw = combine(flat_frames, method="median", scales=[1.0 / np.median(f) for f in flat_frames])
    return Night(biases, darks, flats, light, bias, dark, flat_raw, normalise_flat(flat_raw))


def block_medians(image: np.ndarray, size: int = 32) -> np.ndarray:
    ny, nx = image.shape
    blocks = image[: ny // size * size, : nx // size * size].reshape(ny // size, size, nx // size, size)
    return np.nanmedian(blocks, axis=(1, 3))


# ---------------------------------------------------------------------------- masters vs truth


@pytest.mark.parametrize(
    ("method", "efficiency"),
    [
        ("mean", 1.0),
        # The clip floors each pixel's spread at the strip's typical spread, so good values
        # are rarely lost: measured efficiency ~0.97 (noise x1.016) for N=9, vs 2/pi=0.64 for
        # the median (x1.25 asymptotically, x1.22 measured at N=9).
        ("sigma_clip", 0.95),
        ("median", 0.67),
    ],
)
def test_master_bias_noise_is_read_noise_over_sqrt_n(night, method, efficiency):
    master = combine(night.biases, method=method)
    residual = master - bias_pattern(CAMERA)
    expected = CAMERA.read_noise / math.sqrt(N_BIAS * efficiency)
    assert residual.std() == pytest.approx(expected, rel=0.10)
    # the level (incl. the column structure) equals the truth to within the noise
    assert abs(residual.mean()) < 5 * residual.std() / math.sqrt(residual.size)
    columns = master.mean(axis=0) - bias_pattern(CAMERA).mean(axis=0)
    assert np.std(columns) < 3 * expected / math.sqrt(CAMERA.shape[0])


def test_master_dark_equals_dark_rate_times_exposure(night):
    truth = dark_rate(CAMERA) * T_DARK
    residual = night.dark - truth
    hot = hot_pixels(CAMERA)
    # noise of one bias-subtracted dark pixel: read noise, shot noise of ~15 ADU, master bias
    single = math.sqrt(CAMERA.read_noise**2 + CAMERA.dark_current * T_DARK / CAMERA.gain)
    expected = math.sqrt(single**2 * 1.2**2 / N_DARK + (CAMERA.read_noise * 1.12) ** 2 / N_BIAS)
    _, spread = robust_stats(residual[~hot])
    assert spread == pytest.approx(expected, rel=0.15)
    assert abs(np.median(residual[~hot])) < 0.05 * expected
    # hot pixels (thousands of ADU) are reproduced to within their shot noise
    rel = np.abs(residual[hot]) / truth[hot]
    assert rel.max() < 0.05


def test_hot_pixel_mask_recovers_the_synthetic_hot_pixels(night):
    mask = hot_pixel_mask(night.dark)
    truth = hot_pixels(CAMERA)
    assert mask.dtype == bool and mask.shape == truth.shape
    recall = (mask & truth).sum() / truth.sum()
    false_positives = (mask & ~truth).sum()
    assert recall == 1.0
    assert false_positives <= 2
    assert not hot_pixel_mask(night.dark, nsigma=1e6).any()


def test_calibrated_sky_is_flat_while_raw_shows_vignetting(night):
    raw = night.light.astype(float) - bias_pattern(CAMERA)
    raw_blocks = block_medians(raw)
    # raw: the corners are ~25 % darker than the centre
    assert raw_blocks.min() / raw_blocks.max() < 0.85
    calibrated = calibrate(night.light, bias=night.bias, dark=night.dark,
                           dark_scale=dark_scale(T_LIGHT, T_DARK), flat=night.flat)
    assert calibrated.dtype == np.float32
    level = SKY * T_LIGHT
    assert np.nanmedian(calibrated) == pytest.approx(level, rel=0.005)
    # noise of one calibrated pixel: read + sky shot noise + master flat noise
    flat_noise = math.sqrt(FLAT_LEVEL / CAMERA.gain) / FLAT_LEVEL * 1.25 / math.sqrt(N_FLAT)
    pixel = math.sqrt(CAMERA.read_noise**2 + level / CAMERA.gain + (level * flat_noise) ** 2)
    block_noise = 1.2533 * pixel / 32  # median of 32 x 32 pixels
    blocks = block_medians(calibrated)
    assert np.std(blocks) < 1.5 * block_noise
    assert np.std(raw_blocks) > 100 * block_noise
    # the flat-fielded level does not depend on the distance from the centre
    ny, nx = blocks.shape
    assert abs(blocks[0, 0] - blocks[ny // 2, nx // 2]) < 5 * block_noise


def test_a_flat_pixel_that_saw_almost_no_light_is_blanked_not_amplified(night):
    """A 3x3 patch of the master flat at 1 % of its median (dust that blocks the light, a dead
    group): divided through, the light's sky there was x100 (~400,000 ADU for a 4000 ADU sky).
    With ``floor`` those pixels are NaN and blank in the light; the vignetted corners (0.75 of
    the centre, far above the floor) and every other pixel are kept, the sky flat at its truth."""
    flat_raw = night.flat_raw.copy()
    level = float(np.median(flat_raw))
    flat_raw[100:103, 200:203] = 0.01 * level
    kept = normalise_flat(flat_raw)
    assert np.nanmax(calibrate(night.light, bias=night.bias, dark=night.dark, dark_scale=dark_scale(T_LIGHT, T_DARK),
                               flat=kept)[100:103, 200:203]) > 50 * SKY * T_LIGHT  # without a floor: x100
    flat = normalise_flat(flat_raw, floor=0.05)
    blank = np.isnan(flat)
    assert blank[100:103, 200:203].all() and np.count_nonzero(blank) == 9
    assert np.nanmin(flat) > 0.6  # the corners (0.75 of the centre) stay
    np.testing.assert_array_equal(flat[~blank], kept[~blank])
    calibrated = calibrate(night.light, bias=night.bias, dark=night.dark, dark_scale=dark_scale(T_LIGHT, T_DARK),
                           flat=flat)
    assert np.isnan(calibrated[100:103, 200:203]).all()
    assert np.count_nonzero(np.isnan(calibrated)) == 9
    assert np.nanmax(block_medians(calibrated)) == pytest.approx(SKY * T_LIGHT, rel=0.01)


def test_a_mosaic_flat_floor_is_relative_to_each_colour():
    """B at 0.04 of R and G (a red lamp): its own median is its 1, nothing of it is blanked; a
    B pixel at 0.01 of B's median is."""
    from ccdwatch import colour

    rng = np.random.default_rng(3)
    mosaic = rng.normal(20000.0, 100.0, (64, 64)).astype(np.float32)
    mosaic[1::2, 1::2] *= 0.04  # RGGB: B at (1, 1)
    mosaic[5, 5] = 0.01 * 800.0
    flat = colour.normalise_flat(mosaic, "RGGB", floor=0.05)
    assert np.argwhere(np.isnan(flat)).tolist() == [[5, 5]]


def test_dark_scaling_recovers_the_true_signal(night):
    """A 200 s light calibrated with a 300 s master dark, with hot pixels included."""
    rng = np.random.default_rng(8)
    raw = quantise(expose(CAMERA, kind="light", exptime=T_LIGHT, rng=rng, sky=SKY))
    truth = flat_response(CAMERA) * SKY * T_LIGHT  # the sky signal only, ADU
    hot = hot_pixels(CAMERA)
    scaled = calibrate(raw, bias=night.bias, dark=night.dark, dark_scale=dark_scale(T_LIGHT, T_DARK))
    unscaled = calibrate(raw, bias=night.bias, dark=night.dark)
    noise = math.sqrt(CAMERA.read_noise**2 + SKY * T_LIGHT / CAMERA.gain)
    residual = scaled - truth
    assert abs(np.median(residual[~hot])) < 0.5
    # hot pixels (~4000 ADU of dark current) are removed to within their shot noise
    hot_noise = np.sqrt(noise**2 + dark_rate(CAMERA)[hot] * T_LIGHT / CAMERA.gain)
    assert np.all(np.abs(residual[hot]) < 5 * hot_noise)
    # without scaling, a third too much dark is subtracted
    deficit = (truth - unscaled)[hot]
    assert np.median(deficit / (dark_rate(CAMERA)[hot] * (T_DARK - T_LIGHT))) == pytest.approx(1.0, abs=0.05)


def test_calibrate_equals_the_reference_formula(night):
    scale = dark_scale(T_LIGHT, T_DARK)
    out = calibrate(night.light, bias=night.bias, dark=night.dark, dark_scale=scale, flat=night.flat)
    ref = (night.light.astype(np.float64) - night.bias.astype(np.float64)
           - night.dark.astype(np.float64) * scale) / night.flat.astype(np.float64)
    assert np.max(np.abs(out - ref)) < 1e-3


@pytest.mark.parametrize("scale", [1.0, 2.0 / 3.0])
def test_calibrate_in_float32_stays_within_a_few_ulps_of_float64(scale):
    """16-bit raws and float32 masters are calibrated in float32: each of its (at most four) roundings
    is half a unit in the last place of a value no larger than the inputs, so the result stays within
    2 ulps of the inputs' magnitude of the float64 formula; a flat's bad pixels give NaN as before."""
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 65536, (96, 128)).astype(">u2")
    bias = (1000.0 + rng.normal(0.0, 3.0, raw.shape)).astype(np.float32)
    dark = rng.gamma(2.0, 40.0, raw.shape).astype(np.float32)
    flat = rng.uniform(0.3, 1.2, raw.shape).astype(np.float32)
    flat[0, :4] = [0.0, -1.0, np.nan, np.inf]
    out = calibrate(raw, bias=bias, dark=dark, dark_scale=scale, flat=flat)
    r, b, d, f = (a.astype(np.float64) for a in (raw, bias, dark, flat))
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = (r - b - d * scale) / f
        bound = 2.0 * 2.0**-23 * (np.abs(r) + np.abs(b) + np.abs(d * scale)) / f
    assert out.dtype == np.float32
    assert np.isnan(out[0, :4]).all()
    good = np.ones(raw.shape, dtype=bool)
    good[0, :4] = False
    assert np.all(np.abs(out[good] - ref[good]) <= bound[good])
    assert not np.array_equal(out[good], ref[good].astype(np.float32))  # float32 arithmetic, not float64


@pytest.mark.parametrize("raw_dtype", [">u2", "<i2", "u1", ">f4"])
@pytest.mark.parametrize("master", ["bias", "dark"])
def test_calibrate_on_one_master_is_the_float64_difference_rounded_once(raw_dtype, master):
    """A dark's or a flat's input on the bias alone (one subtraction, computed in float32) has the
    bytes of the float64 difference rounded to float32, out to overflow, subnormals and NaN."""
    rng = np.random.default_rng(11)
    if raw_dtype.endswith("f4"):
        raw = (rng.normal(0.0, 1.0, (64, 80)) * 10.0 ** rng.integers(-40, 38, (64, 80))).astype(raw_dtype)
        raw[0, :3] = [np.nan, np.inf, 3.4e38]
    else:
        info = np.iinfo(np.dtype(raw_dtype))
        raw = rng.integers(info.min, info.max, (64, 80), endpoint=True).astype(raw_dtype)
    values = (rng.normal(0.0, 1.0, (64, 80)) * 10.0 ** rng.integers(-44, 38, (64, 80))).astype(np.float32)
    values[1, :5] = [np.nan, -np.inf, -0.0, 1e-45, -3.4e38]
    with np.errstate(over="ignore", invalid="ignore"):
        out = calibrate(raw, **{master: values})
        ref = (raw.astype(np.float64) - values.astype(np.float64)).astype(np.float32)
    assert out.dtype == np.float32 and np.array_equal(out.view(np.uint32), ref.view(np.uint32))


def test_calibrate_agrees_with_ccdproc(night):
    ccdproc = pytest.importorskip("ccdproc")
    import astropy.units as u
    from astropy.nddata import CCDData

    raw = CCDData(night.light.astype(np.float64), unit="adu", meta={"EXPTIME": T_LIGHT})
    bias = CCDData(night.bias.astype(np.float64), unit="adu")
    dark = CCDData(night.dark.astype(np.float64), unit="adu", meta={"EXPTIME": T_DARK})
    flat = CCDData(night.flat_raw.astype(np.float64), unit="adu")
    step = ccdproc.subtract_bias(raw, bias)
    step = ccdproc.subtract_dark(step, dark, exposure_time="EXPTIME", exposure_unit=u.s, scale=True)
    # flat_correct normalises by the flat's *mean* unless norm_value is given; our flats are
    # normalised by the median of the finite pixels
    median = float(np.median(night.flat_raw[np.isfinite(night.flat_raw)]))
    reference = ccdproc.flat_correct(step, flat, norm_value=median).data
    ours = calibrate(night.light, bias=night.bias, dark=night.dark,
                     dark_scale=dark_scale(T_LIGHT, T_DARK), flat=normalise_flat(night.flat_raw))
    assert np.max(np.abs(ours - reference)) < 1e-3


# ---------------------------------------------------------------------------- combine


def _numbered_frames(n: int = 7, shape=(23, 17), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = [rng.normal(100.0, 5.0, size=shape).astype(np.float32) for _ in range(n)]
    frames[1][3:6, 2:9] = np.nan  # a masked patch
    frames[min(4, n - 1)][10, :] = np.nan  # a masked row
    for f in frames:
        f[0, 0] = np.nan  # no valid input at all here
    return frames


@pytest.mark.parametrize("method", ["mean", "median"])
def test_combine_ignores_nan_and_counts_inputs(method):
    frames = _numbered_frames()
    out, count = combine(frames, method=method, return_count=True)
    stack = np.array(frames, dtype=np.float64)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanmean(stack, axis=0) if method == "mean" else np.nanmedian(stack, axis=0)
    assert out.dtype == np.float32 and count.dtype == np.uint16
    assert np.allclose(out, ref, equal_nan=True, rtol=0, atol=1e-4)
    assert np.isnan(out[0, 0]) and count[0, 0] == 0
    assert np.array_equal(count, np.isfinite(stack).sum(axis=0))
    assert count[4, 4] == 6 and count[10, 5] == 6 and count[4, 12] == 7


def test_sigma_clip_rejects_a_cosmic_ray_that_mean_keeps(night):
    frames = [b.astype(np.float32) for b in night.biases]
    hits = [(10, 10), (100, 200), (250, 383)]
    for y, x in hits:
        frames[3][y, x] += 5000.0  # a cosmic ray
    truth = bias_pattern(CAMERA)
    noise = CAMERA.read_noise / math.sqrt(N_BIAS)
    mean = combine(frames, method="mean")
    clipped, count = combine(frames, method="sigma_clip", return_count=True)
    for y, x in hits:
        assert mean[y, x] - truth[y, x] > 5000.0 / N_BIAS - 5 * noise
        assert abs(clipped[y, x] - truth[y, x]) < 5 * noise * 1.2
        assert count[y, x] < N_BIAS
    # everywhere else clipping keeps most values
    assert np.mean(count) > 0.9 * N_BIAS


def test_sigma_clip_matches_astropy_on_its_first_iteration():
    """One iteration about the median with the (floored) MAD sigma equals astropy's sigma_clip."""
    from astropy.stats import mad_std, sigma_clip

    from ccdwatch.calib import _spread_floor

    rng = np.random.default_rng(3)
    stack = rng.normal(0.0, 1.0, size=(11, 40, 50)).astype(np.float32)
    stack[2, ::7, ::5] += 20.0
    ours, count = combine(list(stack), method="sigma_clip", maxiters=1, return_count=True)
    floor = _spread_floor(list(stack), None)
    assert 0.8 < floor < 1.2  # the frames' noise, 1.0
    ref = sigma_clip(stack, sigma=3.0, maxiters=1, cenfunc="median", axis=0,
                     stdfunc=lambda d, axis: np.maximum(mad_std(d, axis=axis), floor))
    assert np.array_equal(count, (~ref.mask).sum(axis=0))
    assert np.allclose(ours, ref.mean(axis=0).filled(np.nan), atol=1e-5)


def test_network_median_equals_the_median_of_sorted_values():
    """The pruned sorting network (only the comparators the middle values depend on) gives the
    bytes of sorting, for every frame count it serves, with and without missing values."""
    from ccdwatch import orderstats, rejection

    rng = np.random.default_rng(8)
    for nframes in range(1, 49):
        stack = np.round(rng.normal(0.0, 4.0, size=(nframes, 300))).astype(np.float32)
        for holes in (0.0, 0.3):
            values = stack.copy()
            values[rng.random(values.shape) < holes] = np.nan
            n = rejection.count_valid(values)
            ref = orderstats.median_of_sorted(np.sort(values, axis=0), n)
            assert np.array_equal(orderstats.median_valid(values, n), ref, equal_nan=True), (nframes, holes)


@pytest.mark.parametrize("maxiters", [1, 2, 3, 5, 10])
def test_sigma_clip_mean_is_the_mean_of_the_values_kept(maxiters):
    """The clipped mean, reused from the passes wherever a pixel's last pass changed nothing, is
    bit for bit the float64 mean of the values the clipping keeps (NaN where none is kept)."""
    from ccdwatch import rejection

    rng = np.random.default_rng(maxiters)
    values = rng.normal(100.0, 5.0, size=(9, 20000)).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    values[rng.random(values.shape) < 0.05] += 60.0  # outliers: passes that change kept sets
    values[:, :50] = np.nan  # pixels with no value
    mean, count = rejection.sigma_clip(values, 1.5, maxiters, 2.0)
    keep = rejection.clip_keep(values, 1.5, maxiters, 2.0)
    ref_mean, ref_count = rejection.kept_mean(values, keep)
    assert np.array_equal(count, ref_count) and np.array_equal(count, keep.sum(axis=0))
    assert np.array_equal(mean, ref_mean, equal_nan=True) and mean.dtype == np.float64
    assert np.isnan(mean[:50]).all() and not np.isnan(mean[50:]).any()


@pytest.mark.parametrize("method", ["mean", "median", "sigma_clip"])
def test_combine_in_strips_equals_combine_at_once(method):
    frames = _numbered_frames(n=9, shape=(61, 37), seed=4)
    frames[5][30:33, 10] += 1000.0
    scales = [1.0 + 0.01 * i for i in range(9)]
    whole, whole_count = combine(frames, method=method, scales=scales, return_count=True)
    row_bytes = 9 * 37 * 4 * 6 + 37 * 32
    for budget in (1, 7 * row_bytes, 20 * row_bytes):  # 1 row, 7 rows (not a divisor of 61), 20 rows
        part, part_count = combine(frames, method=method, scales=scales, memory_budget=budget,
                                   return_count=True)
        assert np.array_equal(part, whole, equal_nan=True)
        assert np.array_equal(part_count, whole_count)
        for threads in (2, 3):  # strips shared out between threads: the same result
            par, par_count = combine(frames, method=method, scales=scales, memory_budget=budget * threads,
                                     return_count=True, threads=threads)
            assert np.array_equal(par, whole, equal_nan=True)
            assert np.array_equal(par_count, whole_count)


def test_combine_scales_multiply_each_frame():
    frames = _numbered_frames(n=5)
    scales = [0.5, 1.0, 2.0, 3.0, 0.25]
    scaled = [f * np.float32(s) for f, s in zip(frames, scales, strict=False)]
    for method in ("mean", "median", "sigma_clip"):
        assert np.array_equal(combine(frames, method=method, scales=scales),
                              combine(scaled, method=method), equal_nan=True)


def test_combine_methods_and_errors():
    frames = _numbered_frames(n=3)
    assert np.array_equal(combine(frames, method="average"), combine(frames, method="mean"), equal_nan=True)
    with pytest.raises(ValueError, match="median.*sigma_clip|sigma_clip.*median") as info:
        combine(frames, method="minmax")
    for name in COMBINE_METHODS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="shape"):
        combine([np.zeros((3, 4)), np.zeros((4, 3))])
    with pytest.raises(ValueError, match="scales"):
        combine(frames, scales=[1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        combine([])


def test_combine_reads_memmapped_npy_frames(tmp_path):
    frames = _numbered_frames(n=4)
    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"f{i}.npy")
        np.save(paths[-1], f)
    maps = [np.load(p, mmap_mode="r") for p in paths]
    assert np.array_equal(combine(maps, method="median", memory_budget=1),
                          combine(frames, method="median"), equal_nan=True)


# ---------------------------------------------------------------------------- small functions


def test_robust_stats_ignore_outliers_and_nan():
    rng = np.random.default_rng(9)
    data = rng.normal(50.0, 4.0, size=(300, 300))
    data[::10, ::10] = 1e6  # 1 % outliers
    data[5, :] = np.nan
    median, sigma = robust_stats(data)
    assert median == pytest.approx(50.0, abs=0.1)
    assert sigma == pytest.approx(4.0, rel=0.03)
    assert all(math.isnan(v) for v in robust_stats(np.full((3, 3), np.nan)))
    big = rng.normal(0.0, 2.0, size=3_000_000)  # subsampled path
    assert robust_stats(big)[1] == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize("kind", ["float32", "uint16", "ties", "nan", "int32"])
@pytest.mark.parametrize("n", [1, 2, 8191, 8192, 250_001, 1_000_000, 2_000_002])
def test_robust_stats_are_numpys_median_and_mad_of_the_sample(kind, n):
    """`robust_stats` and `robust_median` find the middle values by bracketing them
    (`orderstats.order_statistics`): the same values as ``np.median`` of the float64 sample."""
    rng = np.random.default_rng(n)
    a = {"float32": lambda: rng.normal(1000.0, 10.0, n).astype(np.float32),
         "uint16": lambda: rng.poisson(50.0, n).astype(np.uint16),
         "ties": lambda: np.round(rng.normal(0.0, 3.0, n)).astype(np.float32),
         "nan": lambda: np.where(rng.random(n) < 0.1, np.nan, rng.normal(0.0, 1.0, n)),
         "int32": lambda: rng.integers(-5, 5, n).astype(np.int32)}[kind]()
    sample = calib._finite_sample(a)
    if sample is None:
        assert math.isnan(robust_stats(a)[0]) and math.isnan(calib.robust_median(a))
        return
    median = float(np.median(sample.astype(np.float64)))
    mad = float(np.median(np.abs(sample.astype(np.float64) - median)))
    assert robust_stats(a) == (median, calib.MAD_TO_SIGMA * mad)
    assert calib.robust_median(a) == median


def test_dark_scale():
    assert dark_scale(200.0, 300.0) == pytest.approx(2.0 / 3.0)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="dark"):
            dark_scale(200.0, bad)


def test_normalise_flat_uses_median_of_finite_pixels():
    flat = flat_response(CAMERA) * 12345.0
    flat[0, :5] = np.nan
    out = normalise_flat(flat)
    assert out.dtype == np.float32
    assert np.nanmedian(out) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="median"):
        normalise_flat(np.zeros((4, 4)))


def test_calibrate_bad_flat_pixels_give_nan_not_inf():
    raw = np.full((4, 5), 1000, dtype=np.uint16)
    flat = np.ones((4, 5))
    flat[0, 0], flat[1, 1], flat[2, 2] = 0.0, -0.5, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = calibrate(raw, bias=np.full((4, 5), 100.0), flat=flat)
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1]) and np.isnan(out[2, 2])
    assert not np.isinf(out).any()
    assert np.sum(np.isfinite(out)) == 17 and np.all(out[np.isfinite(out)] == 900.0)
    with pytest.raises(ValueError, match="shape"):
        calibrate(raw, bias=np.zeros((5, 4)))


# ---------------------------------------------------------------------------- inputs unchanged


def test_no_public_function_modifies_its_inputs(night, tmp_path):
    frames = _numbered_frames(n=5)
    frames.append(night.biases[0][:23, :17].copy())  # a uint16 frame among float32 ones
    np.save(tmp_path / "m.npy", frames[0])
    frames.append(np.load(tmp_path / "m.npy", mmap_mode="r"))
    before = [f.copy() for f in frames]
    scales = [1.0, 2.0, 0.5, 1.0, 1.0, 1.0, 3.0]
    for method in ("mean", "median", "sigma_clip"):
        combine(frames, method=method, scales=scales, memory_budget=1, return_count=True)
    for f, b in zip(frames, before, strict=False):
        assert np.array_equal(f, b, equal_nan=True)

    masters = {"raw": night.light, "bias": night.bias, "dark": night.dark, "flat": night.flat}
    copies = {k: v.copy() for k, v in masters.items()}
    calibrate(night.light, bias=night.bias, dark=night.dark, dark_scale=0.5, flat=night.flat)
    flat_raw = night.flat_raw.copy()
    normalise_flat(flat_raw)
    hot_pixel_mask(night.dark)
    robust_stats(night.dark)
    for k, v in masters.items():
        assert np.array_equal(v, copies[k], equal_nan=True), k
    assert np.array_equal(flat_raw, night.flat_raw, equal_nan=True)


# ---------------------------------------------------------------------------- memory


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    from ccdwatch.calib import combine

    paths = sorted(Path(sys.argv[1]).glob("*.npy"))
    method = sys.argv[2]
    budget = int(sys.argv[3])
    frames = [np.load(p, mmap_mode="r") for p in paths]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = combine(frames, method=method, memory_budget=budget)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth": (peak - baseline) * 1024, "median": float(np.median(out[::50, ::50]))}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB and madvise: Linux")
def test_combine_stays_within_its_memory_budget(tmp_path):
    """20 frames of 2000 x 2000 float32 (320 MB in .npy files) with a 64 MB budget.

    Allowed growth of the peak resident set: budget (64 MB) + the float32 result (16 MB) + 16 MB
    margin = 96 MB; measured ~50-60 MB. Stacking everything at once would need >= 320 MB, and
    reading through memmaps without releasing their pages also grows the RSS by ~320 MB.
    """
    import json

    n, shape = 20, (2000, 2000)
    rng = np.random.default_rng(0)
    row = rng.normal(1000.0, 8.0, size=shape[1]).astype(np.float32)
    for i in range(n):
        frame = np.empty(shape, dtype=np.float32)
        frame[...] = row + np.float32(i)  # cheap to make, frames differ
        np.save(tmp_path / f"frame_{i:02d}.npy", frame)
    del frame
    budget = 64 << 20
    frame_bytes = shape[0] * shape[1] * 4
    allowed = budget + frame_bytes + (16 << 20)
    root = Path(__file__).resolve().parents[1]
    for method in ("median", "sigma_clip"):
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), method, str(budget)],
            capture_output=True, text=True, timeout=60, cwd=root, check=True,
        )
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["growth"] < allowed, (method, report["growth"] / 2**20)
        expected = float(np.median(row[::50])) + (n - 1) / 2.0
        assert report["median"] == pytest.approx(expected, abs=1.0)


@pytest.mark.parametrize("nframes", [3, 4, 5, 9, 10, 16, 40, 47, 60])
def test_median_and_mad_equal_two_medians(nframes: int) -> None:
    """The first pass of the sigma clipping takes the median and the MAD from one sort (the MAD
    as an order statistic of the two sorted lists of deviations): the same values, bit for bit,
    as two NaN-ignoring medians, with missing values, ties and pixels with no value at all."""
    from ccdwatch import orderstats

    rng = np.random.default_rng(nframes)
    x = rng.normal(100.0, 5.0, (nframes, 4000)).astype(np.float32)
    x[rng.random(x.shape) < 0.03] = np.nan
    x[:, :3] = np.nan
    x[:, 5] = 7.0
    x[: nframes // 2, 6] = np.inf  # saturated stand-ins: still ordered
    n = (~np.isnan(x)).sum(axis=0)
    centre, mad = orderstats.median_and_mad(x, n)
    expected = orderstats.median_valid(x, n)
    with np.errstate(invalid="ignore"):
        expected_mad = orderstats.median_valid(np.abs(x - expected), n)
    assert np.array_equal(centre, expected, equal_nan=True)
    assert np.array_equal(mad, expected_mad, equal_nan=True)
    assert np.isnan(centre[:3]).all() and centre[5] == 7.0 and mad[5] == 0.0


def test_spread_floor_reads_a_few_bands_and_measures_the_noise():
    """The clipping's floor samples ~32 rows in 4 bands spread over the frame: a frame warped when
    read (`ccdwatch.stripwarp.WarpedRows`) is read 4 times, not once per row, and the floor is
    the frames' per-pixel noise whatever the frames are held in."""
    from ccdwatch.calib import _sample_bands, _spread_floor

    class Counted:
        """A frame that counts how often its rows are read."""

        def __init__(self, a: np.ndarray) -> None:
            self.a, self.shape, self.reads = a, a.shape, 0

        def __getitem__(self, key: slice) -> np.ndarray:
            self.reads += 1
            return self.a[key]

    bands = _sample_bands(2048)
    assert len(bands) == 4 and sum(b - a for a, b in bands) == 32
    assert bands[0][0] == 0 and bands[-1][1] == 2048  # top and bottom both sampled
    assert _sample_bands(20) == [(0, 20)]
    rng = np.random.default_rng(5)
    frames = [rng.normal(100.0, 3.0, size=(300, 64)).astype(np.float32) for _ in range(9)]
    counted = [Counted(f) for f in frames]
    floor = _spread_floor(counted, None)
    assert all(c.reads == 4 for c in counted)
    assert floor == _spread_floor(frames, None)
    # the noise, 3.0: a MAD of 9 values is biased low (its median over pixels ~0.87 sigma)
    assert 0.8 * 3.0 < floor < 1.05 * 3.0
