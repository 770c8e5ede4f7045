"""Frames warped strip by strip (`ccdwatch.stripwarp`) against the whole frame's warp, and the
products' planes mapped where they lie (`ccdwatch.fitsio.map_product_planes`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ccdwatch import resample, stripwarp
from ccdwatch.align import Transform
from ccdwatch.fitsio import Compression, map_product_planes, read_product_hdus, write_product
from ccdwatch.resample import warp, warp_with_holes

SHAPE = (300, 260)
NOISE = 5.0


def _frame(seed: int = 1) -> stripwarp.MappedFrame:
    """Big-endian planes as a product stores them: noise about 100, 250 bad pixels, UNCERT ~ 5-6."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, NOISE, SHAPE).astype(">f4")
    bad = np.zeros(SHAPE, np.uint8)
    bad[rng.integers(0, SHAPE[0], 250), rng.integers(0, SHAPE[1], 250)] = 1
    uncert = (NOISE + rng.random(SHAPE)).astype(">f4")
    return stripwarp.MappedFrame(image, bad, uncert)


def _similarity(rotation_deg: float, dx: float, dy: float) -> Transform:
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    return Transform.from_array(np.array([[c, -s, dx], [s, c, dy], [0.0, 0.0, 1.0]]), n_matches=10, rms=0.05)


def _in_strips(rows: stripwarp.WarpedRows, height: int) -> np.ndarray:
    return np.concatenate([rows[y : y + height] for y in range(0, SHAPE[0], height)])


@pytest.mark.parametrize("method", ["bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("height", [16, 37, 128])
def test_strips_are_the_whole_frames_warp(method: str, height: int) -> None:
    """Each strip is warped from the input rows it samples plus a margin: the same missing
    pixels and footprint as the whole frame's warp, values equal up to OpenCV's 1/32 px
    quantisation of the shifted matrix (measured <= 0.002 ADU on noise of 5 ADU)."""
    frame = _frame()
    t = _similarity(0.6, 3.3, -7.6)
    whole = warp(frame.rows(0, SHAPE[0]), t, output_shape=SHAPE, method=method)
    rows = stripwarp.WarpedRows(frame, t, SHAPE, method=method)
    strips = _in_strips(rows, height)
    r0, r1 = rows._input_rows(100, 100 + height)  # a dithered frame: a strip reads about its own rows
    assert r1 - r0 < height + 2 * stripwarp.MARGIN + 5
    assert np.array_equal(np.isnan(strips), np.isnan(whole))
    assert np.isnan(whole).sum() > 250  # bad pixels (their footprints) and the dither's edge
    assert np.nanmax(np.abs(strips - whole)) < 1e-3 * NOISE


def test_variance_strips_and_offset() -> None:
    """The variance is UNCERT squared, NaN where the image is, warped bilinearly; the image's
    strips have the frame's sky offset removed; a row index gives one row."""
    frame = _frame(2)
    t = _similarity(-0.3, -2.2, 4.9)
    image = frame.rows(0, SHAPE[0])
    var = frame.variance_rows(0, SHAPE[0])
    assert var is not None and np.array_equal(np.isnan(var), np.isnan(image))
    whole = warp(var, t, output_shape=SHAPE, order=1)
    strips = _in_strips(stripwarp.WarpedRows(frame, t, SHAPE, variance=True), 50)
    assert np.array_equal(np.isnan(strips), np.isnan(whole))
    assert np.nanmax(np.abs(strips - whole)) < 1e-4 * np.nanmax(whole)
    shifted = stripwarp.WarpedRows(frame, t, SHAPE, offset=12.5)
    plain = stripwarp.WarpedRows(frame, t, SHAPE)
    np.testing.assert_allclose(shifted[100:140], plain[100:140] - np.float32(12.5), rtol=0, atol=1e-5)
    assert np.array_equal(plain[120], plain[120:121][0], equal_nan=True)


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_variance_strip_takes_the_image_strips_holes(method: str) -> None:
    """A variance strip warped right after its image strip, by the same thread, reuses the holes
    (missing pixels, blanked outputs) the image's warp found: the same bytes as finding them again."""
    frame = _frame(4)
    t = _similarity(0.4, 1.7, -3.1)
    image = stripwarp.WarpedRows(frame, t, SHAPE, method=method)
    variance = stripwarp.WarpedRows(frame, t, SHAPE, variance=True)
    alone = stripwarp.WarpedRows(_frame(4), t, SHAPE, variance=True)  # no image strip before it
    for y in range(0, SHAPE[0], 40):
        image[y : y + 40]
        assert frame._holes  # the image's holes wait for the variance of the same strip
        shared = variance[y : y + 40]
        assert not frame._holes  # taken
        assert np.array_equal(shared, alone[y : y + 40], equal_nan=True)
    assert np.isnan(shared).any()


def test_holes_of_another_frame_are_not_used() -> None:
    """`warp_with_holes` uses given holes only when they are the frame's: a variance with a pixel
    missing that the image has is warped as if nothing were given."""
    rng = np.random.default_rng(5)
    image = rng.normal(100.0, NOISE, SHAPE).astype(np.float32)
    image[rng.integers(0, SHAPE[0], 40), rng.integers(0, SHAPE[1], 40)] = np.nan
    t = _similarity(0.2, 2.4, 1.3)
    _, holes = warp_with_holes(image, t, output_shape=SHAPE, method="bicubic")
    assert holes is not None and holes.n_missing > 0
    var = np.where(np.isnan(image), np.nan, np.float32(25.0)).astype(np.float32)
    var[150, 130] = np.nan  # one more missing pixel than the image
    fresh = warp(var, t, output_shape=SHAPE, order=1)
    given, own = warp_with_holes(var, t, output_shape=SHAPE, order=1, holes=holes)
    assert own is not holes and own is not None and own.n_missing == holes.n_missing + 1
    assert np.array_equal(given, fresh, equal_nan=True)
    same = np.where(np.isnan(image), np.nan, np.float32(25.0)).astype(np.float32)
    reused, kept = warp_with_holes(same, t, output_shape=SHAPE, order=1, holes=holes)
    assert kept is holes  # the same missing pixels, the same warp: reused
    assert np.array_equal(reused, warp(same, t, output_shape=SHAPE, order=1), equal_nan=True)


def test_strip_outside_the_frame_is_missing() -> None:
    frame = _frame(3)
    far = _similarity(0.0, 0.0, 250.0)  # the frame covers only the last 50 rows of the grid
    rows = stripwarp.WarpedRows(frame, far, SHAPE)
    assert np.isnan(rows[0:100]).all()
    assert np.isfinite(rows[260:290]).mean() > 0.9


def test_levels_and_typical_variance() -> None:
    """Sky level and typical variance from the unwarped 2x2-strided pixels; the sky's variance
    when the frame has no UNCERT."""
    frame = _frame(4)
    (level, typical), = stripwarp.frame_levels([frame])
    assert level == pytest.approx(100.0, abs=0.3)
    assert typical == pytest.approx(np.median(np.square(np.asarray(frame.uncert, np.float64))), rel=0.01)
    bare = stripwarp.MappedFrame(frame.image, frame.bad, None)
    (level2, sky_var), = stripwarp.frame_levels([bare], threads=2)
    assert level2 == level
    assert math.sqrt(sky_var) == pytest.approx(NOISE, rel=0.03)


def test_strip_rows_depend_on_the_group_only() -> None:
    assert stripwarp.strip_rows(40, 2048, 2048) == 102
    assert stripwarp.strip_rows(3, 2048, 2048) == 128  # few frames: at most 128 rows
    assert stripwarp.strip_rows(40, 9576, 6388) == 21
    assert stripwarp.strip_rows(400, 9576, 6388) == 16  # many: at least 16 rows
    assert stripwarp.strip_rows(10, 100, 8) == 8  # never more rows than the frame has


def test_product_planes_mapped_as_stored(tmp_path: Path) -> None:
    """A product's image, BADPIX and UNCERT as memory maps equal what reading it gives; a
    tile-compressed product is not mapped (None: the caller reads it)."""
    frame = _frame(5)
    hdus = fits.HDUList([fits.PrimaryHDU(np.asarray(frame.image, np.float32)),
                         fits.ImageHDU(np.asarray(frame.bad), name="BADPIX"),
                         fits.ImageHDU(np.asarray(frame.uncert, np.float32), name="UNCERT")])
    plain = tmp_path / "plain.fits"
    write_product(plain, hdus)
    planes = map_product_planes(plain, ("BADPIX", "UNCERT", "NOSUCH"))
    assert planes is not None and set(planes) == {"PRIMARY", "BADPIX", "UNCERT"}
    read = read_product_hdus(plain)
    for name, hdu in (("PRIMARY", read[0]), ("BADPIX", read["BADPIX"]), ("UNCERT", read["UNCERT"])):
        assert isinstance(planes[name], np.memmap)
        np.testing.assert_array_equal(np.asarray(planes[name]), hdu.data)
    packed = tmp_path / "packed.fits"
    write_product(packed, hdus, compression=Compression("gzip"))
    assert map_product_planes(packed, ("BADPIX", "UNCERT")) is None


def test_a_frame_turned_against_the_reference_keeps_nothing_between_strips() -> None:
    """A frame turned by 90 degrees samples all its rows for every strip: each strip reads them
    and lets them go (no whole frame kept, no missing-pixel map left for the variance strip,
    which finds its own), and its strips, image and variance, are still the whole frame's warp."""
    frame = _frame(6)
    square = (SHAPE[1], SHAPE[1])  # 260 x 260: the turned frame covers the grid
    t = _similarity(90.0, SHAPE[1] - 1.0, 0.0)
    whole = warp(frame.rows(0, SHAPE[0]), t, output_shape=square, method="bicubic")
    var = frame.variance_rows(0, SHAPE[0])
    assert var is not None
    whole_var = warp(var, t, output_shape=square, order=1)
    rows = stripwarp.WarpedRows(frame, t, square)
    variance = stripwarp.WarpedRows(frame, t, square, variance=True)
    assert rows._input_rows(0, 20) == (0, SHAPE[1] + stripwarp.MARGIN)  # all the rows the grid sees, for 20
    strips, var_strips = [], []
    for y in range(0, square[0], 20):
        strips.append(rows[y : y + 20])
        assert not frame._missing and not frame._holes  # nothing of the frame's size waits
        var_strips.append(variance[y : y + 20])
    assert not hasattr(rows, "_whole") and vars(rows).keys() == vars(variance).keys()
    for got, expected, tolerance in ((np.concatenate(strips), whole, 1e-3 * NOISE),
                                     (np.concatenate(var_strips), whole_var, 1e-4 * np.nanmax(whole_var))):
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        assert np.nanmax(np.abs(got - expected)) < tolerance


def test_variance_rows_reuse_the_image_rows_just_read_and_only_those() -> None:
    """A variance strip needs to know where the image is NaN: it takes that from the same
    thread's read of the same image rows (spared a second read and conversion), and reads the
    image itself for any other rows; the values are the same either way."""
    frame = _frame(3)
    frame.image[5, 7] = np.nan  # a NaN of the image itself, besides the bad pixels
    fresh = frame.variance_rows(0, 40)  # nothing remembered: reads the image's rows
    assert fresh is not None and np.isnan(fresh[5, 7]) and np.isnan(fresh).sum() > 20
    frame.rows(0, 40)
    assert frame._missing == {}  # remembered only when asked: a whole frame's map could stay for good
    image = frame.rows(0, 40, remember=True)
    assert len(frame._missing) == 1  # remembered for this thread
    remembered = frame.variance_rows(0, 40)
    assert frame._missing == {}  # used once
    assert remembered is not None and np.array_equal(np.isnan(remembered), np.isnan(image))
    assert np.array_equal(remembered, fresh, equal_nan=True)
    frame.rows(0, 40, remember=True)
    other = frame.variance_rows(10, 50)  # other rows: the memo does not fit, the image is read
    reference = np.square(np.asarray(frame.uncert[10:50], np.float32))
    reference[np.isnan(frame.rows(10, 50))] = np.nan
    assert np.array_equal(other, reference, equal_nan=True)


@pytest.mark.parametrize("method", ["bilinear", "bicubic", "lanczos"])
def test_strips_told_their_bad_pixels_are_the_strips_that_find_them(method: str) -> None:
    """A strip's rows go to the warp with their bad pixels as they are and a map of where those
    are (`MappedFrame.strip_rows`), filled in place: the same bytes as the warp of the rows with
    NaN set on them, which finds them itself; so are strips whose image has NaN or inf of its own
    or whose UNCERT has a NaN (those find them), and a cluster of bad pixels whose 5x5 boxes have
    no valid pixel (filled with the frame's median)."""
    told = _frame(7)
    assert told.bad is not None and told.uncert is not None
    told.bad[200:207, 100:107] = 1  # a cluster: the middle pixels' boxes are all bad
    told.image[30, 40] = np.nan  # of the image itself: that strip finds its missing pixels
    told.image[140, 12] = np.inf
    told.uncert[250, 70] = np.nan  # and of its UNCERT, besides the image's
    baked = np.asarray(told.image, dtype=np.float32).copy()
    baked[np.asarray(told.bad) != 0] = np.nan
    found = stripwarp.MappedFrame(baked, None, np.asarray(told.uncert, dtype=np.float32))  # NaN: found by the warp
    t = _similarity(0.5, 2.4, -4.3)
    image = [stripwarp.WarpedRows(f, t, SHAPE, method=method, offset=3.0) for f in (told, found)]
    variance = [stripwarp.WarpedRows(f, t, SHAPE, variance=True) for f in (told, found)]
    for y in range(0, SHAPE[0], 32):
        strips = [image[k][y : y + 32] for k in (0, 1)]
        assert np.array_equal(strips[0], strips[1], equal_nan=True)
        variances = [variance[k][y : y + 32] for k in (0, 1)]
        assert np.array_equal(variances[0], variances[1], equal_nan=True)
    whole = warp(told.rows(0, SHAPE[0]), t, output_shape=SHAPE, method=method)
    assert np.isnan(whole[195:212, 95:112]).sum() > 40  # the cluster blanks its footprint
    assert np.isfinite(whole).sum() > 0.9 * whole.size


@pytest.mark.parametrize("method", ["bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("n_bad", [300, 2000])
def test_warp_told_where_pixels_are_missing(method: str, n_bad: int) -> None:
    """`warp_with_holes` told where the missing pixels are (values left as they are there) and
    allowed to fill them in its input: the same bytes as the warp of a copy with NaN set on them,
    with a cluster whose 5x5 boxes have no valid pixel (filled with the frame's median), a few
    (filled one by one) or many missing pixels (box filters over the frame)."""
    rng = np.random.default_rng(8)
    data = rng.normal(100.0, NOISE, SHAPE).astype(np.float32)
    missing = np.zeros(SHAPE, bool)
    missing[rng.integers(0, SHAPE[0], n_bad), rng.integers(0, SHAPE[1], n_bad)] = True
    missing[120:127, 60:67] = True
    data[140, 12] = np.inf  # a non-finite value is always among the missing ones
    missing[140, 12] = True
    with_nan = np.where(missing, np.float32(np.nan), data)
    t = _similarity(-0.7, 1.9, 2.6)
    expected, holes = warp_with_holes(with_nan, t, output_shape=SHAPE, method=method)
    told, told_holes = warp_with_holes(data, t, output_shape=SHAPE, method=method,
                                       missing=missing, overwrite=True)
    assert np.array_equal(told, expected, equal_nan=True)
    assert holes is not None and told_holes is not None and told_holes.n_missing == holes.n_missing
    # the variance of the same pixels, told the image's holes and map: they are taken as they are
    var = np.full(SHAPE, 25.0, np.float32)
    shared, _ = warp_with_holes(var, t, output_shape=SHAPE, order=1, holes=told_holes, missing=told_holes.missing,
                                overwrite=True)
    alone = warp(np.where(missing, np.float32(np.nan), np.float32(25.0)), t, output_shape=SHAPE, order=1)
    assert np.array_equal(shared, alone, equal_nan=True)
    # physics: a flat frame stays flat where its warp is defined, and holes blank their footprint
    assert np.nanmax(np.abs(shared - 25.0)) < 1e-3
    assert np.isnan(told[115:135, 55:75]).sum() >= 49


@pytest.mark.parametrize(("rotation_deg", "scale", "shear"), [(0.0, 1.0, 0.0), (0.3, 1.0001, 0.0), (37.0, 1.0, 0.0),
                                                              (-120.0, 1.3, 0.0), (10.0, 0.8, 0.2)])
def test_pixels_a_missing_pixel_blanks(rotation_deg: float, scale: float, shear: float) -> None:
    """The output pixels found from the missing pixels one by one (a few rows and columns around
    each, forward-mapped) are those where the bilinear warp of the missing mask exceeds 1e-6."""
    rng = np.random.default_rng(9)
    missing = rng.random(SHAPE) < 0.003
    missing[150:153, 40:44] = True
    c, s = math.cos(math.radians(rotation_deg)) * scale, math.sin(math.radians(rotation_deg)) * scale
    m = np.array([[c, -s + shear, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    centre = np.array([SHAPE[1] / 2, SHAPE[0] / 2])
    m[:2, 2] = centre + np.array([4.3, -6.7]) - m[:2, :2] @ centre  # about the middle, then shifted
    a, offset = resample._ndimage_matrix(np.linalg.inv(m))
    n = int(missing.sum())
    rows, cols = resample._missing_blanked(missing, n, m, a, offset, SHAPE, direct=True)
    (mask,) = resample._missing_blanked(missing, n, m, a, offset, SHAPE, direct=False)
    found = np.zeros(SHAPE, bool)
    found[rows, cols] = True
    assert np.array_equal(found, mask)
    assert mask.sum() > 0.3 * n  # the middle of the frame stays on the grid


@pytest.mark.parametrize("variance", [False, True])
def test_strips_read_into_a_stack(variance: bool) -> None:
    """`WarpedRows.read_into` writes the rows `WarpedRows` indexing returns into the caller's
    array (a combination's stack of strips), NaN off the frame, and takes only arrays that fit."""
    frame = _frame(10)
    t = _similarity(0.2, 40.0, 150.0)  # the frame lands on the grid's rows 150 and on
    rows = stripwarp.WarpedRows(frame, t, SHAPE, variance=variance)
    stack = np.zeros((2, 40, SHAPE[1]), np.float32)
    for y in (260, 120, 0):
        if variance:
            stripwarp.WarpedRows(frame, t, SHAPE)[y : y + 40]  # the image's strip first, as a stack does
        written = rows.read_into(slice(y, y + 40), stack[1])
        assert np.shares_memory(written, stack[1]) and written.shape == stack[1].shape
        expected = rows[y : y + 40]
        assert np.array_equal(stack[1], expected, equal_nan=True)
        assert not stack[0].any()
        assert np.isfinite(stack[1]).any() == (y >= 120)  # rows 0-39: off the frame, NaN
    with pytest.raises(ValueError, match="read_into"):
        rows.read_into(slice(0, 40), np.zeros((40, SHAPE[1]), np.float64))
