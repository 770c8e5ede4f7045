"""Masters whose files vanish (or change) after they were catalogued.

A master file deleted from the products directory is no fault of the lights that need it: they
are not charged, the master is retired with the reason and made again from its raw frames as a
new version, and the lights are calibrated with it; if its raw frames are gone too, the lights
wait and say why. At start-up a current master whose file is gone is retired the same way. A
master whose bytes changed on disk (checked against its sha256 as a worker reads it) is treated as
one that is gone: never used, made again.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.fitsio import ProductGone, read_product
from ccdwatch.models import MASTER_LOST, Calibrated, Frame, FrameState, Master, Stack
from ccdwatch.pipeline import Pipeline

from .helpers import make_config

CAMERA = synth.Camera(shape=(96, 128))


@pytest.fixture(scope="module")
def staging(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("staging")
    synth.make_night(d, camera=CAMERA, seed=9, n_bias=3, n_dark=3, n_flat=3, filters=("V",), n_light=3,
                     n_stars=40)
    return d


@pytest.fixture
def pipe(tmp_path, staging):
    """A pipeline whose calibration frames are in and whose masters are built; the lights wait
    in ``staging`` (copy them in with `lights_arrive`)."""
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    for p in sorted(staging.iterdir()):
        if not p.name.startswith("M51"):
            shutil.copy2(p, cfg.paths.incoming / p.name)
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        for p in sorted(cfg.paths.incoming.glob("*.fits")):
            pipe.handle(p)
        pipe.tick(final=True)
        yield pipe, staging
    cat.close()


def lights_arrive(pipe: Pipeline, staging: Path) -> None:
    for p in sorted(staging.glob("M51*.fits")):
        shutil.copy2(p, pipe.cfg.paths.incoming / p.name)
        pipe.handle(pipe.cfg.paths.incoming / p.name)


def masters(pipe: Pipeline, kind: str) -> list[tuple[int, int, str, str | None]]:
    """(id, version, path, retired) of every master of ``kind``, by version."""
    with pipe.catalog.reader() as s:
        return [(m.id, m.version, m.path, m.retired)
                for m in s.scalars(select(Master).where(Master.kind == kind).order_by(Master.version))]


def lights(pipe: Pipeline) -> list[SimpleNamespace]:
    """The lights' rows, as plain values."""
    with pipe.catalog.reader() as s:
        return [SimpleNamespace(**{c.name: getattr(f, c.name) for c in Frame.__table__.columns})
                for f in s.scalars(select(Frame).where(Frame.imagetyp == "light").order_by(Frame.id))]


def flats_used(pipe: Pipeline) -> set[int | None]:
    with pipe.catalog.reader() as s:
        return set(s.scalars(select(Calibrated.flat_id).where(Calibrated.current)))


def test_product_gone_crosses_the_process_boundary():
    exc = pickle.loads(pickle.dumps(ProductGone("/p/flat_v1.fits", "/p/flat_v1.fits is missing")))
    assert isinstance(exc, FileNotFoundError) and exc.path == "/p/flat_v1.fits"
    assert "is missing" in exc.detail and "is missing" in str(exc)


def test_a_master_deleted_while_running_is_made_again_and_no_light_is_charged(pipe):
    pipe, staging = pipe
    [(flat_id, _, flat_path, _)] = masters(pipe, "flat")
    Path(flat_path).unlink()  # a user tidies the products directory
    lights_arrive(pipe, staging)  # each light calibrated as it arrives: its flat is not there
    first, *later = lights(pipe)
    assert "is missing" in first.last_error and "retired and made again" in first.last_error
    assert all("their master is not built yet" in f.state_reason for f in later)  # no master to send them to
    for light in (first, *later):
        assert light.tries == 0 and light.state == FrameState.WAITING, (light.state, light.last_error)
    [(_, _, _, retired)] = masters(pipe, "flat")
    assert retired is not None and retired.startswith(MASTER_LOST) and Path(flat_path).name in retired
    with pipe.catalog.reader() as s:  # its inputs are back to be combined again
        flats = s.scalars(select(Frame).where(Frame.imagetyp == "flat")).all()
        assert {f.state for f in flats} == {FrameState.INGESTED}

    pipe.tick(final=True)  # made again from its raw frames, as a new version; the lights with it
    old, new = masters(pipe, "flat")
    assert (old[0], old[1], new[1], new[3]) == (flat_id, 1, 2, None) and Path(new[2]).exists()
    assert {f.state for f in lights(pipe)} <= {FrameState.CALIBRATED, FrameState.STACKED}
    assert all(f.tries == 0 for f in lights(pipe))
    assert flats_used(pipe) == {new[0]}


def test_a_deleted_master_whose_raw_frames_are_gone_too_leaves_lights_waiting_saying_why(pipe):
    pipe, staging = pipe
    [(_, _, flat_path, _)] = masters(pipe, "flat")
    Path(flat_path).unlink()
    for p in pipe.cfg.paths.incoming.glob("flat_*.fits"):
        p.unlink()
    lights_arrive(pipe, staging)
    pipe.tick(final=True)
    assert [m[1] for m in masters(pipe, "flat")] == [1]  # nothing to make it again from
    for light in lights(pipe):
        assert light.state == FrameState.WAITING and light.tries == 0
        assert "was retired" in light.state_reason and "3 of its 3 raw frames are gone" in light.state_reason, \
            light.state_reason


def test_a_bias_deleted_before_a_master_built_on_it_charges_nobody(pipe, monkeypatch):
    """The master bias goes while a dark that is built on it is being planned: the dark's inputs
    are not charged; the bias is made again, then the dark on it."""
    pipe, _ = pipe
    from ccdwatch.jobs import tasks

    [(bias_id, _, bias_path, _)] = masters(pipe, "bias")
    with pipe.catalog.session() as s:  # the dark made again (a new dark frame, say)
        for f in s.scalars(select(Frame).where(Frame.imagetyp == "dark")):
            f.state = FrameState.INGESTED
        s.execute(Master.__table__.update().where(Master.kind == "dark").values(retired="test: made again"))
    real = tasks.build_master

    def delete_then_build(spec):
        if spec.bias_path == bias_path:
            Path(spec.bias_path).unlink(missing_ok=True)
            tasks._MASTERS.clear()  # a worker that has not read it yet
        return real(spec)

    monkeypatch.setattr(tasks, "build_master", delete_then_build)
    pipe.tick(final=True)  # the bias is made again in the same tick, and the dark on it
    with pipe.catalog.reader() as s:
        assert all(f.tries == 0 for f in s.scalars(select(Frame))), "nobody is charged"
    biases = masters(pipe, "bias")
    assert biases[0][3].startswith(MASTER_LOST)
    assert [(v, r) for _, v, _, r in biases][1:] == [(2, None)]
    with pipe.catalog.reader() as s:
        dark = s.scalars(select(Master).where(Master.kind == "dark", Master.retired.is_(None))).one()
        assert dark.bias_id == biases[1][0] != bias_id


def test_start_up_retires_a_current_master_whose_file_is_gone(pipe):
    pipe, staging = pipe
    [(_, _, flat_path, _)] = masters(pipe, "flat")
    Path(flat_path).unlink()
    assert pipe.recover()["masters_lost"] == 1  # a stat per current master
    [(_, _, _, retired)] = masters(pipe, "flat")
    assert retired is not None and "start-up" in retired
    assert pipe.recover()["masters_lost"] == 0  # retired once
    lights_arrive(pipe, staging)
    pipe.tick(final=True)
    assert [m[1] for m in masters(pipe, "flat")] == [1, 2]
    assert all(f.tries == 0 and f.state in (FrameState.CALIBRATED, FrameState.STACKED) for f in lights(pipe))


def flip_a_bit(path: str) -> tuple[int, int]:
    """One bit of the centre pixel of a product's image flipped on disk (an exponent bit: a flat's
    0.93 becomes 0.27); the pixel's place."""
    with fits.open(path) as h:
        offset = h.fileinfo(0)["datLoc"]
        ny, nx = h[0].data.shape
    raw = bytearray(Path(path).read_bytes())
    raw[offset + 4 * ((ny // 2) * nx + nx // 2)] ^= 0x01
    Path(path).write_bytes(bytes(raw))
    return ny // 2, nx // 2


def test_a_master_changed_on_disk_is_not_used_and_is_made_again(pipe):
    """A bit flipped in the master flat (a bad sector): read back, it would make its pixel ~4x too
    bright in every light and the stack. It is checked against its sha256 when a worker reads it:
    retired, made again from its raw frames, no light charged, none calibrated with the bad one."""
    pipe, staging = pipe
    from ccdwatch.jobs import tasks

    [(flat_id, _, flat_path, _)] = masters(pipe, "flat")
    good = read_product(flat_path)[1]
    y, x = flip_a_bit(flat_path)
    assert read_product(flat_path)[1][y, x] != good[y, x]
    tasks._MASTERS.clear()  # workers that have not read it yet
    lights_arrive(pipe, staging)
    [(_, _, _, retired)] = masters(pipe, "flat")
    assert retired is not None and retired.startswith(MASTER_LOST) and "SHA-256" in retired
    assert all(f.tries == 0 and f.state == FrameState.WAITING for f in lights(pipe))
    assert flats_used(pipe) == set()  # none calibrated with it

    pipe.tick(final=True)
    old, new = masters(pipe, "flat")
    assert (new[1], new[3]) == (2, None)
    assert np.array_equal(read_product(new[2])[1], good, equal_nan=True)  # the same pixels, from the raws
    assert flats_used(pipe) == {new[0]} and flat_id == old[0]
    assert all(f.tries == 0 and f.state in (FrameState.CALIBRATED, FrameState.STACKED) for f in lights(pipe))


def test_a_master_is_hashed_once_per_worker_as_it_is_read_into_its_cache(pipe, monkeypatch):
    pipe, staging = pipe
    from ccdwatch.fitsio import product
    from ccdwatch.jobs import tasks

    hashed: list[str] = []
    real = product._check
    monkeypatch.setattr(product, "_check", lambda fd, path, sha: (hashed.append(path), real(fd, path, sha)))
    tasks._MASTERS.clear()
    lights_arrive(pipe, staging)  # three lights, one worker (in this process): each master read once
    assert sorted(Path(p).name.split("_")[0] for p in hashed) == ["bias", "dark", "flat"]
    assert len(flats_used(pipe)) == 1


def test_watch_once_ends_with_a_changed_master_made_again_and_its_lights_calibrated(pipe):
    """`watch --once` calibrates its lights in its one last tick (`Pipeline.finish`): a master that
    tick finds changed is made again, and the lights calibrated with it, before it ends."""
    pipe, staging = pipe
    from ccdwatch.jobs import tasks

    [(_, _, flat_path, _)] = masters(pipe, "flat")
    flip_a_bit(flat_path)
    tasks._MASTERS.clear()
    for p in sorted(staging.glob("M51*.fits")):
        shutil.copy2(p, pipe.cfg.paths.incoming / p.name)
        pipe.handle(pipe.cfg.paths.incoming / p.name, final=True)  # as `watch --once` does: planned at the end
    pipe.finish()
    old, new = masters(pipe, "flat")
    assert old[3] is not None and (new[1], new[3]) == (2, None)
    assert flats_used(pipe) == {new[0]}
    assert all(f.tries == 0 and f.state in (FrameState.CALIBRATED, FrameState.STACKED) for f in lights(pipe))
    with pipe.catalog.reader() as s:
        assert s.scalars(select(Stack).where(Stack.current)).all(), "and stacked"


def test_a_borrowed_master_this_site_cannot_read_is_not_retired(tmp_path):
    """t2 calibrates with t1's masters (site.share_masters_from) but cannot see t1's products root
    (another host, a mount down): t1's masters stay current and t1's frames used (t2 retired them,
    and t1 made them again at its next run, again and again); t2's lights wait, saying why."""
    from ccdwatch.daemon.watch import Watcher

    camera = synth.Camera(shape=(96, 128))
    db = str(tmp_path / "shared.db")
    staging = tmp_path / "staging"
    synth.make_night(staging, camera=camera, seed=12, n_bias=3, n_dark=3, n_flat=3, filters=("V",), n_light=3,
                     n_stars=40)
    kw = {"workers": {"processes": 0}, "report": {"refresh": False}, "paths": {"database": db}}
    t1 = make_config(tmp_path / "t1", site={"name": "t1"}, **kw)
    t2 = make_config(tmp_path / "t2", site={"name": "t2", "share_masters_from": ("t1",)}, **kw)
    for p in sorted(staging.iterdir()):
        shutil.copy2(p, (t2 if p.name.startswith("M51") else t1).paths.incoming / p.name)
    for cfg in (t1, t2):
        if cfg is t2:
            Path(t1.paths.products).rename(tmp_path / "t1-products-elsewhere")  # not visible from t2's host
        with Catalog(db) as cat, Pipeline(cfg, cat) as pipe:
            Watcher(cfg, pipe, progress=False).run_once()
    with Catalog(db) as cat, cat.reader() as s:
        assert all(m.retired is None for m in s.scalars(select(Master)))
        assert {f.state for f in s.scalars(select(Frame).where(Frame.site == "t1"))} == {"used"}
        lights = s.scalars(select(Frame).where(Frame.site == "t2")).all()
        assert {f.state for f in lights} == {"waiting"}
        assert all("a master of site t1" in (f.last_error or "") for f in lights)
