"""Frame quality: detection, seeing/sky metrics, outlier rejection and reference choice.

Every test works on seeded synthetic "calibrated" frames built directly from the truth:
``render_stars(...) + sky + Gaussian noise`` (no bias, dark or flat), so that the expected
FWHM, sky level, sky noise and star list are known exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ccdwatch import qa, synth

SHAPE = (256, 384)
FWHM = 3.0
SKY = 100.0  # ADU per pixel
NOISE = 8.0  # ADU rms per pixel (read noise dominated)
N_STARS = 80
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def calibrated_frame(
    stars: synth.Stars,
    rng: np.random.Generator,
    *,
    fwhm: float = FWHM,
    sky: float = SKY,
    noise: float = NOISE,
    flux_scale: float = 1.0,
) -> np.ndarray:
    """A calibrated 1 s exposure: stars (flux in ADU/s) + flat sky + white noise, float32."""
    scaled = synth.Stars(x=stars.x, y=stars.y, flux=stars.flux * flux_scale, shape=stars.shape)
    image = synth.render_stars(SHAPE, scaled, fwhm=fwhm, exptime=1.0)
    image += sky + rng.normal(0.0, noise, SHAPE)
    return image.astype(np.float32)


def peak_snr(stars: synth.Stars, *, fwhm: float = FWHM, noise: float = NOISE) -> np.ndarray:
    """Central-pixel signal-to-noise of each star (Gaussian peak / sky noise)."""
    sigma = fwhm / FWHM_PER_SIGMA
    return stars.flux / (2.0 * math.pi * sigma**2) / noise


def isolated(stars: synth.Stars, *, distance: float) -> np.ndarray:
    """True for stars with no other star within ``distance`` pixels."""
    xy = np.column_stack([stars.x, stars.y])
    d, _ = cKDTree(xy).query(xy, k=2)
    return d[:, 1] > distance


@pytest.fixture(scope="module")
def stars() -> synth.Stars:
    return synth.star_field(SHAPE, N_STARS, rng=np.random.default_rng(42), flux_range=(200.0, 20000.0))


@pytest.fixture(scope="module")
def frame(stars: synth.Stars) -> np.ndarray:
    return calibrated_frame(stars, np.random.default_rng(7))


@pytest.fixture(scope="module")
def measured(frame: np.ndarray) -> tuple[qa.FrameQuality, qa.Sources]:
    return qa.measure(frame)


# --------------------------------------------------------------------------------------------
# measure


def test_measure_sky_and_noise(measured: tuple[qa.FrameQuality, qa.Sources]) -> None:
    quality, _ = measured
    assert quality.sky == pytest.approx(SKY, rel=0.01)
    assert quality.sky_noise == pytest.approx(NOISE, rel=0.03)
    assert quality.saturated_fraction == 0.0


def test_measure_fwhm_and_roundness(measured: tuple[qa.FrameQuality, qa.Sources]) -> None:
    quality, sources = measured
    # The detector integrates the PSF over its pixels (adds 1/12 px^2 of variance per axis), so
    # the FWHM of the recorded star image is sqrt(3.0^2 + 2.3548^2/12) = 3.08 px: both within 10 %.
    assert quality.fwhm == pytest.approx(FWHM, rel=0.10)
    pixelised = math.sqrt(FWHM**2 + FWHM_PER_SIGMA**2 / 12.0)
    assert quality.fwhm == pytest.approx(pixelised, rel=0.03)
    assert 1.0 <= quality.elongation < 1.15
    assert sources.fwhm.shape == sources.x.shape


def test_measure_recovers_stars(stars: synth.Stars, measured: tuple[qa.FrameQuality, qa.Sources]) -> None:
    quality, sources = measured
    truth = np.column_stack([stars.x, stars.y])
    # every isolated star with a central-pixel S/N >= 10 is found within 0.5 px ...
    findable = (peak_snr(stars) >= 10) & isolated(stars, distance=4 * FWHM)
    assert findable.sum() >= 30
    d_found, _ = cKDTree(sources.xy).query(truth[findable])
    assert np.all(d_found < 0.5)
    # ... and nothing is detected that is not a star (blends can merge two stars into one)
    d_true, _ = cKDTree(truth).query(sources.xy)
    assert np.all(d_true < 2.0)
    assert findable.sum() <= quality.n_stars <= N_STARS
    assert quality.n_stars == len(sources)
    # bright isolated stars: centroids to a few hundredths of a pixel
    bright = isolated(stars, distance=4 * FWHM) & (peak_snr(stars) >= 50)
    d, _ = cKDTree(sources.xy).query(truth[bright])
    assert math.sqrt(np.mean(d**2)) < 0.05


def test_sources_sorted_brightest_first_and_flux_right(
    stars: synth.Stars, measured: tuple[qa.FrameQuality, qa.Sources]
) -> None:
    _, sources = measured
    assert np.all(np.diff(sources.flux) <= 0)
    # aperture flux of radius 1.5 FWHM holds 99.8 % of a Gaussian star
    ok = isolated(stars, distance=4 * FWHM) & (peak_snr(stars) >= 50)
    _, j = cKDTree(sources.xy).query(np.column_stack([stars.x[ok], stars.y[ok]]))
    ratio = sources.flux[j] / stars.flux[ok]
    assert np.mean(ratio) == pytest.approx(0.998, abs=0.01)


def test_max_sources_caps_the_list_not_the_count(frame: np.ndarray) -> None:
    quality, sources = qa.measure(frame, max_sources=10)
    full_quality, full = qa.measure(frame)
    assert len(sources) == 10
    assert quality.n_stars == full_quality.n_stars > 10
    np.testing.assert_allclose(sources.flux, full.flux[:10])


@pytest.mark.parametrize("fwhm", [2.5, 4.5, 7.5])
def test_measure_fwhm_tracks_seeing(stars: synth.Stars, fwhm: float) -> None:
    image = calibrated_frame(stars, np.random.default_rng(11), fwhm=fwhm)
    quality, _ = qa.measure(image)
    assert quality.fwhm == pytest.approx(fwhm, rel=0.10)


def test_measure_trailed_stars_are_elongated(stars: synth.Stars) -> None:
    # 8 px of drift along x during the exposure (tracking error): sum of 17 sub-exposures
    image = np.zeros(SHAPE)
    steps = np.linspace(-4.0, 4.0, 17)
    for dx in steps:
        moved = synth.transform_stars(stars, dx=float(dx))
        image += synth.render_stars(SHAPE, moved, fwhm=FWHM, exptime=1.0 / steps.size)
    image += SKY + np.random.default_rng(5).normal(0.0, NOISE, SHAPE)
    quality, _ = qa.measure(image)
    assert quality.elongation > 1.5
    assert quality.n_stars > 10


def test_saturated_fraction_and_saturated_stars_excluded(stars: synth.Stars) -> None:
    image = calibrated_frame(stars, np.random.default_rng(8)).astype(np.float64)
    saturation = 60000.0
    # a blooming saturated block and a saturated star (flat-topped: clipped at the ADC limit)
    image[100:120, 200:230] = 65535.0
    big = synth.Stars(x=np.array([60.3]), y=np.array([200.6]), flux=np.array([3e6]))
    image += synth.render_stars(SHAPE, big, fwhm=FWHM, exptime=1.0)
    image = np.minimum(image, 65535.0)
    expected = np.count_nonzero(image >= saturation) / image.size
    assert expected > 20 * 30 / image.size  # the star adds saturated pixels too
    quality, _ = qa.measure(image, saturation=saturation)
    assert quality.saturated_fraction == pytest.approx(expected, rel=1e-12)
    assert quality.fwhm == pytest.approx(FWHM, rel=0.10)
    assert quality.sky == pytest.approx(SKY, rel=0.01)
    # without a saturation level nothing counts as saturated
    assert qa.measure(image)[0].saturated_fraction == 0.0


def test_measure_ignores_nan_and_masked_pixels(stars: synth.Stars) -> None:
    rng = np.random.default_rng(9)
    image = calibrated_frame(stars, rng)
    # hot pixels (single pixels, 3000 ADU) and a dead region
    hot = np.zeros(SHAPE, dtype=bool)
    hot_y = rng.integers(10, SHAPE[0] - 10, 30)
    hot_x = rng.integers(10, SHAPE[1] - 10, 30)
    hot[hot_y, hot_x] = True
    image[hot] += 3000.0
    image[:, :15] = np.nan
    quality, sources = qa.measure(image, mask=hot)
    assert np.isfinite(quality.fwhm) and quality.fwhm == pytest.approx(FWHM, rel=0.10)
    assert quality.sky == pytest.approx(SKY, rel=0.01)
    assert np.all(sources.x > 14)
    # a masked hot pixel yields no source
    d, _ = cKDTree(np.column_stack([hot_x, hot_y])).query(sources.xy)
    truth_d, _ = cKDTree(np.column_stack([stars.x, stars.y])).query(sources.xy)
    assert np.all((d > 2.0) | (truth_d < 1.0))
    # unmasked, the hot pixels (much sharper than any star) are still not counted as stars
    unmasked_quality, unmasked = qa.measure(image)
    truth_d, _ = cKDTree(np.column_stack([stars.x, stars.y])).query(unmasked.xy)
    assert np.all(truth_d < 2.0)
    # (a hot pixel that lands on a faint star can take that star with it: a few at most)
    assert quality.n_stars - 4 <= unmasked_quality.n_stars <= quality.n_stars


def test_more_hot_pixels_than_stars(stars: synth.Stars, measured: tuple[qa.FrameQuality, qa.Sources]) -> None:
    # an uncalibrated long exposure: 600 hot pixels (200-5000 ADU) and 80 stars
    rng = np.random.default_rng(12)
    image = calibrated_frame(stars, np.random.default_rng(7))
    image[rng.integers(0, SHAPE[0], 600), rng.integers(0, SHAPE[1], 600)] += rng.uniform(200, 5000, 600)
    quality, sources = qa.measure(image)
    clean_quality, _ = measured
    assert quality.fwhm == pytest.approx(clean_quality.fwhm, rel=0.05)
    assert clean_quality.n_stars - 8 <= quality.n_stars <= clean_quality.n_stars + 2
    # the bright stars keep their sub-pixel centroids (windowed with the stars' size, not the
    # hot pixels')
    truth = np.column_stack([stars.x, stars.y])
    bright = isolated(stars, distance=4 * FWHM) & (peak_snr(stars) >= 50)
    d, _ = cKDTree(sources.xy).query(truth[bright])
    assert np.median(d) < 0.05


def test_measure_pure_noise_frame() -> None:
    image = (SKY + np.random.default_rng(3).normal(0.0, NOISE, SHAPE)).astype(np.float32)
    quality, sources = qa.measure(image)
    assert quality.n_stars == 0 and len(sources) == 0
    assert math.isnan(quality.fwhm) and math.isnan(quality.elongation)
    assert quality.sky == pytest.approx(SKY, rel=0.01)
    assert quality.sky_noise == pytest.approx(NOISE, rel=0.03)


def test_measure_does_not_modify_its_inputs(frame: np.ndarray) -> None:
    image = frame.astype(np.float64)
    image[5:8, 5:8] = np.nan
    mask = np.zeros(SHAPE, dtype=bool)
    mask[50, 50] = True
    image_before, mask_before = image.copy(), mask.copy()
    qa.measure(image, mask=mask, saturation=1000.0)
    np.testing.assert_array_equal(image, image_before)  # NaNs compare equal here
    np.testing.assert_array_equal(mask, mask_before)
    # big-endian input (as FITS gives it) is accepted too
    quality, _ = qa.measure(frame.astype(">f4"))
    assert quality.fwhm == pytest.approx(FWHM, rel=0.10)


def test_measure_rejects_bad_shapes(frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match="2-D"):
        qa.measure(frame[0])
    with pytest.raises(ValueError, match="mask shape"):
        qa.measure(frame, mask=np.zeros((3, 3), dtype=bool))


# --------------------------------------------------------------------------------------------
# reject_outliers / choose_reference


@pytest.fixture(scope="module")
def group(stars: synth.Stars) -> dict[int, qa.FrameQuality]:
    """Six normal frames, a blurred one (FWHM x 2.5) and a cloudy one (stars x 0.2, sky x 3)."""
    rng = np.random.default_rng(21)
    qualities = {}
    for i in range(6):
        qualities[i] = qa.measure(calibrated_frame(stars, rng))[0]
    qualities[6] = qa.measure(calibrated_frame(stars, rng, fwhm=2.5 * FWHM))[0]
    # three times the sky also means more photon noise (gain 1.5 e-/ADU)
    cloudy = calibrated_frame(
        stars, rng, flux_scale=0.2, sky=3 * SKY, noise=math.hypot(NOISE, math.sqrt(2 * SKY / 1.5))
    )
    qualities[7] = qa.measure(cloudy)[0]
    return qualities


def test_reject_outliers_blurred_and_cloudy(group: dict[int, qa.FrameQuality]) -> None:
    rejected = qa.reject_outliers(group)
    assert set(rejected) == {6, 7}
    assert "FWHM" in rejected[6] and "MAD above the group median" in rejected[6]
    assert f"{group[6].fwhm:.1f} px" in rejected[6]
    assert rejected[7].startswith(f"sky {group[7].sky:.0f} ADU is ")
    assert group[7].n_stars < 0.7 * np.median([group[i].n_stars for i in range(6)])
    for i in range(6):
        assert group[i].fwhm == pytest.approx(FWHM, rel=0.1)


def test_reference_is_a_good_frame(group: dict[int, qa.FrameQuality]) -> None:
    rejected = qa.reject_outliers(group)
    ref = qa.choose_reference(group, exclude=rejected)
    assert ref in range(6)
    # it is the frame with most stars per PSF area among the normal ones
    scores = {i: group[i].n_stars / group[i].fwhm ** 2 for i in range(6)}
    assert ref == max(scores, key=scores.__getitem__)


def quality(
    n_stars: int = 60, fwhm: float = 3.0, sky: float = 100.0, elongation: float = 1.05
) -> qa.FrameQuality:
    return qa.FrameQuality(
        n_stars=n_stars, fwhm=fwhm, elongation=elongation, sky=sky, sky_noise=8.0, saturated_fraction=0.0
    )


def test_identical_frames_mad_zero_reject_nothing() -> None:
    group = {i: quality() for i in range(5)}
    assert qa.reject_outliers(group) == {}
    # a slightly worse frame in a MAD=0 group is kept (floor of 10 % of the median) ...
    group[5] = quality(fwhm=3.3, sky=105.0, n_stars=55)
    assert qa.reject_outliers(group) == {}
    # ... a much worse one is not
    group[6] = quality(fwhm=6.0)
    assert set(qa.reject_outliers(group)) == {6}


def test_min_stars_and_elongation_reasons() -> None:
    group = {i: quality() for i in range(4)}
    group[4] = quality(n_stars=3)
    group[5] = quality(n_stars=12)
    group[6] = quality(elongation=2.6)
    rejected = qa.reject_outliers(group)
    assert rejected[4] == "only 3 stars (< 5)"
    assert rejected[5] == "12 stars, fewer than half the group median 60"
    assert "elongated" in rejected[6]
    assert set(rejected) == {4, 5, 6}


def test_never_rejects_everything() -> None:
    single = {7: quality(n_stars=2)}
    assert qa.reject_outliers(single) == {}
    nostars = {i: quality(n_stars=0, fwhm=math.nan, elongation=math.nan) for i in range(3)}
    rejected = qa.reject_outliers(nostars)
    assert len(rejected) == 2
    assert qa.reject_outliers({}) == {}


def test_choose_reference() -> None:
    group = {
        1: quality(n_stars=50, fwhm=3.0),
        2: quality(n_stars=60, fwhm=2.5),
        3: quality(n_stars=80, fwhm=4.0),
    }
    assert qa.choose_reference(group) == 2  # 9.6 stars/px^2 vs 5.6 and 5.0
    assert qa.choose_reference(group, exclude=[2]) == 1
    group[4] = quality(n_stars=10, fwhm=math.nan)
    assert qa.choose_reference({4: group[4], 5: quality(n_stars=0, fwhm=math.nan)}) == 4
    with pytest.raises(ValueError):
        qa.choose_reference(group, exclude=group.keys())


def test_frame_quality_json_round_trip() -> None:
    q = quality(n_stars=0, fwhm=math.nan, elongation=math.nan)
    d = q.to_json()
    assert d["fwhm"] is None
    back = qa.FrameQuality.from_json(d)
    assert back.n_stars == 0 and math.isnan(back.fwhm) and back.sky == q.sky


def test_sep_pixel_buffer_raised_only_for_the_frame_that_needs_it() -> None:
    """A frame with more pixels above threshold than sep's default pixel stack (300,000) is still
    extracted, and the stack goes back to its default afterwards: a stack the size of the frame
    is allocated on every call and cost ~60 ms per 2k frame when it was left raised."""
    import sep

    default = sep.get_extract_pixstack()
    image = np.zeros((800, 800), dtype=np.float32)
    image[100:700, 100:700] = 100.0  # 360,000 connected pixels above threshold ("nebulosity")
    image[20, 20] = 500.0
    bad = np.zeros(image.shape, dtype=bool)
    objects, segmap = qa._run_sep_extract(image, 5.0, err=1.0, mask=bad)
    assert default < 360_000
    assert np.count_nonzero(segmap) >= 360_000 and objects.size >= 1
    assert sep.get_extract_pixstack() == default


def test_sep_pixel_buffer_retries_are_bounded(monkeypatch) -> None:
    """A frame that keeps overflowing sep's pixel stack fails with sep's message after a few
    growing retries, instead of retrying without end (it once recursed ~1,000 times, 10 s on a
    700x700 frame, before a RecursionError); a real frame with every pixel above threshold
    succeeds once the stack has grown."""
    import sep

    default = sep.get_extract_pixstack()
    image = np.full((700, 700), 100.0, dtype=np.float32)  # every pixel above threshold
    bad = np.zeros(image.shape, dtype=bool)
    _, segmap = qa._run_sep_extract(image, 1.5, err=1.0, mask=bad)
    assert np.count_nonzero(segmap) == image.size
    assert sep.get_extract_pixstack() == default

    calls = []

    def always_full(*args, **kwargs):
        calls.append(sep.get_extract_pixstack())
        raise Exception("internal pixel buffer full: 300000 pixels (change with set_extract_pixstack)")

    monkeypatch.setattr(qa.sep, "extract", always_full)
    with pytest.raises(Exception, match="pixel buffer full"):
        qa._run_sep_extract(image, 1.5, err=1.0, mask=bad)
    assert calls == [default, 2 * default, 2 * image.size]
    assert sep.get_extract_pixstack() == default


def test_background_from_a_subsample_follows_a_sky_gradient(stars: synth.Stars) -> None:
    # a 1024 x 768 frame whose sky rises by 60 ADU across it (twilight, moonlight): the map
    # from a subsample of each mesh removes it to a small fraction of the noise, the detection
    # noise is the sky's, and the catalogue's FWHM and sky stay within 2 % of the truth
    from ccdwatch.qa.background import subtract_background

    shape = (768, 1024)
    rng = np.random.default_rng(5)
    field = synth.star_field(shape, 200, rng=np.random.default_rng(6), flux_range=(300.0, 20000.0))
    gradient = SKY + 60.0 * np.arange(shape[1])[None, :] / shape[1]
    image = (synth.render_stars(shape, field, fwhm=FWHM, exptime=1.0) + gradient
             + rng.normal(0.0, NOISE, shape)).astype(np.float32)
    sub = image.copy()
    bkg = subtract_background(sub, np.zeros(shape, dtype=bool))
    sky_only = image - synth.render_stars(shape, field, fwhm=FWHM, exptime=1.0) < gradient + 4 * NOISE
    residual = (sub - (image - gradient))[sky_only]
    assert abs(float(np.median(residual))) < 0.1 * NOISE
    assert bkg.globalrms == pytest.approx(NOISE, rel=0.03)
    assert bkg.globalback == pytest.approx(float(np.median(gradient)), rel=0.02)
    quality, _ = qa.measure(image)
    pixelised = math.sqrt(FWHM**2 + FWHM_PER_SIGMA**2 / 12.0)
    assert quality.fwhm == pytest.approx(pixelised, rel=0.02)
    assert quality.sky == pytest.approx(float(np.median(gradient)), rel=0.02)
    assert quality.sky_noise == pytest.approx(NOISE, rel=0.02)


def _assert_truth(quality: qa.FrameQuality, *, fwhm: float, sky: float, noise: float) -> None:
    """The catalogue's FWHM (of the pixelised profile), sky and sky noise within 2 % of the truth."""
    pixelised = math.sqrt(fwhm**2 + FWHM_PER_SIGMA**2 / 12.0)
    assert quality.fwhm == pytest.approx(pixelised, rel=0.02)
    assert quality.sky == pytest.approx(sky, rel=0.02)
    assert quality.sky_noise == pytest.approx(noise, rel=0.02)


def _star_frame(shape: tuple[int, int], n: int, fwhm: float, sky: float, noise: float, *,
                seeds: tuple[int, int], flux_range: tuple[float, float]) -> tuple[synth.Stars, np.ndarray]:
    """A star field of known positions and fluxes on a flat sky with Gaussian noise (float32)."""
    field = synth.star_field(shape, n, rng=np.random.default_rng(seeds[0]), flux_range=flux_range)
    image = (synth.render_stars(shape, field, fwhm=fwhm, exptime=1.0) + sky
             + np.random.default_rng(seeds[1]).normal(0.0, noise, shape)).astype(np.float32)
    return field, image


@pytest.mark.parametrize("fwhm", [2.0, 7.0])
def test_subsampled_background_keeps_fwhm_and_sky_in_good_and_bad_seeing(fwhm: float, monkeypatch) -> None:
    # a frame just large enough for the subsampled map (8 meshes a side) in good and bad seeing:
    # the catalogue's FWHM and sky within 2 % of the truth, the same as with sep's own map
    from ccdwatch.qa import frame as qa_frame

    shape = (qa_frame._SUBSAMPLE_MIN_MESHES * 64, 640)
    _, image = _star_frame(shape, 120, fwhm, SKY, NOISE, seeds=(11, 12), flux_range=(500.0, 40000.0))
    quality, sources = qa.measure(image)
    _assert_truth(quality, fwhm=fwhm, sky=SKY, noise=NOISE)
    monkeypatch.setattr(qa_frame, "_SUBSAMPLE_MIN_MESHES", 10**6)  # sep's map on every pixel
    quality_sep, sources_sep = qa.measure(image)
    assert quality.fwhm == pytest.approx(quality_sep.fwhm, rel=0.01)
    assert abs(len(sources) - len(sources_sep)) <= 0.05 * len(sources_sep)


@pytest.mark.parametrize("fwhm", [2.0, 7.0])
def test_measure_a_2k_frame_against_the_truth(fwhm: float) -> None:
    # the benchmark's frame size (2048 x 2048, ~60 stars per Mpix, a sky of 400 ADU): the catalogue's
    # FWHM, sky and sky noise within 2 % of the truth in good and bad seeing, and the star count
    # between the findable stars and all of them
    shape = (2048, 2048)
    sky, noise = 400.0, 18.0
    field, image = _star_frame(shape, 250, fwhm, sky, noise, seeds=(21, 22), flux_range=(300.0, 60000.0))
    quality, sources = qa.measure(image)
    _assert_truth(quality, fwhm=fwhm, sky=sky, noise=noise)
    assert 1.0 <= quality.elongation < 1.1
    findable = (peak_snr(field, fwhm=fwhm, noise=noise) >= 20) & isolated(field, distance=4 * fwhm)
    assert findable.sum() >= 30
    assert findable.sum() <= quality.n_stars <= 250
    d_found, _ = cKDTree(sources.xy).query(np.column_stack([field.x, field.y])[findable])
    assert np.all(d_found < 0.5)


@pytest.mark.parametrize(("shape", "mesh"), [((2048, 2048), 64), ((2100, 3050), 64), ((130, 70), 64),
                                             ((64, 64), 64), ((5000, 200), 64), ((100, 6000), 50)])
def test_background_map_is_bilinear_between_mesh_centres_and_constant_beyond(shape, mesh):
    """The map subtracted is, at every pixel, the bilinear interpolation of the mesh levels between
    their centres (``i * mesh + (mesh - 1) / 2``), constant past the outer ones, whatever the
    frame's size against the meshes (band edges, rows and columns past the last whole mesh)."""
    from ccdwatch.qa import background

    rng = np.random.default_rng(5)
    ny, nx = shape
    level = rng.normal(100.0, 3.0, (max(1, ny // mesh), max(1, nx // mesh))).astype(np.float32)
    img = rng.normal(100.0, 5.0, shape).astype(np.float32)
    out = np.full_like(img, np.nan)
    background.subtract_map(img, level, mesh, out=out)

    def weights(n: int, m: int) -> np.ndarray:  # (n, m): each pixel's weight on each mesh centre
        t = np.clip((np.arange(n) + 0.5) / mesh - 0.5, 0.0, m - 1.0)
        i0 = np.floor(t).astype(int)
        w = np.zeros((n, m))
        np.add.at(w, (np.arange(n), i0), 1.0 - (t - i0))
        np.add.at(w, (np.arange(n), np.minimum(i0 + 1, m - 1)), t - i0)
        return w

    expected = img - weights(ny, level.shape[0]) @ level.astype(np.float64) @ weights(nx, level.shape[1]).T
    assert np.abs(out - expected).max() < 1e-4  # float32 rounding of values ~100: ~1e-5
