"""Detection on the 2 x 2-binned frame (frames of at least ``_BINNED_MIN_SIZE`` pixels a side):
the catalogue's FWHM, sky, sky noise and elongation against the synthetic truth (within 2 %) and
against the full-resolution detection, centroids as precise, the findable stars found, hot pixels
and cosmic rays rejected, and small frames left on the full-resolution path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ccdwatch import qa, synth
from ccdwatch.qa import binned
from ccdwatch.qa import frame as qa_frame

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
SHAPE = (1024, 1536)  # the smallest binned size on one side, an odd multiple of meshes on the other
SKY, NOISE = 400.0, 18.0


def star_frame(fwhm: float, *, shape: tuple[int, int] = SHAPE, n: int = 250, seed: int = 31,
               trail: float = 0.0) -> tuple[synth.Stars, np.ndarray]:
    """A calibrated light of known stars (flux 300-60,000 ADU) on a flat sky with white noise; stars
    drawn along ``trail`` px in x (17 sub-exposures) when given."""
    field = synth.star_field(shape, n, rng=np.random.default_rng(seed), flux_range=(300.0, 60000.0))
    steps = np.linspace(-trail / 2, trail / 2, 17) if trail else np.zeros(1)
    image = np.zeros(shape)
    for dx in steps:
        image += synth.render_stars(shape, synth.transform_stars(field, dx=float(dx)), fwhm=fwhm,
                                    exptime=1.0 / steps.size)
    image += SKY + np.random.default_rng(seed + 1).normal(0.0, NOISE, shape)
    return field, image.astype(np.float32)


def peak_snr(stars: synth.Stars, fwhm: float) -> np.ndarray:
    sigma = fwhm / FWHM_PER_SIGMA
    return stars.flux / (2.0 * math.pi * sigma**2) / NOISE


def isolated(stars: synth.Stars, distance: float) -> np.ndarray:
    xy = np.column_stack([stars.x, stars.y])
    d, _ = cKDTree(xy).query(xy, k=2)
    return d[:, 1] > distance


def full_resolution(image: np.ndarray, monkeypatch: pytest.MonkeyPatch, **kw) -> tuple[qa.FrameQuality, qa.Sources]:
    """`qa.measure` with detection on the full-resolution frame (the path of small frames)."""
    with monkeypatch.context() as m:
        m.setattr(qa_frame, "_BINNED_MIN_SIZE", 10**9)
        return qa.measure(image, **kw)


@pytest.fixture
def spy_bin2(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The shapes `binned.bin2` was called with."""
    calls: list[tuple[int, int]] = []
    real = binned.bin2

    def spy(img: np.ndarray) -> np.ndarray:
        calls.append(img.shape)
        return real(img)

    monkeypatch.setattr(binned, "bin2", spy)
    return calls


def test_bin2_block_any_and_peaks_map_back_to_full_resolution() -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(size=(7, 9)).astype(np.float32)
    small = binned.bin2(img)
    assert small.shape == (3, 4)
    np.testing.assert_allclose(small, img[:6, :8].reshape(3, 2, 4, 2).mean(axis=(1, 3)), rtol=1e-6)
    mask = np.zeros((7, 9), dtype=bool)
    mask[3, 5] = mask[6, 8] = True  # the second is in the odd row and column that no block holds
    expected = np.zeros((3, 4), dtype=bool)
    expected[1, 2] = True
    np.testing.assert_array_equal(binned.block_any(mask), expected)
    # a peak next to its binned pixel's block (a star centred on the block's edge) is found
    sub = np.zeros((8, 8), dtype=np.float32)
    sub[5, 2] = 10.0
    x, y = binned._full_resolution_peaks(sub, np.array([1]), np.array([2]))
    assert (x[0], y[0]) == (2, 5)


@pytest.mark.parametrize("fwhm", [1.6, 3.0, 7.0])
def test_binned_detection_against_the_truth(fwhm: float, monkeypatch: pytest.MonkeyPatch, spy_bin2) -> None:
    # undersampled (1.6 px), typical and bad seeing: FWHM, sky, sky noise within 2 % of the truth
    # and within 1 % of the full-resolution detection, elongation within 2 % of it, every findable
    # star found, nothing that is not a star, centroids as precise
    field, image = star_frame(fwhm)
    quality, sources = qa.measure(image)
    assert spy_bin2 == [SHAPE]
    pixelised = math.sqrt(fwhm**2 + FWHM_PER_SIGMA**2 / 12.0)
    assert quality.fwhm == pytest.approx(pixelised, rel=0.02)
    assert quality.sky == pytest.approx(SKY, rel=0.02)
    assert quality.sky_noise == pytest.approx(NOISE, rel=0.02)
    full_quality, full = full_resolution(image, monkeypatch)
    assert quality.fwhm == pytest.approx(full_quality.fwhm, rel=0.01)
    assert quality.elongation == pytest.approx(full_quality.elongation, rel=0.02)
    assert quality.sky_noise == pytest.approx(full_quality.sky_noise, rel=0.01)

    truth = np.column_stack([field.x, field.y])
    findable = (peak_snr(field, fwhm) >= 20) & isolated(field, 4 * fwhm)
    assert findable.sum() >= 25
    d_found, _ = cKDTree(sources.xy).query(truth[findable])
    d_full, _ = cKDTree(full.xy).query(truth[findable])
    # (at 1.6 px either detection takes a few faint stars, centred on a pixel, for hot pixels)
    assert np.count_nonzero(d_found >= 0.5) <= (np.count_nonzero(d_full >= 0.5) + 1 if fwhm < 2 else 0)
    d_true, _ = cKDTree(truth).query(sources.xy)
    assert np.all(d_true < 2.0)
    # binning finds at least the stars that full resolution finds (more faint ones in bad seeing)
    assert 0.97 * full_quality.n_stars <= quality.n_stars <= len(field)
    assert quality.n_stars == len(sources)
    # bright isolated stars: centroids as precise as at full resolution (the same windowed ones)
    bright = isolated(field, 4 * fwhm) & (peak_snr(field, fwhm) >= 50)
    d, _ = cKDTree(sources.xy).query(truth[bright])
    d_full, _ = cKDTree(full.xy).query(truth[bright])
    assert math.sqrt(np.mean(d**2)) <= 1.02 * math.sqrt(np.mean(d_full**2)) + 1e-3
    assert math.sqrt(np.mean(d**2)) < 0.05 * fwhm
    # aperture fluxes (radius 1.5 FWHM: 99.8 % of a star) as right as at full resolution
    _, j = cKDTree(sources.xy).query(truth[bright])
    _, k = cKDTree(full.xy).query(truth[bright])
    assert np.mean(sources.flux[j] / field.flux[bright]) == pytest.approx(0.998, abs=0.01)
    assert np.mean(sources.flux[j]) == pytest.approx(np.mean(full.flux[k]), rel=0.005)


def test_binned_detection_keeps_trailed_stars_elongated(monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 px of drift along x: the isophotal a/b is measured on the full-resolution pixels of each
    # footprint (moments of the binned pixels would add the binning's box)
    _, image = star_frame(3.0, trail=8.0)
    quality, _ = qa.measure(image)
    full_quality, _ = full_resolution(image, monkeypatch)
    assert quality.elongation > 1.8
    assert quality.elongation == pytest.approx(full_quality.elongation, rel=0.02)


def test_binned_detection_rejects_hot_pixels_and_cosmic_rays(monkeypatch: pytest.MonkeyPatch) -> None:
    # an uncalibrated-looking light: 3000 hot pixels (200-5000 ADU, pairs of them in neighbouring
    # blocks too) and 400 cosmic-ray tracks of 1-4 pixels, none masked: FWHM, sky and elongation
    # within 2 % of the truth and of the full-resolution detection, hot pixels rejected as there
    # (the tracks that look like stars at full resolution stay so), the bright stars' centroids kept
    fwhm = 3.0
    field, clean = star_frame(fwhm)
    rng = np.random.default_rng(12)
    image = clean.copy()
    ny, nx = SHAPE
    hot_y, hot_x = rng.integers(0, ny, 3000), rng.integers(0, nx, 3000)
    image[hot_y, hot_x] += rng.uniform(200, 5000, 3000).astype(np.float32)
    rays = synth.camera.cosmic_rays(SHAPE, 400, rng)
    np.add.at(image, (rays.y, rays.x), rays.energy.astype(np.float32))
    quality, sources = qa.measure(image)
    full_quality, full = full_resolution(image, monkeypatch)
    pixelised = math.sqrt(fwhm**2 + FWHM_PER_SIGMA**2 / 12.0)
    assert quality.fwhm == pytest.approx(pixelised, rel=0.02)
    assert quality.sky == pytest.approx(SKY, rel=0.02)
    assert quality.elongation == pytest.approx(full_quality.elongation, rel=0.02)
    assert quality.elongation < 1.1
    clean_quality, _ = qa.measure(clean)
    assert clean_quality.n_stars - 10 <= quality.n_stars <= full_quality.n_stars + 5
    truth = np.column_stack([field.x, field.y])
    d_true, _ = cKDTree(truth).query(sources.xy)
    d_full, _ = cKDTree(truth).query(full.xy)
    assert np.count_nonzero(d_true > 2.0) <= np.count_nonzero(d_full > 2.0) + 3
    hot_xy = np.column_stack([hot_x, hot_y])
    d_hot, _ = cKDTree(hot_xy).query(sources.xy)
    d_hot_full, _ = cKDTree(hot_xy).query(full.xy)
    # hot pixels are not counted as stars (those near a cosmic ray or a star may be, as at full resolution)
    assert np.count_nonzero((d_hot < 1.5) & (d_true > 2.0)) <= np.count_nonzero((d_hot_full < 1.5) & (d_full > 2.0)) + 2
    bright = isolated(field, 4 * fwhm) & (peak_snr(field, fwhm) >= 50)
    d, _ = cKDTree(sources.xy).query(truth[bright])
    assert np.median(d) < 0.05


def test_binned_detection_with_saturation_nan_and_a_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    # a saturated star and a blooming block (left out of the PSF statistics), a NaN band and masked
    # hot pixels (no source there), as the full-resolution path
    fwhm = 3.0
    field, image = star_frame(fwhm)
    image[300:320, 500:531] = 65535.0
    big = synth.Stars(x=np.array([900.3]), y=np.array([600.6]), flux=np.array([3e7]))
    image = np.minimum(image + synth.render_stars(SHAPE, big, fwhm=fwhm, exptime=1.0), 65535.0).astype(np.float32)
    image[:, :15] = np.nan
    hot = np.zeros(SHAPE, dtype=bool)
    rng = np.random.default_rng(9)
    hot[rng.integers(10, SHAPE[0] - 10, 50), rng.integers(10, SHAPE[1] - 10, 50)] = True
    image[hot] += 3000.0
    quality, sources = qa.measure(image, saturation=60000.0, mask=hot)
    expected = np.count_nonzero(image >= 60000.0) / np.count_nonzero(~hot[:, 15:] & np.isfinite(image[:, 15:]))
    assert quality.saturated_fraction == pytest.approx(expected, rel=1e-12)
    pixelised = math.sqrt(fwhm**2 + FWHM_PER_SIGMA**2 / 12.0)
    assert quality.fwhm == pytest.approx(pixelised, rel=0.02)
    assert quality.sky == pytest.approx(SKY, rel=0.02)
    assert np.all(sources.x > 14)
    full_quality, _ = full_resolution(image, monkeypatch, saturation=60000.0, mask=hot)
    assert quality.fwhm == pytest.approx(full_quality.fwhm, rel=0.01)
    d_hot, _ = cKDTree(np.argwhere(hot)[:, ::-1]).query(sources.xy)
    d_true, _ = cKDTree(np.column_stack([field.x, field.y])).query(sources.xy)
    assert np.all((d_hot > 2.0) | (d_true < 1.0))


def test_small_frames_keep_the_full_resolution_path(spy_bin2) -> None:
    # below _BINNED_MIN_SIZE on either side nothing is binned; a frame of odd size above it is
    field, image = star_frame(3.0, shape=(qa_frame._BINNED_MIN_SIZE - 1, 1536), n=150)
    quality, _ = qa.measure(image)
    assert spy_bin2 == []
    assert quality.fwhm == pytest.approx(math.sqrt(9.0 + FWHM_PER_SIGMA**2 / 12.0), rel=0.02)
    field, image = star_frame(3.0, shape=(1025, 1537), n=150)
    quality, sources = qa.measure(image)
    assert spy_bin2 == [(1025, 1537)]
    assert quality.fwhm == pytest.approx(math.sqrt(9.0 + FWHM_PER_SIGMA**2 / 12.0), rel=0.02)
    findable = (peak_snr(field, 3.0) >= 20) & isolated(field, 12.0)
    d_found, _ = cKDTree(sources.xy).query(np.column_stack([field.x, field.y])[findable])
    assert np.all(d_found < 0.5)


def test_binned_measurement_is_deterministic() -> None:
    _, image = star_frame(3.0)
    q1, s1 = qa.measure(image)
    q2, s2 = qa.measure(image.copy())
    assert q1 == q2
    for name in ("x", "y", "flux", "fwhm", "elongation"):
        assert getattr(s1, name).tobytes() == getattr(s2, name).tobytes()


def test_sky_mask_from_the_isophotes_equals_the_grown_map_on_the_grid() -> None:
    # the sky's source mask without a frame-sized map: exactly the dilated map sampled on the grid
    rng = np.random.default_rng(3)
    for shape, step in [((2048, 2048), 6), ((1025, 1537), 3), ((100, 90), 7)]:
        pixels = rng.random(shape) < 0.002
        grid = (slice(step // 2, None, step), slice(step // 2, None, step))
        expected = qa_frame._grow(pixels.view(np.uint8), 3)[grid] > 0
        np.testing.assert_array_equal(binned.grown_on_grid(np.nonzero(pixels), grid, shape, 3), expected)


def test_sky_around_star_halos_as_at_full_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    # 600 stars with a halo (a fifth of their light in a 12 px FWHM, as a real PSF's wings): the sky
    # is measured outside the full-resolution isophotes grown by 3 px, as at full resolution, not
    # outside the binned ones (they reach fainter wings: sky noise -0.28 %, sky -0.044 % here, and
    # -2 % / -0.09 % on the real M51 lights)
    field, image = star_frame(3.0, n=600)
    halo = synth.Stars(x=field.x, y=field.y, flux=0.2 * field.flux)
    image += synth.render_stars(SHAPE, halo, fwhm=12.0, exptime=1.0).astype(np.float32)
    quality, _ = qa.measure(image)
    full_quality, _ = full_resolution(image, monkeypatch)
    assert quality.sky == pytest.approx(full_quality.sky, rel=1e-4)
    assert quality.sky_noise == pytest.approx(full_quality.sky_noise, rel=1e-3)
    assert quality.fwhm == pytest.approx(full_quality.fwhm, rel=0.01)
