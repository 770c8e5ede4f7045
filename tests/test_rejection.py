"""The sigma clipping and the median in cache-sized pixel blocks (`ccdwatch.orderstats.pixel_blocks`)
give what they give on the whole array at once, and the clipping still finds the outliers planted."""

from __future__ import annotations

import numpy as np
import pytest

from ccdwatch import orderstats, rejection


def _values(nframes: int, npix: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.normal(100.0, 5.0, (nframes, npix)).astype(np.float32)
    planted = np.zeros(values.shape, dtype=bool)
    planted[rng.integers(0, nframes, npix // 7), rng.integers(0, npix, npix // 7)] = True
    values[planted] += 500.0  # cosmic rays: 100 sigma
    values[rng.random(values.shape) < 0.05] = np.nan  # missing values, some of them planted ones
    values[:, 5] = np.nan  # a pixel no frame covers
    return values, planted


@pytest.mark.parametrize("nframes", [3, 9, 40])
def test_blocks_give_the_whole_arrays_result(nframes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    values, _ = _values(nframes, 70_001, seed=nframes)  # not a multiple of any block
    monkeypatch.setattr(orderstats, "BLOCK_PIXELS", (16_384, 16_384))  # the smallest blocks: five here
    valid = rejection.count_valid(values)
    keep = rejection.clip_keep(values, 3.0, 5, 4.0)
    mean, count = rejection.sigma_clip(values, 3.0, 5, 4.0)
    cube = values.reshape(nframes, 1, -1)  # as the combinations pass it: (frames, rows, columns)
    median = orderstats.median_valid(cube, valid.reshape(1, -1))
    assert len(orderstats.pixel_blocks(*values.shape)) > 1
    monkeypatch.setattr(orderstats, "BLOCK_PIXELS", (values.shape[1], values.shape[1]))
    assert len(orderstats.pixel_blocks(*values.shape)) == 1
    np.testing.assert_array_equal(median, orderstats.median_valid(cube, valid.reshape(1, -1)))
    assert median.shape == (1, values.shape[1]) and np.isnan(median[0, 5])
    np.testing.assert_array_equal(keep, rejection.clip_keep(values, 3.0, 5, 4.0))
    whole_mean, whole_count = rejection.sigma_clip(values, 3.0, 5, 4.0)
    np.testing.assert_array_equal(mean, whole_mean)  # NaN where nothing is kept, in both
    np.testing.assert_array_equal(count, whole_count)


def test_a_stacks_strip_is_cut_into_several_blocks() -> None:
    from ccdwatch import stripwarp

    npix = stripwarp.strip_rows(40, 2048, 2048) * 2048
    blocks = orderstats.pixel_blocks(40, npix)
    assert len(blocks) > 2 and blocks[0].start == 0 and blocks[-1].stop == npix
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:], strict=False))


def test_blocked_clipping_finds_the_planted_outliers() -> None:
    values, planted = _values(20, 100_000, seed=3)
    keep = rejection.clip_keep(values, 3.0, 5, 4.0)
    present = planted & ~np.isnan(values)
    assert not keep[present].any()  # every cosmic ray that is there is clipped
    good = ~planted & ~np.isnan(values)
    assert keep[good].mean() > 0.99  # and few good values with it (3 sigma: ~0.3 % + the passes)
    mean, count = rejection.sigma_clip(values, 3.0, 5, 4.0)
    covered = count > 0
    assert not covered[5] and np.isnan(mean[5])
    # the clipped mean of ~19 values of sigma 5 about 100: within 5 standard errors everywhere
    assert np.all(np.abs(mean[covered] - 100.0) < 5 * 5.0 / np.sqrt(np.maximum(count[covered], 1)) + 0.5)
