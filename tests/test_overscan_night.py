"""Overscan and trim end to end: a synthetic night whose bias level drifts, with an overscan strip
and BIASSEC/TRIMSEC cards, reduced by the pipeline (ground truth from :mod:`ccdwatch.synth`)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.daemon.watch import Watcher
from ccdwatch.fitsio import read_product
from ccdwatch.models import Calibrated, Frame, Master
from ccdwatch.pipeline import Pipeline

from .helpers import make_config

CAMERA = synth.Camera(shape=(160, 224), overscan=32)
DRIFT = 8.0  # ADU over the night: identical exposures spread by ~3 ADU without overscan correction
SKY = 400.0  # ADU: 2 ADU/s x 200 s


def reduce_night(tmp, **overscan):
    cfg = make_config(tmp, overscan=overscan) if overscan else make_config(tmp)
    truth = synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=21, n_bias=5, n_dark=5, n_flat=5,
                             filters=("V",), n_light=6, light_exptime=200.0, dark_exptime=300.0, sky=2.0,
                             n_stars=40, bias_drift=DRIFT)
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    return cfg, truth, cat


def sky_levels(cat):
    """Per light (observing order): the median of the calibrated product in ADU (products are in
    electrons when the gain is known: divided by their GAIN), and its shape."""
    with cat.reader() as s:
        lights = s.scalars(select(Frame).where(Frame.imagetyp == "light").order_by(Frame.date_obs)).all()
        products = [s.scalar(select(Calibrated).where(Calibrated.frame_id == f.id, Calibrated.current))
                    for f in lights]
        assert all(p is not None for p in products)
        read = [read_product(p.path) for p in products]
    adu = [h["GAIN"] if h.get("BUNIT") == "electron" else 1.0 for h, _ in read]
    images = [i for _, i in read]
    # the data region (an untrimmed frame's overscan columns are NaN: divided by a flat of ~0)
    return (np.array([float(np.nanmedian(i[:, :CAMERA.shape[1]])) / g for i, g in zip(images, adu, strict=True)]),
            {i.shape for i in images})


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    cfg, truth, cat = reduce_night(tmp_path_factory.mktemp("overscan"))
    yield cfg, truth, cat
    cat.close()


def test_drifting_bias_is_removed_by_the_overscan(corrected, tmp_path):
    _, truth, cat = corrected
    levels, shapes = sky_levels(cat)
    assert shapes == {CAMERA.shape}  # trimmed: no overscan column left
    spread = float(np.std(levels))
    # without the overscan (the header's sections not used) the drift stays in the products
    _, _, plain = reduce_night(tmp_path, use_header=False)
    before, plain_shapes = sky_levels(plain)
    plain.close()
    assert plain_shapes == {(CAMERA.shape[0], CAMERA.shape[1] + CAMERA.overscan)}
    offsets = np.array(truth.bias_offsets["light"])
    assert np.std(before) > 0.7 * np.std(offsets) > 1.0  # the drift, as the lights saw it
    assert spread < 0.25 < np.std(before) / 4, (spread, float(np.std(before)))
    assert np.all(np.abs(levels - SKY) < 3.0)  # the sky itself, in ADU (flat-fielded)


def test_overscan_level_in_the_catalogue_and_the_headers(corrected):
    _, truth, cat = corrected
    with cat.reader() as s:
        lights = s.scalars(select(Frame).where(Frame.imagetyp == "light").order_by(Frame.date_obs)).all()
        biases = s.scalars(select(Frame).where(Frame.imagetyp == "bias").order_by(Frame.date_obs)).all()
        expected = CAMERA.bias_level + np.array(truth.bias_offsets["light"])
        np.testing.assert_allclose([f.overscan_level for f in lights], expected, atol=0.3)
        expected = CAMERA.bias_level + np.array(truth.bias_offsets["bias"])
        np.testing.assert_allclose([f.overscan_level for f in biases], expected, atol=0.3)
        assert all("os=median[225:256,1:160]|trim=[1:224,1:160]" in f.camera_key for f in lights)
        product = s.scalar(select(Calibrated.path).where(Calibrated.frame_id == lights[0].id, Calibrated.current))
        assert {m.kind for m in s.scalars(select(Master))} == {"bias", "dark", "flat"}
        bias = s.scalar(select(Master.path).where(Master.kind == "bias"))
        level = lights[0].overscan_level
    header = fits.getheader(product)
    assert header["OVERSCAN"] == pytest.approx(level, abs=1e-3)
    assert header["OSSEC"] == "[225:256,1:160]" and header["OSTRIM"] == "[1:224,1:160]"
    assert header["TRIMSEC"] == header["DATASEC"] == "[1:224,1:160]" and "BIASSEC" not in header
    assert any("overscan subtracted" in str(h) for h in header["HISTORY"])
    master_header, master = read_product(bias)
    assert master.shape == CAMERA.shape and "OVERSCAN" in master_header
    # the master bias holds only the bias structure: its level went with each frame's overscan
    assert abs(float(np.median(master))) < 1.0


def test_the_uncertainty_counts_what_the_pixels_collected_not_the_bias_offset(corrected):
    """With the overscan subtracted, a light's UNCERT predicts the measured sky noise: its Poisson
    term is the signal above the overscan (an UNCERT from the raw data section, with its ~1000 ADU
    offset, would predict sqrt((1000 + 400) / 400) ~ 1.9x the noise)."""
    _, truth, cat = corrected
    with cat.reader() as s:
        paths = [c.path for c in s.scalars(select(Calibrated).where(Calibrated.current))]
    assert paths
    starlight = synth.render_stars(CAMERA.shape, truth.light_stars(0), fwhm=truth.fwhm, exptime=200.0)
    sky = (starlight < 0.01) & ~synth.hot_pixels(CAMERA)  # star-free pixels (the dithers are small)
    sky[:8], sky[-8:], sky[:, :8], sky[:, -8:] = False, False, False, False
    for path in paths:
        with fits.open(path) as hdul:
            assert hdul[0].header["BUNIT"] == "electron" and "OVERSCAN" in hdul[0].header
            data, sigma = hdul[0].data, hdul["UNCERT"].data
            bad = hdul["BADPIX"].data.astype(bool) if "BADPIX" in hdul else np.zeros(data.shape, bool)
        use = sky & ~bad & np.isfinite(data)
        measured = 1.4826 * np.median(np.abs(data[use] - np.median(data[use])))
        assert measured == pytest.approx(float(np.median(sigma[use])), rel=0.05), path


def test_bad_sections_are_a_warning_and_the_frame_is_used_whole(tmp_path):
    from ccdwatch.headers import OverscanRules, camera_key, normalise

    header = {"IMAGETYP": "Light Frame", "EXPTIME": 10.0, "NAXIS1": 256, "NAXIS2": 160,
              "BIASSEC": "[225:300,1:160]", "TRIMSEC": "[1:224,1:160]"}
    info = normalise(header, filename="a.fits")
    assert info.overscan is None and any("outside" in w and "without overscan" in w for w in info.warnings)
    assert "os=" not in camera_key(info)
    header["BIASSEC"] = "[225:256,1:160]"
    good = normalise(header, filename="a.fits")
    assert good.overscan is not None and good.overscan.biassec == "[225:256,1:160]"
    # a whole-frame DATASEC (many cameras write one) changes nothing
    whole = normalise({**header, "BIASSEC": None, "TRIMSEC": None, "DATASEC": "[1:256,1:160]"}, filename="a.fits")
    assert whole.overscan is None and not any("overscan" in w for w in whole.warnings)
    # a camera's configured sections replace the header's, and a strip alone keeps the rest
    rules = OverscanRules(cameras=(("synthcam 1", "[1:16,1:160]", ""),))
    conf = normalise({**header, "INSTRUME": "SynthCam 1"}, filename="a.fits", overscan=rules)
    assert conf.overscan is not None and conf.overscan.trimsec == "[17:256,1:160]"
    # a colour mosaic trimmed from an odd column would change its Bayer pattern: used whole
    colour = normalise({**header, "BAYERPAT": "RGGB", "BIASSEC": "[1:15,1:160]", "TRIMSEC": "[16:256,1:160]"},
                       filename="a.fits")
    assert colour.bayer_pattern == "RGGB" and colour.overscan is None
    assert any("Bayer pattern" in w for w in colour.warnings)
    even = normalise({**header, "BAYERPAT": "RGGB"}, filename="a.fits")
    assert even.overscan is not None and even.bayer_pattern == "RGGB"


@pytest.mark.parametrize(("table", "needles"), [
    ({"method": "poly"}, ["overscan.method", "'median'", "'fit'"]),
    ({"order": 9}, ["overscan.order", "0 to 5"]),
    ({"use_headers": True}, ["overscan.use_headers", "did you mean 'overscan.use_header'"]),
    ({"cameras": {"QSI 532": {"biassec": "2049:2080,1:2048"}}}, ["overscan.cameras.QSI 532.biassec",
                                                                 "not a FITS section"]),
    ({"cameras": {"QSI 532": {"bias": "[1:2,1:2]"}}}, ["overscan.cameras.QSI 532.bias", "biassec"]),
])
def test_bad_overscan_config_names_the_key_and_the_fix(tmp_path, table, needles):
    from ccdwatch.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"overscan": table}, base=tmp_path)
    for needle in needles:
        assert needle in str(err.value)


def test_masters_without_overscan_never_calibrate_overscan_corrected_lights(tmp_path):
    import shutil

    staging = tmp_path / "staging"
    truth = synth.make_night(staging, camera=CAMERA, seed=22, n_bias=3, n_dark=3, n_flat=3, filters=("V",),
                             n_light=2, n_stars=30, bias_drift=DRIFT)
    old = make_config(tmp_path, overscan={"use_header": False})  # the library, before [overscan]
    for kind in ("bias", "dark", "flat"):
        for p in truth.files[kind]:
            shutil.copy(p, old.paths.incoming / p.name)
    cat = Catalog(old.paths.database)
    with Pipeline(old, cat) as pipe:
        Watcher(old, pipe, progress=False).run_once()
    for p in truth.files["light"]:
        shutil.copy(p, old.paths.incoming / p.name)
    new = make_config(tmp_path)  # the same catalogue; the lights now come with their overscan
    with Pipeline(new, cat) as pipe:
        Watcher(new, pipe, progress=False).run_once()
    with cat.reader() as s:
        masters = s.scalars(select(Master)).all()
        lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
        assert {m.kind for m in masters} == {"bias", "dark", "flat"} and all("os=" not in m.camera_key for m in masters)
        assert {f.state for f in lights} == {"waiting"}, [(f.state, f.state_reason) for f in lights]
        assert all("bias" in (f.state_reason or "") for f in lights)
        assert s.scalar(select(Calibrated.id)) is None
    cat.close()
