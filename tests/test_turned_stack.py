"""A group turned against its reference (field rotation, a re-framing after a meridian flip, a
rotator moved), stacked as the daemon does: products memory-mapped where they lie, each strip
warped as the combination reads it (`ccdwatch.stripwarp`).

A seeded synthetic group: 12 frames of 160x900 (FWHM 3 px, sky 100 ADU, noise 5 ADU, a few bad
pixels each, UNCERT), frame 0 the reference, the others turned 2.6-3.0 deg about the centre and
dithered. Strips of 16 rows (as for a large group of big frames): each strip of a turned frame
samples ~80 of its rows. Such frames were once read whole and kept until the stack ended (two
planes of every turned frame: 38 GB for 200 frames of 6k), beyond any memory budget.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sep
from scipy.spatial import cKDTree

from ccdwatch import qa, stack, stripwarp, synth

SHAPE = (160, 900)
FWHM = 3.0
SKY = 100.0
NOISE = 5.0
N_FRAMES = 12
FRAME_BYTES = 4 * SHAPE[0] * SHAPE[1]  # one float32 plane


@dataclass
class Group:
    stars: synth.Stars  # the truth on the reference's grid
    mapped: dict[int, stripwarp.MappedFrame]
    sources: dict[int, qa.Sources]


def _group(tmp: Path, rotation_deg: float) -> Group:
    rng = np.random.default_rng(31)
    stars = synth.star_field(SHAPE, 90, rng=rng, flux_range=(500.0, 20000.0))
    mapped, sources = {}, {}
    for i in range(N_FRAMES):
        rot = 0.0 if i == 0 else rotation_deg + 0.2 * (i % 3)
        truth = synth.transform_stars(stars, dx=0.0 if i == 0 else rng.uniform(-3, 3),
                                      dy=0.0 if i == 0 else rng.uniform(-3, 3), rotation_deg=rot)
        image = synth.render_stars(SHAPE, truth, fwhm=FWHM, exptime=1.0) + SKY + rng.normal(0.0, NOISE, SHAPE)
        bad = np.zeros(SHAPE, np.uint8)
        bad[rng.integers(0, SHAPE[0], 40), rng.integers(0, SHAPE[1], 40)] = 1
        image[bad != 0] = 5000.0  # hot pixels the bad-pixel map knows
        planes = {"image": image.astype(np.float32), "bad": bad, "uncert": np.full(SHAPE, NOISE, np.float32)}
        for name, plane in planes.items():
            np.save(tmp / f"{i}-{name}.npy", plane)
        mapped[i] = stripwarp.MappedFrame(*(np.load(tmp / f"{i}-{name}.npy", mmap_mode="r") for name in planes))
        inside = (truth.x > 2) & (truth.x < SHAPE[1] - 3) & (truth.y > 2) & (truth.y < SHAPE[0] - 3)
        order = np.argsort(-truth.flux[inside])
        sources[i] = qa.Sources(x=truth.x[inside][order], y=truth.y[inside][order], flux=truth.flux[inside][order],
                                fwhm=np.full(int(inside.sum()), FWHM), elongation=np.ones(int(inside.sum())))
    return Group(stars, mapped, sources)


def _stacked(group: Group, workdir: Path, **kwargs: int) -> tuple[stack.StackResult, int]:
    """The group's stack (one thread unless told) and the peak of numpy's allocations while it ran."""
    tracemalloc.start()
    try:
        result = stack.align_and_stack(list(group.mapped), None, group.sources, 0, mapped=group.mapped,
                                       workdir=workdir, weights="ivar", **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.fixture(scope="module")
def small_strips() -> Iterator[None]:
    """Strips of 16 rows, as for a group of hundreds of 6k frames (`stripwarp.strip_rows`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stripwarp, "_STRIP_BYTES", 1 << 16)
        assert stripwarp.strip_rows(N_FRAMES, SHAPE[1], SHAPE[0]) == 16
        yield


@pytest.fixture(scope="module")
def turned(small_strips: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Group, stack.StackResult, int]:
    group = _group(tmp_path_factory.mktemp("turned"), 2.6)
    return (group, *_stacked(group, tmp_path_factory.mktemp("work")))


def test_turned_frames_are_not_kept_whole(turned: tuple[Group, stack.StackResult, int], small_strips: None,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each strip of a turned frame reads the rows it samples and lets them go: the stack's
    allocations peak as the same group's stack unturned does, give or take a frame's plane
    (the turned strips' rows: ~80 of 160 here), not the 22 planes (11 frames' images and
    variances, 12.7 MB) the turned frames once kept until the stack ended."""
    group, result, peak = turned
    assert len(result.transforms) == N_FRAMES and not result.failed
    assert all(abs(t.rotation_deg) > 2.5 for i, t in result.transforms.items() if i)
    _, flat_peak = _stacked(_group(tmp_path_factory.mktemp("flat"), 0.0), tmp_path_factory.mktemp("work"))
    assert peak < flat_peak + FRAME_BYTES, (peak, flat_peak)
    for frame in group.mapped.values():  # no missing-pixel map left behind for a variance strip
        assert not frame._missing and not frame._holes


def test_turned_stack_matches_the_truth(turned: tuple[Group, stack.StackResult, int]) -> None:
    """The stack of the turned group has the reference's stars where they are (rms < 0.1 px for
    isolated bright ones) and their fluxes (aperture of 3 FWHM on the stack less its sky: mean
    within 1 %, bright ones each within 3 %)."""
    group, result, _ = turned
    stars = group.stars
    xy = np.column_stack([stars.x, stars.y])
    d_iso, _ = cKDTree(xy).query(xy, k=2)
    x, y = stars.x, stars.y
    good = (d_iso[:, 1] > 12) & (x > 30) & (x < SHAPE[1] - 30) & (y > 30) & (y < SHAPE[0] - 30) & (stars.flux > 1000)
    assert good.sum() >= 15
    _, found = qa.measure(result.image)
    d, _ = cKDTree(found.xy).query(xy[good])
    assert math.sqrt(np.mean(d**2)) < 0.1
    sky = float(np.nanmedian(result.image))
    flux, _, _ = sep.sum_circle((result.image - sky).astype(np.float64), x[good], y[good], 3 * FWHM)
    ratio = flux / stars.flux[good]
    assert np.mean(ratio) == pytest.approx(1.0, abs=0.01)
    assert np.all(np.abs(ratio[stars.flux[good] > 5000] - 1) < 0.03)
    assert np.isfinite(result.image[30:-30, 30:-30]).all()


def test_turned_strips_side_by_side_only_within_the_budget(turned: tuple[Group, stack.StackResult, int],
                                                           tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Threads warp strips of turned frames side by side only while the rows they read fit half the
    budget (each reads ~80 rows of 900 px here: 6 bytes a pixel, 0.4 MB); the same bytes either way."""
    group, alone, _ = turned
    reach = stripwarp.READ_BYTES_PER_PIXEL * max(
        stripwarp.WarpedRows(f, t, SHAPE).input_pixels(16) for f, t in
        ((group.mapped[i], alone.transforms[i]) for i in alone.transforms))
    assert 60 * SHAPE[1] * 6 < reach < 100 * SHAPE[1] * 6
    for budget, threads in ((4 * reach, 2), (3 * reach, 1)):
        caplog.clear()
        with caplog.at_level("INFO", logger="ccdwatch.stack"):
            result, _ = _stacked(group, tmp_path, threads=2, memory_budget=budget)
        assert ("1 thread(s)" in caplog.text) == (threads == 1)
        for name in ("image", "count", "used", "sigma", "expmap"):
            assert np.array_equal(getattr(result, name), getattr(alone, name), equal_nan=True), name
