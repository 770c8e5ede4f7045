"""`ccdwatch.evidence.measure` gives the very values of its straightforward first version.

The pixel evidence decides frame types (`ccdwatch.headers.pixels.pixel_verdict`) and is stored
with each frame: making it cheaper (bracketed medians, sorted block medians, OpenCV labelling)
must not change one bit of it. The reference below is the former code, kept as written: six
``np.median`` calls and ``scipy.ndimage.label``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ccdwatch import evidence, orderstats, synth
from ccdwatch.headers.pixels import PixelEvidence

from .helpers import REAL_NIGHT


# ------------------------------------------------------------------ the reference (former code)
def _binned_ref(data: np.ndarray) -> np.ndarray:
    ny, nx = data.shape
    step = 2 * max(1, int(np.ceil(max(ny, nx) / (2 * 512))))
    ys = (ny // step) * step
    xs = (nx // step) * step
    out = np.zeros((ys // step, xs // step), dtype=np.float32)
    for dy in (0, 1):
        for dx in (0, 1):
            out += data[dy:ys:step, dx:xs:step]
    out *= 0.25
    return out


def _count_sources_ref(img: np.ndarray, level: float, noise: float) -> int:
    from scipy import ndimage

    if not noise > 0:
        return 0
    labels, n = ndimage.label(img > level + 5 * noise)
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    bright = np.unique(labels[img > level + 10 * noise])
    return int(np.count_nonzero(sizes[bright[bright > 0]] >= 3))


def measure_ref(data: np.ndarray) -> PixelEvidence:
    img = _binned_ref(data)
    finite = np.isfinite(img)
    if not finite.any():
        return PixelEvidence(level=0.0, noise=0.0, full_scale=65535.0, n_sources=0, structure=0.0)
    values = img[finite]
    level = float(np.median(values))
    diff = np.diff(np.where(finite, img, level), axis=1).ravel()
    noise = float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))
    ny, nx = img.shape
    n = max(1, min(16, ny, nx))
    by, bx = ny // n, nx // n
    blocks = np.median(np.where(finite, img, level)[: by * n, : bx * n].reshape(n, by, n, bx), axis=(1, 3))
    spread = float(1.4826 * np.median(np.abs(blocks - np.median(blocks))))
    structure = spread / abs(level) if level else 0.0
    return PixelEvidence(level=level, noise=noise, full_scale=evidence._full_scale(data, float(values.max())),
                         n_sources=_count_sources_ref(np.where(finite, img, level), level, noise),
                         structure=structure, adc_shift=evidence.adc_shift(data))


def assert_same(data: np.ndarray) -> PixelEvidence:
    """Both implementations, field by field to the bit (repr: NaN equals NaN, 0.0 is not -0.0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the median of no difference (1-column frames)
        new, ref = evidence.measure(data), measure_ref(data)
    assert repr(new) == repr(ref)
    return new


# ------------------------------------------------------------------ synthetic frames
SHAPE = (640, 1024)  # binned 320x512: long enough for the bracketed medians (>= 65536 values)


@pytest.fixture(scope="module")
def frames() -> dict[str, np.ndarray]:
    cam = synth.Camera(shape=SHAPE)
    rng = np.random.default_rng(5)
    stars = synth.star_field(SHAPE, 150, rng=rng, flux_range=(200.0, 20000.0))
    return {
        "bias": synth.quantise(synth.expose(cam, kind="bias", exptime=0.0, rng=rng)),
        "dark": synth.quantise(synth.expose(cam, kind="dark", exptime=300.0, rng=rng, cosmic_rays=40)),
        "flat": synth.quantise(synth.expose(cam, kind="flat", exptime=1.0, rng=rng)),
        "light": synth.quantise(synth.expose(cam, kind="light", exptime=60.0, rng=rng, sky=5.0, stars=stars,
                                             cosmic_rays=40)),
    }


@pytest.mark.parametrize("kind", ["bias", "dark", "flat", "light"])
def test_same_evidence_on_uint16_frames(frames, kind):
    ev = assert_same(frames[kind])
    assert (ev.n_sources > 20) == (kind == "light")  # the source count was exercised on the light


@pytest.mark.parametrize("kind", ["flat", "light"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int16])
def test_same_evidence_in_other_types_and_with_missing_pixels(frames, kind, dtype):
    data = frames[kind].astype(dtype)
    assert_same(data)
    if np.issubdtype(dtype, np.floating):
        rng = np.random.default_rng(1)
        holed = data.copy()
        holed[rng.integers(0, SHAPE[0], 500), rng.integers(0, SHAPE[1], 500)] = np.nan
        holed[:, 100:104] = np.nan  # a dead column
        holed[7, 9] = np.inf
        holed[: SHAPE[0] // 2] = holed[: SHAPE[0] // 2] * 1.0001 + 0.3  # not quarter-ADU: few ties
        assert_same(holed)


@pytest.mark.parametrize("shape", [(16, 16), (5, 7), (3, 200), (2000, 3), (2, 2), (1, 1), (9, 2), (600, 5),
                                   (300, 700), (1030, 1030)])
def test_same_evidence_on_tiny_and_odd_frames(shape):
    rng = np.random.default_rng(2)
    data = rng.normal(500.0, 20.0, shape)
    data[rng.random(shape) < 0.02] = np.nan
    assert_same(data)
    assert_same(rng.integers(100, 200, shape).astype(np.uint16))


def test_same_source_count_where_diagonal_pixels_touch():
    """4-connected groups, as ndimage's default: pixels touching only at a corner are two groups."""
    rng = np.random.default_rng(3)
    img = rng.normal(0.0, 1.0, (300, 300)).astype(np.float32)
    img[rng.random(img.shape) < 0.08] = 12.0  # dense and random: many groups meet at corners
    img[10, 10] = img[11, 11] = img[12, 12] = 12.0  # a diagonal line of three: not a 3-pixel group
    for level, noise in ((0.0, 1.0), (0.0, 0.5), (0.0, 2.2), (0.0, 0.0), (1.0, np.nan)):
        assert evidence._count_sources(img, level, noise) == _count_sources_ref(img, level, noise)
    assert _count_sources_ref(img, 0.0, 1.0) > 100


@pytest.mark.parametrize("n", [8191, 8192, 50232, 65537, 100001, 262144])
def test_median_1d_is_numpys_median(n):
    rng = np.random.default_rng(n)
    quantised = (np.rint(rng.normal(1000.0, 4.0, n) * 4) / 4).astype(np.float32)  # thousands of ties
    smooth = rng.standard_cauchy(n).astype(np.float32)
    aliased = rng.normal(0.0, 1.0, n).astype(np.float32)
    aliased[:: max(8, n // orderstats._BRACKET_SAMPLE)] += 1000.0  # the subsample sees only these: bounds miss
    if n >= orderstats._BRACKET_MIN_SIZE:  # each way is taken: the tie, the bracket, everything partitioned
        assert orderstats._middle_values(quantised, [n // 2]) is not None
        assert orderstats._middle_values(smooth, [(n - 1) // 2, n // 2]) is not None
        assert orderstats._middle_values(aliased, [n // 2]) is None
    zeros = np.where(rng.random(n) < 0.5, np.float32(-0.0), smooth)  # a median of 0.0 or -0.0
    for a in (quantised, smooth, aliased, np.sort(smooth), zeros, smooth.astype(np.float64)):
        got, want = orderstats.median_1d(a), np.median(a)
        assert type(got) is type(want) and repr(got) == repr(want)
    for bad in (np.nan, np.inf, -np.inf):
        a = quantised.copy()
        a[n // 3] = bad
        got, want = orderstats.median_1d(a), np.median(a)
        assert repr(got) == repr(want)


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_NIGHT.is_dir(), reason="real night not available")
def test_same_evidence_on_the_real_night():
    from ccdwatch.fitsio import read_raw

    paths = sorted(REAL_NIGHT.glob("*.fit"))
    assert paths
    for path in paths:
        assert_same(read_raw(path).data)
