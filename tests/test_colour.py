"""One-shot-colour (Bayer) sensors: the pattern from the header, demosaicing, per-colour flats,
mosaic previews, and a synthetic colour night through the pipeline to an RGB stack.

Ground truth: :mod:`ccdwatch.synth` with ``Camera(bayer_pattern=...)`` (its mosaic geometry is
its own, ``synth.cfa_channels``, independent of :mod:`ccdwatch.colour`), stars of known colours,
a sky and a flat lamp of known colours and known channel responses.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from astropy.io import fits
from matplotlib import image as mpimg

from ccdwatch import calib, colour, previews, synth
from ccdwatch.catalog import Catalog
from ccdwatch.config import ConfigError, parse_config
from ccdwatch.daemon.watch import Watcher
from ccdwatch.headers import camera_key, normalise
from ccdwatch.headers.cards import _Cards
from ccdwatch.headers.cfa import bayerpat_card, header_pattern
from ccdwatch.pipeline import Pipeline

from .conftest import make_config

TRUE_RGB = {"R": 100.0, "G": 50.0, "B": 10.0}


def mosaic_of(planes: np.ndarray, pattern: str) -> np.ndarray:
    """Sample (3, ny, nx) R, G, B planes through ``pattern`` (the test's own geometry)."""
    out = np.empty(planes.shape[1:])
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[dy::2, dx::2] = planes["RGB".index(pattern[k]), dy::2, dx::2]
    return out


def uniform_planes(shape: tuple[int, int]) -> np.ndarray:
    return np.stack([np.full(shape, TRUE_RGB[c]) for c in "RGB"])


# ------------------------------------------------------------------------------ the pattern
@pytest.mark.parametrize(("cards", "expected"), [
    ({"BAYERPAT": "RGGB"}, "RGGB"),
    ({"BAYERPAT": "rggb", "ROWORDER": "TOP-DOWN"}, "RGGB"),
    ({"BAYERPAT": "RGGB", "XBAYROFF": 1}, "GRBG"),
    ({"BAYERPAT": "RGGB", "YBAYROFF": 1}, "GBRG"),
    ({"BAYERPAT": "RGGB", "XBAYROFF": 1, "YBAYROFF": 1}, "BGGR"),
    ({"BAYERPAT": "RGGB", "XORGSUBF": 101, "YORGSUBF": 40}, "GRBG"),  # odd subframe origin
    ({"BAYERPAT": "RGGB", "XBAYROFF": 1, "XORGSUBF": 1}, "RGGB"),
    ({"BAYERPAT": "RGGB", "ROWORDER": "BOTTOM-UP", "NAXIS2": 64}, "GBRG"),  # top row is array row 63
    ({"BAYERPAT": "RGGB", "ROWORDER": "BOTTOM-UP", "NAXIS2": 63}, "RGGB"),  # ... or row 62
    ({"BAYERPAT": "GRBG", "YBAYROFF": 1, "ROWORDER": "BOTTOM-UP", "NAXIS2": 64}, "GRBG"),
    ({"COLORTYP": "BGGR"}, "BGGR"),
    ({"COLORTYP": "RGB"}, None),
    ({"COLORTYP": "MONO"}, None),
    ({}, None),
])
def test_pattern_of_the_stored_array_from_the_header(cards, expected):
    header = {"NAXIS": 2, "NAXIS1": 96, "NAXIS2": 64, **cards}
    got = header_pattern(_Cards(header), naxis2=header["NAXIS2"])
    assert got == expected
    if expected is not None:  # the card a product writes reads back as the same pattern
        written = {**header, "BAYERPAT": bayerpat_card(expected, header, naxis2=header["NAXIS2"])}
        assert header_pattern(_Cards(written), naxis2=header["NAXIS2"]) == expected


def test_bottom_up_file_demosaics_to_its_true_colours():
    """A writer that stores rows bottom-up (the top row last) and names the pattern top-down."""
    top_down = mosaic_of(uniform_planes((64, 96)), "RGGB")
    stored = np.flipud(top_down)
    cards = _Cards({"BAYERPAT": "RGGB", "ROWORDER": "BOTTOM-UP", "NAXIS2": 64})
    rgb = colour.demosaic(stored, header_pattern(cards, naxis2=64))
    for p, c in enumerate("RGB"):
        assert np.allclose(rgb[p], TRUE_RGB[c])


def test_unusable_bayerpat_is_reported_and_ignored():
    cards = _Cards({"BAYERPAT": "RGBW"})
    assert header_pattern(cards, naxis2=10) is None
    assert any("BAYERPAT" in w for w in cards.warnings)


def test_config_override_and_camera_key():
    header = {"IMAGETYP": "Light Frame", "EXPTIME": 10.0, "INSTRUME": "ZWO ASI294MC", "NAXIS1": 96, "NAXIS2": 64,
              "BAYERPAT": "RGGB"}
    mono = {k: v for k, v in header.items() if k != "BAYERPAT"}
    assert normalise(header, filename="a.fits").bayer_pattern == "RGGB"
    assert normalise(mono, filename="a.fits").bayer_pattern is None
    assert normalise(header, filename="a.fits", bayer_pattern="none").bayer_pattern is None
    assert normalise(mono, filename="a.fits", bayer_pattern="BGGR").bayer_pattern == "BGGR"
    by_camera = {"zwo asi294mc": "GBRG"}
    assert normalise(header, filename="a.fits", bayer_instruments=by_camera).bayer_pattern == "GBRG"
    assert normalise({**mono, "INSTRUME": "QSI"}, filename="a.fits", bayer_instruments=by_camera).bayer_pattern is None
    key_colour = camera_key(normalise(header, filename="a.fits"))
    key_mono = camera_key(normalise(mono, filename="a.fits"))
    assert key_colour == key_mono + "|cfa=RGGB" and "cfa" not in key_mono
    cfg = parse_config({"colour": {"bayer_pattern": "rggb", "instruments": {"ZWO ASI294MC": "None"}}}, base=Path("."))
    assert cfg.colour.bayer_pattern == "RGGB" and dict(cfg.colour.instruments) == {"zwo asi294mc": "none"}
    with pytest.raises(ConfigError, match="colour.bayer_pattern"):
        parse_config({"colour": {"bayer_pattern": "RGBW"}}, base=Path("."))


# ------------------------------------------------------------------------------ demosaicing
@pytest.mark.parametrize("pattern", colour.PATTERNS)
@pytest.mark.parametrize("method", colour.DEMOSAIC_METHODS)
def test_demosaic_puts_each_colour_in_its_own_plane(pattern, method):
    for shape in ((20, 30), (21, 31)):  # odd sizes too: the edges keep the pattern's parity
        rgb = colour.demosaic(mosaic_of(uniform_planes(shape), pattern), pattern, method=method)
        assert rgb.shape == (3, *shape) and rgb.dtype == np.float32
        for p, c in enumerate("RGB"):
            assert np.allclose(rgb[p], TRUE_RGB[c], rtol=0, atol=1e-4), (pattern, method, c)


# OpenCV names a pattern by the 2nd row's 2nd and 3rd pixels: its "BG" is RGGB.
OPENCV_LEGACY = {"RGGB": cv2.COLOR_BayerBG2RGB, "BGGR": cv2.COLOR_BayerRG2RGB, "GRBG": cv2.COLOR_BayerGB2RGB,
                 "GBRG": cv2.COLOR_BayerGR2RGB}


@pytest.mark.parametrize("pattern", colour.PATTERNS)
def test_bilinear_equals_opencv_bilinear_under_its_naming(pattern):
    rng = np.random.default_rng(1)
    m = rng.integers(0, 4000, size=(40, 60)).astype(np.uint16)
    ours = colour.demosaic(m, pattern, method="bilinear")
    theirs = np.moveaxis(cv2.cvtColor(m, OPENCV_LEGACY[pattern]), 2, 0).astype(np.float32)
    assert np.abs(ours - theirs)[:, 2:-2, 2:-2].max() <= 0.5 + 1e-3  # OpenCV rounds to integers


def test_malvar_reproduces_linear_colour_ramps_exactly():
    """Malvar-He-Cutler's corrections are Laplacians: zero on any linear field, of every colour."""
    yy, xx = np.mgrid[0:40, 0:50].astype(float)
    planes = np.stack([100 + 2 * xx + yy, 300 - xx + 3 * yy, 50 + 0.5 * xx - 0.25 * yy])
    rgb = colour.demosaic(mosaic_of(planes, "GRBG"), "GRBG")
    assert np.abs(rgb - planes)[:, 2:-2, 2:-2].max() < 1e-3


def test_missing_pixel_reaches_only_the_kernel_footprint():
    rng = np.random.default_rng(2)
    m = rng.normal(1000, 30, (40, 50)).astype(np.float32)
    holed = m.copy()
    holed[20, 25] = np.nan
    full, rgb = colour.demosaic(m, "RGGB"), colour.demosaic(holed, "RGGB")
    lost = np.isnan(rgb)
    assert (lost == lost[0]).all() and lost[0].sum() == 13  # 5x5 less its corners, every plane
    assert np.array_equal(rgb[~lost], full[~lost])  # the fill value reaches no other pixel


# ------------------------------------------------------------------------------ flats and previews
OSC = synth.Camera(shape=(128, 192), bayer_pattern="RGGB", channel_response=(0.7, 1.0, 0.5),
                   instrument="SynthCam OSC")
LAMP = (0.6, 1.0, 0.4)


def test_flat_normalised_colour_by_colour():
    rng = np.random.default_rng(4)
    raw = synth.expose(OSC, kind="flat", exptime=1.0, rng=rng, colour=LAMP) - synth.bias_pattern(OSC)
    sites = colour.channel_sites("RGGB")
    raw_levels = {c: np.median(np.concatenate([raw[dy::2, dx::2].ravel() for dy, dx in s]))
                  for c, s in zip("RGB", sites, strict=True)}
    assert raw_levels["R"] / raw_levels["G"] == pytest.approx(0.6 * 0.7, rel=0.02)  # what must go
    flat = colour.normalise_flat(raw, "RGGB")
    stats = colour.channel_stats(flat, "RGGB")
    assert {c: round(m, 6) for c, (m, _) in stats.items()} == {"R": 1.0, "G": 1.0, "B": 1.0}
    # what stays is each pixel's response: vignetting and pixel response, same in every colour
    truth = synth.flat_response(OSC)
    ratio = flat / truth
    for c, s in zip("RGB", sites, strict=True):
        per_site = np.concatenate([ratio[dy::2, dx::2].ravel() for dy, dx in s])
        level = raw_levels[c]  # ADU: the photon and read noise of one flat is all that is left
        expected = np.sqrt(level / OSC.gain + OSC.read_noise ** 2) / level
        assert np.std(per_site) / np.mean(per_site) == pytest.approx(expected, rel=0.15), c
    # a monochrome normalisation would keep the lamp's colour, and its 'noise' mixes colours
    mono = calib.normalise_flat(raw)
    assert colour.channel_stats(mono, "RGGB")["B"][0] < 0.5
    assert calib.robust_stats(raw)[1] > 5 * colour.mosaic_stats(raw, "RGGB")[1]


def _column_variation(png, *, left=80, right=130, top=40, bottom=60) -> float:
    """Mean |difference| between neighbouring columns of a master preview's image area
    (the fixed layout of `previews.master_preview`, in pixels), relative to its mean."""
    img = mpimg.imread(png)[top + 3: -bottom - 3, left + 3: -right - 3]
    img = img if img.ndim == 2 else img[..., :3].mean(axis=2)  # a grey PNG has no channels
    cols = img.mean(axis=0)
    return float(np.mean(np.abs(np.diff(cols))) / np.mean(cols))


def test_preview_of_a_mosaic_flat_has_no_stripes(tmp_path):
    rng = np.random.default_rng(5)
    raw = synth.expose(OSC, kind="flat", exptime=1.0, rng=rng, colour=LAMP)
    binned = previews.master_preview(raw, tmp_path / "binned.png", title="raw flat", pattern="RGGB")
    striped = previews.master_preview(raw, tmp_path / "striped.png", title="raw flat")
    assert _column_variation(binned) < 0.01
    assert _column_variation(striped) > 5 * _column_variation(binned)  # the stripes the binning removes


# ------------------------------------------------------------------------------ a colour night
NIGHT_CAMERA = synth.Camera(shape=(192, 256), bayer_pattern="RGGB", channel_response=(0.7, 1.0, 0.5),
                            instrument="SynthCam OSC")


@pytest.fixture(scope="module")
def colour_night(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("colour")
    cfg = make_config(tmp, workers={"processes": 0})
    truth = synth.make_night(cfg.paths.incoming, camera=NIGHT_CAMERA, seed=5, n_bias=3, n_dark=3, n_flat=3,
                             filters=("L",), n_light=4, n_stars=24, flux_range=(200.0, 1500.0), style="nina",
                             lamp_colour=LAMP)
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    cat.close()
    return cfg, truth, sqlite3.connect(cfg.paths.database)


@pytest.mark.slow
def test_colour_night_calibrates_in_the_mosaic(colour_night):
    cfg, truth, db = colour_night
    patterns = db.execute("select distinct bayer_pattern, camera_key from frames").fetchall()
    assert patterns == [("RGGB", "SynthCam OSC|bin1x1|256x192|gain=100|offset=50|cfa=RGGB")]
    for kind, path in db.execute("select kind, path from masters"):
        with fits.open(path) as hdus:
            assert hdus[0].data.shape == NIGHT_CAMERA.shape and hdus[0].header["BAYERPAT"] == "RGGB", kind
    flat = fits.getdata(db.execute("select path from masters where kind='flat'").fetchone()[0])
    assert [round(m, 5) for m, _ in colour.channel_stats(flat, "RGGB").values()] == [1.0, 1.0, 1.0]
    for path, fwhm, n_stars in db.execute("select c.path, f.fwhm, f.n_stars from calibrated c join frames f "
                                          "on f.id = c.frame_id"):
        assert fits.getdata(path).shape == NIGHT_CAMERA.shape  # the calibrated product stays a mosaic
        assert fwhm == pytest.approx(truth.fwhm, rel=0.05)  # measured on the luminance, in mosaic pixels
        assert n_stars >= 0.8 * len(truth.stars)


@pytest.mark.slow
def test_colour_night_stacks_into_true_colours_and_positions(colour_night):
    cfg, truth, db = colour_night
    path, = db.execute("select path from stacks where current = 1").fetchone()
    with fits.open(path) as hdus:
        assert hdus[0].header["NAXIS"] == 3 and hdus[0].header["NAXIS3"] == 3
        rgb, ref = hdus[0].data.astype(float), hdus[0].header["REFSHA"]  # products name frames by content
    ref_path, = db.execute("select path from frames where sha256 = ?", (ref,)).fetchone()
    stars = truth.light_stars([str(p) for p in truth.files["light"]].index(ref_path))
    response = np.array(NIGHT_CAMERA.channel_response)
    yy, xx = np.mgrid[0:rgb.shape[1], 0:rgb.shape[2]]
    lum = colour.luminance(rgb)
    errors, offsets = [], []
    for x, y, tint in zip(stars.x, stars.y, stars.colour, strict=True):
        gaps = np.hypot(stars.x - x, stars.y - y)
        if np.sort(gaps)[1] < 20 or not (15 < x < rgb.shape[2] - 16 and 15 < y < rgb.shape[1] - 16):
            continue  # isolated stars away from the edges: apertures measure one star
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        ap, ann = r2 <= 7 ** 2, (r2 >= 9 ** 2) & (r2 <= 14 ** 2)  # 7 px: the whole star, 2.3 FWHM
        if not np.isfinite(rgb[:, ap]).all():
            continue  # a masked (hot) pixel in the aperture
        flux = [np.sum(p[ap] - np.nanmedian(p[ann])) for p in rgb]
        true = tint * response / response[1]  # no white balance: the camera's own colours
        errors.append([flux[0] / flux[1] / true[0] - 1, flux[2] / flux[1] / true[2] - 1])
        w = np.clip(lum[ap] - np.nanmedian(lum[ann]), 0, None)
        offsets.append([np.sum(w * xx[ap]) / w.sum() - x, np.sum(w * yy[ap]) / w.sum() - y])
    errors, offsets = np.array(errors), np.array(offsets)
    print(f"{len(errors)} stars: R/G, B/G error median {np.median(errors, axis=0)}, rms {np.std(errors, axis=0)}; "
          f"position rms {np.sqrt(np.mean(np.sum(offsets ** 2, axis=1))):.4f} px")
    assert len(errors) >= 6
    assert np.abs(np.median(errors, axis=0)).max() < 0.015  # R/G and B/G of the stars, no bias
    assert np.percentile(np.abs(errors), 90) < 0.04  # each star within a few %
    assert np.sqrt(np.mean(np.sum(offsets ** 2, axis=1))) < 0.05  # px, star positions on the stack
