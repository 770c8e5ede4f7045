"""Physics checks of the synthetic CCD (ccdwatch.synth) against its own ground truth."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime

import numpy as np
import pytest
from astropy.io import fits

from ccdwatch import synth
from ccdwatch.synth import (
    Camera,
    Stars,
    bias_pattern,
    dark_rate,
    expose,
    flat_response,
    frame_header,
    hot_pixels,
    make_night,
    quantise,
    render_stars,
    star_field,
    transform_stars,
    write_fits,
)

SMALL = Camera(shape=(64, 96))


# ---------------------------------------------------------------------------- fixed pattern


def test_flat_response_has_median_one_and_requested_corner_drop():
    camera = Camera(vignetting=0.3)
    response = flat_response(camera)
    assert response.shape == camera.shape
    assert np.median(response) == pytest.approx(1.0, abs=1e-12)
    ny, nx = camera.shape
    box = 8
    centre = response[ny // 2 - box // 2 : ny // 2 + box // 2, nx // 2 - box // 2 : nx // 2 + box // 2].mean()
    corners = [response[:2, :2], response[:2, -2:], response[-2:, :2], response[-2:, -2:]]
    for corner in corners:
        assert corner.mean() / centre == pytest.approx(1.0 - 0.3, abs=0.02)
    # pixel-to-pixel sensitivity: ~1 % rms about the smooth vignetting profile
    smooth = synth._vignetting_profile(camera.shape, camera.vignetting)
    prnu = response / smooth
    assert np.std(prnu / np.median(prnu)) == pytest.approx(0.01, rel=0.05)


def test_fixed_pattern_depends_only_on_camera_seed():
    a, b, c = Camera(), Camera(), Camera(seed=99)
    for func in (bias_pattern, dark_rate, flat_response, hot_pixels):
        assert np.array_equal(func(a), func(b))
        assert not np.array_equal(func(a), func(c))


def test_bias_dark_and_hot_pixels_match_camera_parameters():
    camera = Camera()
    bias = bias_pattern(camera)
    assert bias.mean() == pytest.approx(camera.bias_level, abs=0.1)
    assert 0.5 < np.std(bias) < 5.0  # small fixed structure, not noise-free flat
    hot = hot_pixels(camera)
    assert hot.sum() == round(camera.hot_pixel_fraction * hot.size)
    rate = dark_rate(camera)
    assert rate[~hot].mean() == pytest.approx(camera.dark_current, rel=0.01)
    assert rate[hot].min() >= 0.5 * camera.hot_pixel_rate
    assert rate[~hot].max() <= 1.2 * camera.dark_current


# ---------------------------------------------------------------------------- stars


@pytest.mark.parametrize("fwhm", [1.2, 3.0, 6.0])
def test_render_stars_conserves_flux_and_centroid(fwhm):
    rng = np.random.default_rng(5)
    shape = (64, 80)
    for _ in range(10):
        x, y = rng.uniform(25, 55), rng.uniform(25, 40)
        star = Stars(x=np.array([x]), y=np.array([y]), flux=np.array([123.0]))
        image = render_stars(shape, star, fwhm=fwhm, exptime=10.0)
        assert image.sum() == pytest.approx(1230.0, rel=0.005)
        yy, xx = np.indices(shape)
        # 0-based pixel centres, x = column
        assert (image * xx).sum() / image.sum() == pytest.approx(x, abs=0.01)
        assert (image * yy).sum() / image.sum() == pytest.approx(y, abs=0.01)
        # second moment gives back the FWHM (Gaussian integrated over pixels adds 1/12 px^2)
        var_x = (image * (xx - x) ** 2).sum() / image.sum() - 1.0 / 12.0
        assert math.sqrt(var_x) * synth.FWHM_PER_SIGMA == pytest.approx(fwhm, rel=0.02)


def test_render_stars_total_for_a_field_and_loss_at_the_edge():
    rng = np.random.default_rng(1)
    stars = star_field((128, 160), 40, rng=rng, margin=20)
    image = render_stars((128, 160), stars, fwhm=3.0, exptime=2.0)
    assert image.sum() == pytest.approx(2.0 * stars.flux.sum(), rel=0.005)
    on_edge = Stars(x=np.array([-0.5]), y=np.array([30.0]), flux=np.array([100.0]))
    half = render_stars((64, 64), on_edge, fwhm=3.0, exptime=1.0).sum()
    assert half == pytest.approx(50.0, rel=0.01)  # the detector edge is at x = -0.5: half the star is lost


def test_star_field_respects_margin_and_flux_range():
    stars = star_field((100, 200), 500, rng=np.random.default_rng(2), flux_range=(10.0, 1000.0), margin=15)
    assert len(stars) == 500
    assert stars.x.min() >= 15 and stars.x.max() <= 200 - 1 - 15
    assert stars.y.min() >= 15 and stars.y.max() <= 100 - 1 - 15
    assert stars.flux.min() >= 10.0 and stars.flux.max() <= 1000.0
    # log-uniform: the median flux is the geometric mean of the range
    assert np.median(stars.flux) == pytest.approx(100.0, rel=0.2)


def test_transform_stars_rotates_about_the_image_centre_then_shifts():
    stars = star_field((101, 201), 30, rng=np.random.default_rng(3))
    cx, cy = 100.0, 50.0
    moved = transform_stars(stars, dx=2.5, dy=-1.0, rotation_deg=90.0)
    # a quarter turn counter-clockwise: (x - cx, y - cy) -> (-(y - cy), x - cx)
    assert np.allclose(moved.x, cx - (stars.y - cy) + 2.5)
    assert np.allclose(moved.y, cy + (stars.x - cx) - 1.0)
    assert np.array_equal(moved.flux, stars.flux)
    small = transform_stars(stars, rotation_deg=0.3)
    r0 = np.hypot(stars.x - cx, stars.y - cy)
    assert np.allclose(np.hypot(small.x - cx, small.y - cy), r0)
    back = transform_stars(transform_stars(stars, rotation_deg=0.7, center=(3.0, 4.0)), rotation_deg=-0.7,
                           center=(3.0, 4.0))
    assert np.allclose(back.x, stars.x) and np.allclose(back.y, stars.y)


# ---------------------------------------------------------------------------- exposures


def test_bias_frame_noise_is_read_noise():
    camera = SMALL
    frame = expose(camera, kind="bias", exptime=0.0, rng=np.random.default_rng(0))
    residual = frame - bias_pattern(camera)
    assert residual.mean() == pytest.approx(0.0, abs=5 * camera.read_noise / math.sqrt(residual.size))
    assert residual.std() == pytest.approx(camera.read_noise, rel=0.05)


def test_light_frame_photon_transfer_gives_gain_and_signal():
    camera = Camera(vignetting=0.0)
    sky, t = 10.0, 100.0  # ADU/s, s
    rng = np.random.default_rng(4)
    a = expose(camera, kind="light", exptime=t, rng=rng, sky=sky)
    b = expose(camera, kind="light", exptime=t, rng=rng, sky=sky)
    expected = bias_pattern(camera) + dark_rate(camera) * t + flat_response(camera) * sky * t
    good = ~hot_pixels(camera)
    assert np.median((a - expected)[good]) == pytest.approx(0.0, abs=1.0)
    # difference of two frames removes the fixed pattern: var = 2 (signal / gain + read^2)
    signal = np.median((expected - bias_pattern(camera))[good])
    variance = np.var((a - b)[good]) / 2.0
    gain = signal / (variance - camera.read_noise**2)
    assert gain == pytest.approx(camera.gain, rel=0.05)


def test_flat_frame_follows_response():
    camera = Camera()
    frame = expose(camera, kind="flat", exptime=2.0, rng=np.random.default_rng(6), flat_level=30000.0)
    illumination = frame - bias_pattern(camera)
    ratio = illumination / flat_response(camera)
    assert np.median(ratio) == pytest.approx(30000.0, rel=0.002)


def test_cosmic_rays_and_satellite_add_signal():
    camera = SMALL
    clean = expose(camera, kind="light", exptime=10.0, rng=np.random.default_rng(7), sky=1.0)
    hit = expose(camera, kind="light", exptime=10.0, rng=np.random.default_rng(7), sky=1.0, cosmic_rays=5)
    extra = hit - clean
    assert 5 <= (extra > 400).sum() <= 20
    trail = expose(camera, kind="light", exptime=10.0, rng=np.random.default_rng(7), sky=1.0, satellite=True)
    assert (trail - clean).max() > 250
    assert ((trail - clean) > 100).sum() >= min(camera.shape)  # a line across the frame


def test_expose_rejects_bad_kind_and_light_in_dark_frames():
    with pytest.raises(ValueError, match="kind"):
        expose(SMALL, kind="science", exptime=1.0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="no light"):
        expose(SMALL, kind="dark", exptime=1.0, rng=np.random.default_rng(0), sky=3.0)


def test_quantise_rounds_and_clips_like_an_adc():
    adu = np.array([-3.2, 0.4, 0.6, 1000.5, 70000.0, 40000.2])
    out = quantise(adu)
    assert out.dtype == np.uint16
    assert out.tolist() == [0, 0, 1, 1000, 65535, 40000]
    assert quantise(np.array([50000.0]), saturation=45000.0).tolist() == [45000]


# ---------------------------------------------------------------------------- headers and files

DATE = datetime(2024, 3, 10, 21, 15, 30, 250000, tzinfo=UTC)


def test_maxim_header():
    h = frame_header(Camera(), kind="light", exptime=200.0, date_obs=DATE, filter="V", object="M51")
    assert h["IMAGETYP"] == "Light Frame"
    assert h["EXPTIME"] == h["EXPOSURE"] == 200.0
    assert h["DATE-OBS"] == "2024-03-10T21:15:30.250"
    assert h["XBINNING"] == h["YBINNING"] == 1
    assert {"CCD-TEMP", "SET-TEMP", "INSTRUME", "FILTER", "OBJECT"} <= set(h)
    kinds = {k: frame_header(Camera(), kind=k, exptime=1.0, date_obs=DATE)["IMAGETYP"] for k in synth.KINDS}
    assert kinds == {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field", "light": "Light Frame"}


def test_nina_and_ekos_headers():
    nina = frame_header(Camera(), kind="flat", exptime=2.0, date_obs=DATE, filter="R", style="nina",
                        utc_offset_hours=-7.0)
    assert nina["IMAGETYP"] == "FLAT" and nina["EXPOSURE"] == 2.0 and "EXPTIME" not in nina
    assert "GAIN" in nina and "OFFSET" in nina
    assert nina["DATE-LOC"] == "2024-03-10T14:15:30.250"
    ekos = frame_header(Camera(), kind="dark", exptime=300.0, date_obs=DATE, style="ekos", ccd_temp=-10.0)
    assert ekos["FRAME"] == "Dark" and ekos["EXPTIME"] == 300.0
    assert "IMAGETYP" not in ekos and "EXPOSURE" not in ekos
    assert ekos["CCD_TEMP"] == -10.0  # extra cards pass through, upper-cased
    with pytest.raises(ValueError, match="style"):
        frame_header(Camera(), kind="dark", exptime=1.0, date_obs=DATE, style="sharpcap")


def test_write_fits_uint16_uses_bzero_like_a_camera(tmp_path):
    data = np.array([[0, 1, 32767], [32768, 40000, 65535]], dtype=np.uint16)
    path = write_fits(tmp_path / "frame.fits", data, {"IMAGETYP": "Light Frame", "EXPTIME": 1.0})
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        header = hdul[0].header
        assert header["BITPIX"] == 16 and header["BZERO"] == 32768 and header["BSCALE"] == 1
        stored = hdul[0].data
        assert stored.dtype.kind == "i" and stored.dtype.itemsize == 2
        assert np.array_equal(stored.astype(np.int32) + 32768, data.astype(np.int32))
    with fits.open(path) as hdul:
        assert hdul[0].data.dtype == np.uint16
        assert np.array_equal(hdul[0].data, data)
        assert hdul[0].header["IMAGETYP"] == "Light Frame"
    floats = write_fits(tmp_path / "dark.fits", data.astype(np.float64) / 3.0, {})
    with fits.open(floats) as hdul:
        assert hdul[0].header["BITPIX"] == -32 and "BZERO" not in hdul[0].header
        assert np.allclose(hdul[0].data, data / 3.0, rtol=1e-6)


NIGHT = {"camera": Camera(shape=(96, 128)), "n_bias": 3, "n_dark": 2, "n_flat": 2, "n_light": 3, "n_stars": 15}


@pytest.mark.parametrize("style", ["maxim", "nina", "ekos"])
def test_make_night_writes_the_expected_frames(tmp_path, style):
    truth = make_night(tmp_path, style=style, filters=("V", "R"), **NIGHT)
    assert {k: len(v) for k, v in truth.files.items()} == {"bias": 3, "dark": 2, "flat": 4, "light": 6}
    assert sorted(tmp_path.iterdir()) == sorted(p for paths in truth.files.values() for p in paths)
    assert len(truth.shifts) == 6 and truth.shifts[0] == (0.0, 0.0, 0.0)
    assert truth.light_filters == ["V", "V", "V", "R", "R", "R"]
    type_key = "FRAME" if style == "ekos" else "IMAGETYP"
    expected_type = synth._IMAGETYP[style]
    times = []
    for kind, paths in truth.files.items():
        for path in paths:
            header = fits.getheader(path)
            assert header[type_key] == expected_type[kind]
            exposure = header["EXPOSURE"] if style == "nina" else header["EXPTIME"]
            assert exposure == truth.exptimes[kind]
            assert header["BITPIX"] == 16 and header["BZERO"] == 32768
            times.append((kind, datetime.fromisoformat(header["DATE-OBS"]).replace(tzinfo=UTC)))
    # calibration at dusk, lights, flats at dawn
    first = {k: min(t for kk, t in times if kk == k) for k in truth.files}
    last = {k: max(t for kk, t in times if kk == k) for k in truth.files}
    assert last["bias"] < first["dark"] and last["dark"] < first["light"] and last["light"] < first["flat"]
    assert all(fits.getheader(p)["OBJECT"].strip() == "M51" for p in truth.files["light"])


def test_make_night_lights_show_the_true_stars(tmp_path):
    truth = make_night(tmp_path, filters=("V",), dither=4.0, rotation=0.5, **NIGHT)
    camera = truth.camera
    bright = np.argmax(truth.stars.flux)
    for index, path in enumerate(truth.files["light"]):
        image = fits.getdata(path).astype(float) - bias_pattern(camera)
        stars = truth.light_stars(index)
        x0, y0 = stars.x[bright], stars.y[bright]
        ix, iy = round(float(x0)), round(float(y0))
        cut = image[iy - 5 : iy + 6, ix - 5 : ix + 6]
        cut = cut - np.median(image)
        yy, xx = np.mgrid[iy - 5 : iy + 6, ix - 5 : ix + 6]
        assert (cut * xx).sum() / cut.sum() == pytest.approx(x0, abs=0.2)
        assert (cut * yy).sum() / cut.sum() == pytest.approx(y0, abs=0.2)
    assert any(abs(dx) > 0.5 for dx, _, _ in truth.shifts)


def test_make_night_is_reproducible_byte_for_byte(tmp_path):
    a = make_night(tmp_path / "a", seed=11, **NIGHT)
    b = make_night(tmp_path / "b", seed=11, **NIGHT)
    c = make_night(tmp_path / "c", seed=12, **NIGHT)
    for kind in a.files:
        for pa, pb, pc in zip(a.files[kind], b.files[kind], c.files[kind], strict=False):
            assert pa.name == pb.name
            assert pa.read_bytes() == pb.read_bytes()
            assert pa.read_bytes() != pc.read_bytes()
    assert a.shifts == b.shifts != c.shifts


def test_camera_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Camera().gain = 2.0  # type: ignore[misc]
