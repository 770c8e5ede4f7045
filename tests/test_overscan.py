"""Overscan and trim against ground truth and against ccdproc (issue: detector physics)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.nddata import CCDData

from ccdwatch.headers.sections import Section
from ccdwatch.overscan import overscan_level, subtract_overscan_and_trim

NY, NX, NOVER = 64, 80, 16  # data 80 columns, then a 16-column overscan strip
BIASSEC, TRIMSEC = f"[{NX + 3}:{NX + NOVER},1:{NY}]", f"[1:{NX},1:{NY}]"


def frame(bias: float, sky: float, rng: np.random.Generator, slope: float = 0.0) -> np.ndarray:
    """A raw frame: bias level (plus a slope along the rows) everywhere, sky on the data only."""
    rows = bias + slope * np.arange(NY)[:, None]
    image = np.empty((NY, NX + NOVER))
    image[:, :NX] = rows + sky
    image[:, NX:] = rows
    return (image + rng.normal(0, 5.0, image.shape)).round()


def test_sections_parse_and_check_bounds():
    s = Section.parse("[1:80,1:64]", (64, 96))
    assert (s.rows, s.cols, s.shape) == (slice(0, 64), slice(0, 80), (64, 80))
    assert Section.parse("[80:1,64:1]") == s  # reversed sections as some cameras write them
    for bad in ("1:80,1:64", "[0:80,1:64]", "[1:97,1:64]"):
        with pytest.raises(ValueError):
            Section.parse(bad, (64, 96))


def test_drifting_bias_is_removed_frame_by_frame():
    """Identical exposures whose bias drifts by 3 ADU: after overscan the sky levels agree to a
    fraction of an ADU (without, they spread by the drift)."""
    rng = np.random.default_rng(3)
    raws = [frame(1000.0 + d, 200.0, rng) for d in np.linspace(0.0, 3.0, 6)]
    without = [np.mean(r[:, :NX]) for r in raws]
    after = [np.mean(subtract_overscan_and_trim(r, biassec=BIASSEC, trimsec=TRIMSEC)[0]) for r in raws]
    assert np.ptp(without) > 2.5
    assert np.ptp(after) < 0.5
    assert np.mean(after) == pytest.approx(200.0, abs=0.5)


def test_fit_along_rows_follows_a_sloped_bias():
    rng = np.random.default_rng(4)
    raw = frame(1000.0, 0.0, rng, slope=0.2)  # 12.6 ADU from the first row to the last
    image, _ = subtract_overscan_and_trim(raw, biassec=BIASSEC, trimsec=TRIMSEC, method="fit", order=1)
    assert abs(np.median(image[:8]) - np.median(image[-8:])) < 1.0
    flat_only, _ = subtract_overscan_and_trim(raw, biassec=BIASSEC, trimsec=TRIMSEC, method="median")
    assert abs(np.median(flat_only[:8]) - np.median(flat_only[-8:])) > 10.0


def test_matches_ccdproc():
    ccdproc = pytest.importorskip("ccdproc")
    rng = np.random.default_rng(5)
    for method, model, slope in (("median", None, 0.0), ("fit", "poly1", 0.1)):
        raw = frame(1000.0, 150.0, rng, slope=slope)
        ccd = CCDData(raw, unit="adu")
        ours, _ = subtract_overscan_and_trim(raw, biassec=BIASSEC, trimsec=TRIMSEC, method=method, order=1)
        if model is None:
            theirs = ccdproc.subtract_overscan(ccd, fits_section=BIASSEC, median=True, overscan_axis=1)
            # ccdproc subtracts each row's own median (noisy); ours one level for the frame:
            # they agree on average, ours scatters less from row to row
            theirs = ccdproc.trim_image(theirs, fits_section=TRIMSEC)
            assert np.mean(ours) == pytest.approx(np.mean(theirs.data), abs=0.2)
            assert np.std(np.mean(ours, axis=1)) < np.std(np.mean(theirs.data, axis=1))
        else:
            from astropy.modeling import models

            theirs = ccdproc.subtract_overscan(ccd, fits_section=BIASSEC, median=True, overscan_axis=1,
                                               model=models.Polynomial1D(1))
            theirs = ccdproc.trim_image(theirs, fits_section=TRIMSEC)
            # the same line from two estimators of each row's level (trimmed mean, median):
            # they agree well within the fit's own uncertainty (~0.3 ADU here)
            assert np.abs(ours - theirs.data).max() < 0.5


def test_level_methods():
    strip = np.arange(20.0)[:, None] + np.zeros((20, 4))
    assert np.allclose(overscan_level(strip, method="fit", order=1), np.arange(20.0))
    assert np.allclose(overscan_level(strip, method="median"), 9.5)  # trimmed mean of 0..19
    with pytest.raises(ValueError):
        overscan_level(strip, method="mean")
