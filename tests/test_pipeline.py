"""The pipeline end to end on synthetic nights: ingest, masters, calibration, stacking.

Ground truth comes from :mod:`ccdwatch.synth`; the real night is in test_real_night.py.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import func, select

from ccdwatch import calib, noise, synth
from ccdwatch.catalog import Catalog
from ccdwatch.daemon.watch import Watcher
from ccdwatch.fitsio import read_product
from ccdwatch.models import Calibrated, Frame, Master, SourceFile, Stack
from ccdwatch.pipeline import Pipeline, assign_targets

from .helpers import make_config

CAMERA = synth.Camera(shape=(192, 256))


def run_once(cfg) -> tuple[Catalog, Pipeline]:
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    return cat, pipe


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """One synthetic night, processed once by ``watch --once``, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("night")
    cfg = make_config(tmp)
    truth = synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=3, n_bias=5, n_dark=5, n_flat=5,
                             filters=("V", "R"), n_light=4, light_exptime=200.0, dark_exptime=300.0,
                             sky=2.0, n_stars=50)
    cat, pipe = run_once(cfg)
    yield cfg, truth, cat
    cat.close()


def test_every_frame_catalogued_once_with_types(night):
    cfg, truth, cat = night
    with cat.reader() as s:
        rows = s.execute(select(Frame.imagetyp, func.count()).group_by(Frame.imagetyp)).all()
        assert dict(rows) == {"bias": 5, "dark": 5, "flat": 10, "light": 8}
        assert s.scalar(select(func.count()).select_from(SourceFile)) == 28


def test_masters_built_with_provenance(night):
    cfg, truth, cat = night
    with cat.reader() as s:
        masters = s.scalars(select(Master).order_by(Master.kind, Master.filter)).all()
        kinds = [(m.kind, m.filter, m.exptime) for m in masters]
        assert kinds == [("bias", None, None), ("dark", None, 300.0), ("flat", "R", 3.0), ("flat", "V", 3.0)]
        for m in masters:
            assert m.n_frames == 5 and len(m.inputs) == 5
            hdul = fits.open(m.path)
            assert hdul[0].header["NCOMBINE"] == 5
            assert set(hdul["INPUTS"].data["SHA256"]) == {i.sha256 for i in m.inputs}
            assert hdul[0].header["BITPIX"] == -32  # float32 output
            assert Path(m.preview_path).stat().st_size > 1000
        bias, dark = masters[0], masters[1]
        assert dark.bias_subtracted and dark.bias_id == bias.id
        # Master dark = dark current x 300 s, to within the combined noise.
        data = read_product(dark.path)[1]
        expected = synth.dark_rate(CAMERA) * 300.0
        cold = ~synth.hot_pixels(CAMERA)
        resid = data[cold] - expected[cold]
        assert abs(np.median(resid)) < 0.5
        assert dark.hot_pixels >= 0.8 * synth.hot_pixels(CAMERA).sum()


def test_lights_calibrated_with_scaled_dark_and_flat(night):
    cfg, truth, cat = night
    with cat.reader() as s:
        lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
        assert {f.state for f in lights} == {"stacked"}
        for f in lights:
            c = s.scalar(select(Calibrated).where(Calibrated.frame_id == f.id, Calibrated.current))
            assert c.dark_scale == pytest.approx(200.0 / 300.0)
            flat = s.get(Master, c.flat_id)
            assert flat.filter == f.filter
            header, data = read_product(c.path)
            # Sky level = 2 ADU/s x 200 s, flat across the field (vignetting removed), in electrons:
            # the header's EGAIN (the camera's gain) times the ADU
            assert header["BUNIT"] == "electron" and header["GAIN"] == CAMERA.gain
            assert "EGAIN" in header.comments["GAIN"]
            ny, nx = data.shape
            blocks = data[: ny // 32 * 32, : nx // 32 * 32].reshape(ny // 32, 32, nx // 32, 32)
            block_medians = np.median(blocks, axis=(1, 3)) / CAMERA.gain
            assert np.median(block_medians) == pytest.approx(400.0, abs=5.0)
            assert np.percentile(block_medians, 95) - np.percentile(block_medians, 5) < 12.0
            # the uncertainty plane: sqrt(sky e- + read noise^2 ...) on the sky, in electrons too
            sigma = fits.getdata(c.path, "UNCERT")
            sky_e = 400.0 * CAMERA.gain + (200.0 * CAMERA.dark_current) * CAMERA.gain
            floor = math.sqrt(sky_e + (CAMERA.read_noise * CAMERA.gain) ** 2)
            assert np.nanmedian(sigma) == pytest.approx(floor, rel=0.05)
            assert header["RDNOISE"] == pytest.approx(CAMERA.read_noise * CAMERA.gain, rel=0.05)
            assert f.n_stars >= 10 and 2.0 < f.fwhm < 4.5


def test_lights_record_what_their_stack_measures_first(night):
    """A calibrated light's SKYLEVEL and VARLEVEL cards are the sky level and typical variance its
    stack would measure on the product (`stripwarp.frame_level`, exactly: the stack takes them
    instead of reading a quarter of every product); the sky is the synthetic one (400 ADU, in e-)."""
    from ccdwatch import stripwarp
    from ccdwatch.fitsio import map_product
    from ccdwatch.jobs import stackinputs

    cfg, truth, cat = night
    with cat.reader() as s:
        paths = s.scalars(select(Calibrated.path).where(Calibrated.current)).all()
    assert paths
    for path in paths:
        product = map_product(path, ("BADPIX", "UNCERT"), "SOURCES")
        known = stackinputs.known_level(product.header)
        assert known is not None
        assert known == stripwarp.frame_level(stackinputs._frame(product.planes))
        assert known[0] / CAMERA.gain == pytest.approx(400.0, abs=5.0)
        uncert = fits.getdata(path, "UNCERT")
        assert known[1] == pytest.approx(float(np.nanmedian(uncert.astype(np.float64) ** 2)), rel=0.02)
    assert stackinputs.known_level({"SKYLEVEL": 1.0}) is None  # both, or measured again
    assert stackinputs.known_level({"SKYLEVEL": 1.0, "VARLEVEL": True}) is None


def test_one_stack_per_filter(night):
    cfg, truth, cat = night
    with cat.reader() as s:
        stacks = s.scalars(select(Stack).order_by(Stack.filter)).all()
        assert [(st.target, st.filter, st.n_used) for st in stacks] == [("M51", "R", 4), ("M51", "V", 4)]
        for st in stacks:
            hdul = fits.open(st.path)
            assert hdul["NFRAMES"].data.max() == 4
            assert st.total_exposure == 800.0 and hdul[0].header["TOTEXP"] == 800.0
            assert len(st.members) == 4
            members = hdul["MEMBERS"].data
            assert sorted(members["SHA256"]) == sorted(m.sha256 for m in st.members)
            assert all(members["USED"]) and np.all(np.isfinite(members["MATRIX"]))
            reference = s.get(Frame, st.reference_frame_id)
            assert hdul[0].header["REFSHA"] == reference.sha256
            assert hdul[0].header["REFFILE"] == Path(reference.path).name
            ref = members["RAWSHA"] == reference.sha256
            assert np.allclose(members["MATRIX"][ref][0], np.eye(3).ravel())
            # inverse-variance weights (relative to the largest), uncertainty and exposure map, in electrons
            assert hdul[0].header["WEIGHTS"] == "ivar" and hdul[0].header["BUNIT"] == "electron"
            assert np.all((members["WEIGHT"] > 0.5) & (members["WEIGHT"] <= 1.0)) and members["WEIGHT"].max() == 1.0
            assert hdul["EXPMAP"].data.max() == 800.0 and hdul["EXPMAP"].header["BUNIT"] == "s"
            full = hdul["NFRAMES"].data == 4
            sigma = hdul["UNCERT"].data[full]
            # the predicted sigma of 4 frames of about equal depth: one frame's / 2 and one frame's
            # (the reference's, not warped) is its measured sky noise
            product = s.scalar(select(Calibrated).where(Calibrated.frame_id == reference.id, Calibrated.current))
            one = fits.getdata(product.path, "UNCERT")
            # (times the 3-sigma clipping's own cost for 4 values, `noise.clip_excess`: ~1.1 in variance)
            excess = noise.clip_excess([1.0] * 4, [1.0] * 4, sigma=3.0)
            assert 1.03 < excess < 1.2
            assert np.median(sigma) == pytest.approx(np.nanmedian(one) / 2 * math.sqrt(excess), rel=0.03)
            index = [p.name for p in truth.files["light"]].index(Path(reference.path).name)
            starlight = synth.render_stars(CAMERA.shape, truth.light_stars(index), fwhm=truth.fwhm, exptime=200.0)
            sky = (starlight < 0.01) & ~synth.hot_pixels(CAMERA)  # truly star-free pixels
            ref_noise = np.std(fits.getdata(product.path)[sky])
            assert ref_noise == pytest.approx(np.sqrt(np.mean(np.square(one[sky]))), rel=0.03)
            # the stack's measured noise is lower: interpolation at random sub-pixel shifts averages
            # neighbours (the default bicubic keeps ~0.87 of a frame's noise, bilinear ~0.68:
            # benchmarks/warp.py); the warped variance is conservative per pixel and right for sums
            # over a few pixels
            measured = calib.robust_stats(hdul[0].data[full])[1]
            assert 0.8 < measured / np.median(sigma) < 1.0, (measured, np.median(sigma))


def test_products_are_named_and_labelled_by_content_not_ids(night):
    """No catalogue id in a product's name, cards or tables (ids depend on processing order):
    raw sha256 and file names for frames; night, key, version and sha256 for masters."""
    cfg, truth, cat = night
    id_cards = {"RAWID", "BIASID", "DARKID", "FLATID", "REFID"}
    with cat.reader() as s:
        for f in s.scalars(select(Frame).where(Frame.imagetyp == "light")):
            c = s.scalar(select(Calibrated).where(Calibrated.frame_id == f.id, Calibrated.current))
            assert Path(c.path).name == f"{Path(f.path).stem}_{f.sha256[:8]}_v1.fits"
            header = fits.getheader(c.path)
            assert not id_cards & set(header)
            assert (header["RAWSHA"], header["RAWFILE"]) == (f.sha256, Path(f.path).name)
            for kind, mid in (("BIAS", c.bias_id), ("DARK", c.dark_id), ("FLAT", c.flat_id)):
                m = s.get(Master, mid)
                assert header[f"{kind}SHA"] == m.sha256
                night_, key, version = header[f"{kind}REF"].split("/")
                assert (night_, version) == (m.night, f"v{m.version}") and key in Path(m.path).name
        for m in s.scalars(select(Master)):
            header = fits.getheader(m.path)
            assert not id_cards & set(header)
            inputs = fits.getdata(m.path, "INPUTS")
            frames = {i.sha256: s.get(Frame, i.frame_id) for i in m.inputs}
            assert "FRAME_ID" not in inputs.names
            assert [Path(frames[h].path).name for h in inputs["SHA256"]] == list(inputs["FILE"])
            order = [(frames[h].date_obs, h) for h in inputs["SHA256"]]
            assert order == sorted(order)  # combined in time, then content order
            if m.kind == "flat":
                bias = s.get(Master, m.bias_id)
                assert (header["BIASSHA"], header["BIASREF"]) == (bias.sha256, f"{bias.night}/"
                                                                  f"{Path(bias.path).name.split('_')[-2]}/v1")
        for st in s.scalars(select(Stack)):
            members = fits.getdata(st.path, "MEMBERS")
            assert "FRAME_ID" not in members.names
            frames = {m.frame_id: s.get(Frame, m.frame_id) for m in st.members}
            assert sorted(members["RAWSHA"]) == sorted(f.sha256 for f in frames.values())
            assert sorted(members["FILE"]) == sorted(Path(f.path).name for f in frames.values())


@pytest.mark.parametrize("stem, expected", [
    ("M51_V_001", "M51_V_001"),
    ("a" * 40, "a" * 40),
    ("NGC1234_" + "x" * 40 + "_Light_0042", "NGC1234_xxxxxxxxxxx--xxxxxxxx_Light_0042"),
    ("IC 434 / Horsehead: flat", "IC_434_Horsehead_flat"),
])
def test_long_stems_are_cut_in_the_middle_keeping_the_frame_number(stem, expected):
    from ccdwatch.products import cut_middle

    got = cut_middle(stem)
    assert got == expected and len(got) <= 40


def test_deferred_flats_then_recalibration_on_rebuilt_master(tmp_path):
    cfg = make_config(tmp_path, calibration={"on_timeout": "wait"})
    staging = tmp_path / "staging"
    synth.make_night(staging, camera=CAMERA, seed=5, n_bias=3, n_dark=3, n_flat=3, filters=("V",), n_light=3,
                     light_exptime=300.0, dark_exptime=300.0)
    inc = Path(cfg.paths.incoming)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        for p in sorted(staging.glob("*.fits")):
            if not p.name.startswith("flat"):
                shutil.copy(p, inc / p.name)
                pipe.handle(inc / p.name)
        pipe.tick(final=True)
        with cat.reader() as s:
            lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
            assert {f.state for f in lights} == {"waiting"}
            assert all("flat" in f.state_reason for f in lights)
        for p in sorted(staging.glob("flat*.fits")):
            shutil.copy(p, inc / p.name)
            pipe.handle(inc / p.name)
        pipe.tick()
        with cat.reader() as s:
            assert {f.state for f in s.scalars(select(Frame).where(Frame.imagetyp == "light"))} <= {"calibrated", "stacked"}
            assert s.scalar(select(func.count()).select_from(Calibrated)) == 3
        # Two more biases of the same night: a new bias version, and every light recalibrated.
        for i, src in enumerate(sorted(staging.glob("bias*.fits"))[:2]):
            data = fits.getdata(src).astype(np.float64) + np.random.default_rng(i).normal(0, 8, CAMERA.shape)
            hdr = fits.getheader(src)
            synth.write_fits(inc / f"late_bias_{i}.fits", synth.quantise(data), dict(hdr.items()))
            pipe.handle(inc / f"late_bias_{i}.fits")
        pipe.tick()
        with cat.reader() as s:
            biases = s.scalars(select(Master).where(Master.kind == "bias").order_by(Master.version)).all()
            assert [b.version for b in biases] == [1, 2] and biases[1].n_frames == 5
            current = s.scalars(select(Calibrated).where(Calibrated.current)).all()
            assert len(current) == 3 and {c.bias_id for c in current} == {biases[1].id}
            assert {c.version for c in current} == {2}
            assert s.scalar(select(func.count()).select_from(Calibrated)) == 6  # old versions stay


def test_identity_copy_rename_and_changed_content(tmp_path, config):
    staging = tmp_path / "staging"
    truth = synth.make_night(staging, camera=CAMERA, seed=1, n_bias=2, n_dark=0, n_flat=0, filters=(), n_light=0)
    a, b = truth.files["bias"]
    inc = Path(config.paths.incoming)
    with Catalog(config.paths.database) as cat, Pipeline(config, cat) as pipe:
        shutil.copy(a, inc / "one.fits")
        shutil.copy(a, inc / "copy_of_one.fits")
        assert pipe.handle(inc / "one.fits").status == "ingested"
        assert pipe.handle(inc / "copy_of_one.fits").status == "duplicate"
        assert pipe.handle(inc / "one.fits").status == "unchanged"
        (inc / "one.fits").rename(inc / "renamed.fits")
        assert pipe.handle(inc / "renamed.fits").status == "duplicate"
        shutil.copy(b, inc / "renamed.fits")  # same path, new content
        assert pipe.handle(inc / "renamed.fits").status == "ingested"
        with cat.reader() as s:
            assert s.scalar(select(func.count()).select_from(Frame)) == 2
            sf = s.scalar(select(SourceFile).where(SourceFile.path == str(inc / "renamed.fits")))
            assert sf.frame.sha256 != s.scalar(select(SourceFile).where(
                SourceFile.path == str(inc / "copy_of_one.fits"))).frame.sha256


def test_products_never_escape_root_for_hostile_object(tmp_path):
    cfg = make_config(tmp_path, masters={"min_frames": {"bias": 1, "dark": 1, "flat": 1}})
    inc = Path(cfg.paths.incoming)
    for kind in ("bias", "dark", "flat", "light"):
        light = {"sky": 5.0} if kind == "light" else {}
        data = synth.expose(CAMERA, kind=kind, exptime=10.0, rng=np.random.default_rng(0), **light)
        hdr = synth.frame_header(CAMERA, kind=kind, exptime=10.0, date_obs=datetime(2024, 1, 1, 22),
                                 filter="../../etc" if kind in ("flat", "light") else None,
                                 object="../../../x" if kind == "light" else None)
        synth.write_fits(inc / f"{kind}.fits", synth.quantise(data), hdr)
    cat, _ = run_once(cfg)
    with cat.reader() as s:
        paths = [Path(p) for p in s.scalars(select(Calibrated.path))] + [Path(p) for p in s.scalars(select(Master.path))]
    cat.close()
    assert paths
    root = Path(cfg.paths.products).resolve()
    for p in paths:
        assert root in p.resolve().parents and p.exists()
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_assign_targets_sequences_and_pointings():
    from datetime import datetime, timedelta

    t0 = datetime(2024, 1, 1, 22)
    rows = []
    for i in range(6):  # V, R, V, R ... with neither OBJECT nor coordinates
        rows.append((i, None, None, None, t0 + timedelta(minutes=5 * i), "VR"[i % 2], 60.0, "cam"))
    rows.append((10, None, None, None, t0 + timedelta(hours=5), "V", 60.0, "cam"))  # after a long gap
    rows.append((20, None, 150.0, 20.0, t0, "V", 60.0, "cam"))
    rows.append((21, None, 150.01, 20.01, t0, "V", 60.0, "cam"))
    rows.append((22, "NGC 1", 10.0, 10.0, t0, "V", 60.0, "cam"))
    targets = assign_targets(rows, radius_arcmin=10, gap_minutes=60)
    assert len({targets[i] for i in (0, 2, 4)}) == 1 and len({targets[i] for i in (1, 3, 5)}) == 1
    assert targets[10] != targets[0]
    assert targets[20] == targets[21] and targets[22] == "NGC 1"


def test_assign_targets_splits_an_object_into_its_pointings():
    """Mosaic panels that share OBJECT='M31' 1.3 deg apart are two targets: the first panel in
    time keeps the name, the second is 'M31 (2)'; later lights of a panel join it; lights of one
    pointing (dithered) or without one keep the plain name."""
    t0 = datetime(2024, 1, 1, 22)
    rows = [(1, "M31", 10.0, 41.0, t0, "V", 60.0, "cam"),
            (2, "M31", 10.02, 41.01, t0 + timedelta(minutes=2), "V", 60.0, "cam"),  # dithered: ~1'
            (3, "M31", 11.3, 41.0, t0 + timedelta(minutes=4), "V", 60.0, "cam"),  # the second panel
            (4, "M31", 10.0, 41.0, t0 + timedelta(minutes=6), "V", 60.0, "cam"),
            (5, "M31", 11.31, 41.0, t0 + timedelta(minutes=8), "V", 60.0, "cam"),
            (6, "M31", None, None, t0 + timedelta(minutes=9), "V", 60.0, "cam"),
            (7, "M31", 10.0, 43.0, t0 + timedelta(minutes=10), "V", 60.0, "cam"),  # a third panel
            (8, "NGC 1", 11.3, 41.0, t0, "V", 60.0, "cam"),  # another OBJECT there: its own target
            (9, "x" * 80, 1.0, 1.0, t0, "V", 60.0, "cam"), (10, "x" * 80, 3.0, 1.0, t0, "V", 60.0, "cam")]
    targets = assign_targets(rows, radius_arcmin=10, gap_minutes=60)
    assert [targets[i] for i in range(1, 9)] == ["M31", "M31", "M31 (2)", "M31", "M31 (2)", "M31", "M31 (3)",
                                                 "NGC 1"]
    assert targets[9] == "x" * 80 and targets[10] == "x" * 76 + " (2)"  # within Stack.target's 80 characters
    # later lights do not rename the groups already there: the same names with more frames
    later = assign_targets([*rows, (11, "M31", 11.3, 41.0, t0 + timedelta(hours=1), "V", 60.0, "cam")],
                           radius_arcmin=10, gap_minutes=60)
    assert later[11] == "M31 (2)" and all(later[i] == targets[i] for i in targets)


def test_mosaic_panels_sharing_an_object_stack_apart(tmp_path):
    """Two panels, both OBJECT='M31', RA 1.3 deg apart (4 lights each): two stacks of their own 4
    lights, none rejected (merged, the earlier panel's 4 were rejected: 'alignment failed: no star
    pattern in common with the reference')."""
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    inc = Path(cfg.paths.incoming)
    a = synth.make_night(inc, camera=CAMERA, seed=3, n_bias=3, n_dark=3, n_flat=3, filters=("V",), n_light=4,
                         light_exptime=200.0, dark_exptime=300.0, n_stars=50, object="M31")
    b = synth.make_night(tmp_path / "panel2", camera=CAMERA, seed=11, n_bias=0, n_dark=0, n_flat=0, filters=("V",),
                         n_light=4, light_exptime=200.0, n_stars=50, object="M31",
                         start=datetime(2024, 3, 10, 21, 0, tzinfo=UTC))
    for paths, ra, prefix in ((a.files["light"], 10.0, ""), (b.files["light"], 11.3, "panel2_")):
        for p in paths:
            with fits.open(p, mode="update") as h:
                h[0].header["RA"], h[0].header["DEC"] = ra, 41.0
            if prefix:
                shutil.copy(p, inc / (prefix + p.name))
    cat, _ = run_once(cfg)
    with cat.reader() as s:
        stacks = {st.target: (st.n_used, st.n_rejected, sorted({s.get(Frame, m.frame_id).ra_deg for m in st.members}))
                  for st in s.scalars(select(Stack))}
    cat.close()
    assert stacks == {"M31": (4, 0, [10.0]), "M31 (2)": (4, 0, [11.3])}


def test_once_summary_names_waiting_and_quarantined_frames(tmp_path, capsys):
    """Lights left waiting (no flats) and a garbage file are named in the --once summary."""
    from ccdwatch.cli import main

    cfg = make_config(tmp_path)
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=4, n_bias=3, n_dark=3, n_flat=0, filters=("V",),
                     n_light=2)
    (Path(cfg.paths.incoming) / "junk.fits").write_bytes(b"not a fits file" * 100)
    args = ["--incoming", str(cfg.paths.incoming), "--products", str(cfg.paths.products),
            "--db", cfg.paths.database, "-q"]
    assert main([*args, "watch", "--once"]) == 0
    out = capsys.readouterr().out
    assert out.count("WAITING frame") == 2 and "no master flat for filter 'V'" in out
    assert "QUARANTINED junk.fits: not-fits" in out


def test_late_frame_makes_a_new_stack_version_and_recalibrate_keeps_old_products(tmp_path):
    from ccdwatch.cli import main

    cfg = make_config(tmp_path, workers={"processes": 0})
    staging = tmp_path / "staging"
    truth = synth.make_night(staging, camera=CAMERA, seed=6, n_bias=3, n_dark=3, n_flat=3, filters=("V",),
                             n_light=4, n_stars=50)
    inc = Path(cfg.paths.incoming)
    late = truth.files["light"][-1]
    for p in staging.glob("*.fits"):
        if p != late:
            shutil.copy(p, inc / p.name)
    args = ["--incoming", str(inc), "--products", str(cfg.paths.products), "--db", cfg.paths.database, "-q"]
    assert main([*args, "watch", "--once"]) == 0
    shutil.copy(late, inc / late.name)  # a light that arrives after its group was stacked
    assert main([*args, "watch", "--once"]) == 0
    with Catalog(cfg.paths.database, writer=False) as cat, cat.reader() as s:
        stacks = s.scalars(select(Stack).order_by(Stack.version)).all()
        assert [(st.version, st.current, st.n_used) for st in stacks] == [(1, False, 3), (2, True, 4)]
        assert all(Path(st.path).exists() for st in stacks)
    # A parameter change and a recalibration: new versions, the old ones stay recorded and on disk.
    assert main([*args, "recalibrate"]) == 0
    with Catalog(cfg.paths.database, writer=False) as cat, cat.reader() as s:
        cals = s.scalars(select(Calibrated)).all()
        assert sorted((c.version, c.current) for c in cals) == [(1, False)] * 4 + [(2, True)] * 4
        assert all(Path(c.path).exists() for c in cals)


def test_interleaved_filters_without_object_give_one_stack_per_filter(tmp_path):
    """V, R, V, R ... with blank OBJECT and no coordinates (as the real PHY241 headers)."""
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=8, n_bias=3, n_dark=3, n_flat=3, filters=("V", "R"),
                     n_light=3, interleave=True, object="", n_stars=50)
    cat, _ = run_once(cfg)
    with cat.reader() as s:
        stacks = s.scalars(select(Stack).order_by(Stack.filter)).all()
        assert [(st.filter, st.n_used) for st in stacks] == [("R", 3), ("V", 3)]
        assert all(st.target.startswith("field-") for st in stacks)
    cat.close()


def test_unscalable_dark_is_refused_and_partial_policy_flags_products(tmp_path):
    """Darks of another exposure but no biases: the master dark cannot be bias-subtracted, so it
    cannot be scaled to the lights; lights wait (never calibrated wrongly). With on_timeout =
    'partial' the end of the night calibrates them with what exists, flagged partial."""
    staging = tmp_path / "staging"
    synth.make_night(staging, camera=CAMERA, seed=12, n_bias=0, n_dark=3, n_flat=3, filters=("V",), n_light=2,
                     light_exptime=200.0, dark_exptime=300.0)
    for policy, expected_state in (("wait", "waiting"), ("partial", "stacked")):
        root = tmp_path / policy
        cfg = make_config(root, incoming=staging, calibration={"on_timeout": policy},
                          workers={"processes": 0}, report={"refresh": False}, stack={"min_frames": 2})
        cat, _ = run_once(cfg)
        with cat.reader() as s:
            dark = s.scalar(select(Master).where(Master.kind == "dark"))
            assert dark is not None and not dark.bias_subtracted
            lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
            assert {f.state for f in lights} == {expected_state}
            if policy == "wait":
                assert all("scaling needs a bias-subtracted master dark" in f.state_reason for f in lights)
                assert s.scalar(select(func.count()).select_from(Calibrated)) == 0
            else:
                cals = s.scalars(select(Calibrated)).all()
                assert len(cals) == 2 and all(c.partial and c.dark_id is None for c in cals)
                assert all("bias" in c.missing and "dark" in c.missing for c in cals)
                assert all(fits.getheader(c.path)["PARTIAL"] for c in cals)
        cat.close()


def test_masters_identical_whether_inputs_stay_in_memory_or_go_through_scratch_files(night, tmp_path):
    """A few inputs are combined in RAM; a set too large for a quarter of the memory budget goes
    through .npy scratch files. Both give the same master pixels."""
    cfg, _, cat = night
    small = make_config(tmp_path, incoming=cfg.paths.incoming, masters={"memory_budget_mb": 0.5})
    # 5 frames of 192x256 float32 = 0.98 MB > 0.5 MB / 4: every master takes the scratch-file path
    cat2, _ = run_once(small)
    try:
        with cat.reader() as s1, cat2.reader() as s2:
            def pixels(s):
                return {(m.kind, m.filter, m.exptime): read_product(m.path)[1]
                        for m in s.scalars(select(Master))}
            a, b = pixels(s1), pixels(s2)
        assert a.keys() == b.keys() and len(a) == 4
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    finally:
        cat2.close()


def test_daemon_report_pictures_drawn_by_the_workers(night):
    """At the end of the night the report's quality plot and per-group panels are drawn by the
    worker pool (everything they need must cross to the workers), and all of them are there."""
    cfg, truth, cat = night
    pages = sorted((Path(cfg.paths.products) / "reports").glob("*/index.html"))
    assert len(pages) == 1
    img = pages[0].parent / "img"
    assert (img / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = sorted(img.glob("group-*.png"))
    assert len(panels) == 2  # one per filter
    html = pages[0].read_text()
    assert "quality.png" in html and all(p.name in html for p in panels)
    assert "comparison panel failed" not in html


@pytest.mark.parametrize("dark_exptime", [300.0, 3.0])
def test_flats_combine_beside_the_darks_unless_a_dark_of_theirs_is_coming(tmp_path, dark_exptime):
    """A flat uses only a dark of its own exposure: with darks of the lights' 300 s and flats of
    3 s the flats' masters are built in the darks' round (side by side on the workers), with
    dark-flats of 3 s they wait for them and use the new master dark."""
    from ccdwatch.pipeline import masters

    cfg = make_config(tmp_path)
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=6, n_bias=3, n_dark=3, n_flat=3, filters=("V", "R"),
                     n_light=0, dark_exptime=dark_exptime, flat_exptime=3.0)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        for p in sorted(Path(cfg.paths.incoming).glob("*.fits")):
            pipe.handle(p)
        ranks = masters.build_ranks(pipe.ctx, masters.candidates(pipe.ctx))
        kinds = [sorted(k.kind for k, _ in rank) for rank in ranks]
        if dark_exptime == 300.0:
            assert kinds == [["bias"], ["dark", "flat", "flat"], []]
        else:
            assert kinds == [["bias"], ["dark"], ["flat", "flat"]]
        pipe.tick(final=True)
        with cat.reader() as s:
            dark = s.scalars(select(Master).where(Master.kind == "dark")).one()
            flats = s.scalars(select(Master).where(Master.kind == "flat")).all()
            assert len(flats) == 2
            assert all(f.dark_id == (dark.id if dark_exptime == 3.0 else None) for f in flats)


def test_a_dark_at_least_as_long_as_the_light_is_scaled_down_not_a_dark_flat_up(tmp_path):
    """300 s darks, 3 s dark-flats (for the 3 s flats) and 120 s lights: the lights get the 300 s
    master x0.4, not the 3 s one x40 (nearer by exposure difference, 117 s against 180 s, but its
    read noise, hot-pixel residuals and bias errors grow x40: residual robust sigma 228 ADU, hot
    pixels off by ~190 ADU rms, against the ~15 ADU of the sky and read noise)."""
    cam = synth.Camera(shape=(128, 160))
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    truth = synth.make_night(cfg.paths.incoming, camera=cam, seed=3, n_bias=5, n_dark=5, n_flat=5, filters=("V",),
                             n_light=3, light_exptime=120.0, dark_exptime=300.0, flat_exptime=3.0, sky=2.0,
                             n_stars=20)
    rng = np.random.default_rng(99)
    for i in range(5):  # dark-flats, at dawn after the flats
        when = truth.dates["flat"][-1] + timedelta(minutes=2, seconds=10 * i)
        synth.write_fits(cfg.paths.incoming / f"darkflat_3s_{i + 1:03d}.fits",
                         synth.quantise(synth.expose(cam, kind="dark", exptime=3.0, rng=rng)),
                         synth.frame_header(cam, kind="dark", exptime=3.0, date_obs=when))
    cat, _ = run_once(cfg)
    with cat:
        with cat.reader() as s:
            darks = {m.exptime: m for m in s.scalars(select(Master).where(Master.kind == "dark"))}
            assert sorted(darks) == [3.0, 300.0] and all(d.bias_subtracted for d in darks.values())
            light = s.scalars(select(Frame).where(Frame.path == str(truth.files["light"][0]))).one()
            c = s.scalar(select(Calibrated).where(Calibrated.frame_id == light.id, Calibrated.current))
            assert c.dark_id == darks[300.0].id and c.dark_scale == pytest.approx(0.4)
            assert not c.partial
            path = c.path
        header, data = read_product(path)
    stars = synth.render_stars(cam.shape, truth.light_stars(0), fwhm=3.0, exptime=120.0)
    residual = data / header["GAIN"] - (2.0 * 120.0 + stars)  # flat-fielded: sky + stars, in ADU
    hot = synth.hot_pixels(cam) & (stars < 1.0)
    median, sigma = calib.robust_stats(residual[(stars < 1.0) & ~hot])
    # sky + dark shot noise and read noise of the light; the masters add ~10 % at most
    floor = math.sqrt((2.0 + cam.dark_current) * 120.0 / cam.gain + cam.read_noise ** 2)
    assert abs(median) < 1.0
    assert sigma < 1.15 * floor  # 15.5 ADU (floor 15.1); 228 with the dark-flat x40
    assert np.sqrt(np.mean(residual[hot] ** 2)) < 2.5 * floor  # 17.5 ADU; 187 with the dark-flat x40


def _dark(i: int, exptime: float, hours: float = 0.0):
    return Master(id=i, kind="dark", exptime=exptime, bias_subtracted=True,
                  date_mid=datetime(2024, 3, 10, 22) + timedelta(hours=hours))


def test_scaled_dark_ranked_by_exposure_ratio_longer_first_and_up_scaling_limited():
    from ccdwatch.config import MastersConfig
    from ccdwatch.pipeline.selection import _scaled_dark

    bias, when, rules = Master(id=99, kind="bias"), datetime(2024, 3, 10, 23), MastersConfig()

    def pick(darks, t, **rules_):
        dark, scale, why = _scaled_dark(darks, t, when, bias, dataclasses.replace(rules, **rules_))
        return (dark.id if dark else None), scale, why

    assert pick([_dark(1, 3.0), _dark(2, 300.0)], 120.0)[:2] == (2, pytest.approx(0.4))
    # longer first, even when a shorter one is nearer by ratio: 100 s is x1.2, 1000 s x0.12
    assert pick([_dark(1, 100.0), _dark(2, 1000.0)], 120.0)[:2] == (2, pytest.approx(0.12))
    # by ratio among the longer: 240 s (x0.5) rather than 4000 s (x0.03), whatever the order
    assert pick([_dark(2, 4000.0), _dark(1, 240.0)], 120.0)[0] == 1
    # among the shorter, the longest: 60 s x2 rather than 3 s x40
    assert pick([_dark(1, 3.0), _dark(2, 60.0)], 120.0)[:2] == (2, pytest.approx(2.0))
    # the same exposure twice: the nearer in time, then the newer; deterministic in any order
    assert pick([_dark(1, 300.0, 5), _dark(2, 300.0, 0)], 120.0)[0] == 2
    assert pick([_dark(2, 300.0), _dark(1, 300.0)], 120.0)[0] == 2
    # only a dark-flat: x40 is more than max_dark_scale allows; the reason says so
    dark, scale, why = pick([_dark(1, 3.0)], 120.0)
    assert dark is None and scale is None
    assert "3 s" in why and "x40" in why and "masters.max_dark_scale = 10" in why
    assert pick([_dark(1, 3.0)], 120.0, max_dark_scale=50.0)[:2] == (1, pytest.approx(40.0))
    assert pick([_dark(1, 60.0)], 120.0, max_dark_scale=1.0)[0] is None


def test_reprocess_builds_no_master_of_fewer_frames_than_min_frames(tmp_path):
    """One stray 120 s dark (cosmic rays in it) beside five 300 s darks, lights of 120 s, min_frames
    3: `watch --once` never makes a master of the single dark, and neither does `reprocess` (it
    did: a 1-frame master that then calibrated every light, its rays and read noise in all of them,
    ~100 pixels off by more than 200 ADU per light)."""
    from ccdwatch.pipeline.reprocess import Selection, reprocess

    cam = synth.Camera(shape=(128, 160))
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    truth = synth.make_night(cfg.paths.incoming, camera=cam, seed=3, n_bias=5, n_dark=5, n_flat=5, filters=("V",),
                             n_light=3, light_exptime=120.0, dark_exptime=300.0, sky=2.0, n_stars=20)
    stray = synth.expose(cam, kind="dark", exptime=120.0, rng=np.random.default_rng(7), cosmic_rays=40)
    synth.write_fits(cfg.paths.incoming / "dark_120s_stray.fits", synth.quantise(stray),
                     synth.frame_header(cam, kind="dark", exptime=120.0,
                                        date_obs=truth.dates["dark"][-1] + timedelta(minutes=6)))
    run_once(cfg)[0].close()
    with Catalog(cfg.paths.database) as cat:
        with Pipeline(cfg, cat) as pipe:
            done = reprocess(pipe, Selection(night="2024-03-10"))
        assert (done.masters, done.calibrated) == (3, 3)  # bias, 300 s dark, flat; the three lights
        with cat.reader() as s:
            assert s.scalar(select(func.count()).select_from(Master).where(Master.exptime == 120.0)) == 0
            assert s.scalar(select(Frame.state).where(Frame.path.endswith("dark_120s_stray.fits"))) == "ingested"
            light = s.scalars(select(Frame).where(Frame.path == str(truth.files["light"][0]))).one()
            c = s.scalar(select(Calibrated).where(Calibrated.frame_id == light.id, Calibrated.current))
            dark = s.get(Master, c.dark_id)
            assert (c.version, dark.exptime, dark.n_frames, c.dark_scale) == (2, 300.0, 5, pytest.approx(0.4))
            path = c.path
    header, data = read_product(path)
    stars = synth.render_stars(cam.shape, truth.light_stars(0), fwhm=3.0, exptime=120.0)
    residual = (data / header["GAIN"] - (2.0 * 120.0 + stars))[(stars < 1.0) & ~synth.hot_pixels(cam)]
    floor = math.sqrt((2.0 + cam.dark_current) * 120.0 / cam.gain + cam.read_noise ** 2)
    assert calib.robust_stats(residual)[1] < 1.15 * floor
    assert np.sum(np.abs(residual) > 200) == 0  # 100 with the stray dark's master


def test_stack_members_record_their_sky_offset_and_flux_scale(night):
    """Each used member's flux scale against the reference (same sky transparency in the synthetic
    night: ~1) and sky offset are in the catalogue and the MEMBERS table; the header names the
    normalisation."""
    cfg, truth, cat = night
    with cat.reader() as s:
        st = s.scalars(select(Stack).order_by(Stack.id)).first()
        members = [(m.used, m.scale, m.sky_offset, m.scale_note) for m in st.members]
        path = st.path
    assert all(scale == pytest.approx(1.0, abs=0.03) and offset is not None and note is None
               for used, scale, offset, note in members if used)
    with fits.open(path) as h:
        assert h[0].header["NORMALIS"] == "scale"
        table = h["MEMBERS"].data
        assert table["SCALE"][table["USED"]] == pytest.approx(1.0, abs=0.03)
        assert (table["SCALE_N"][table["USED"]] >= 0).all()
