"""Raw files that vanish, return or change after ingest (issue: survive what a night does).

A master is built from the inputs still on disk; a vanished input is ``missing`` (never charged
to its siblings) and comes back by itself; a path whose content changes is the same exposure,
so the old frame is superseded and what used it is redone; ``retry`` resets failed frames.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.models import Frame, FrameState, Master, Stack, StackMember
from ccdwatch.pipeline import Pipeline

from .helpers import make_config

CAMERA = synth.Camera(shape=(96, 128))


@pytest.fixture(scope="module")
def staging(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("staging")
    synth.make_night(d, camera=CAMERA, seed=21, n_bias=5, n_dark=3, n_flat=3, filters=("V",), n_light=4,
                     n_stars=40)
    return d


@pytest.fixture
def pipe(tmp_path, staging):
    cfg = make_config(tmp_path, workers={"processes": 0})
    for p in sorted(staging.iterdir()):
        shutil.copy2(p, cfg.paths.incoming / p.name)
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        yield pipe, cfg.paths.incoming
    cat.close()


def ingest(pipe: Pipeline, incoming: Path, pattern: str = "*.fits") -> None:
    for p in sorted(incoming.glob(pattern)):
        pipe.handle(p)


def frame_of(pipe: Pipeline, name: str) -> SimpleNamespace:
    """The newest frame first catalogued under ``name``, as plain values."""
    with pipe.catalog.reader() as s:
        frames = s.scalars(select(Frame).where(Frame.path.like(f"%/{name}"))).all()
        f = max(frames, key=lambda f: f.id)
        return SimpleNamespace(**{c.name: getattr(f, c.name) for c in Frame.__table__.columns})


def bias_masters(pipe: Pipeline) -> list[Master]:
    with pipe.catalog.session() as s:
        return list(s.scalars(select(Master).where(Master.kind == "bias").order_by(Master.version)))


def test_vanished_bias_is_missing_and_master_built_from_the_rest(pipe):
    pipe, incoming = pipe
    ingest(pipe, incoming, "bias_*.fits")
    gone = incoming / "bias_003.fits"
    keep = gone.read_bytes()
    gone.unlink()
    pipe.tick(final=True)
    masters = bias_masters(pipe)
    assert [m.n_frames for m in masters] == [4]
    f = frame_of(pipe, "bias_003.fits")
    assert f.state == FrameState.MISSING and "gone" in f.state_reason
    with pipe.catalog.reader() as s:
        assert not s.scalars(select(Frame).where(Frame.state == FrameState.FAILED)).all()
        assert all(x.tries == 0 for x in s.scalars(select(Frame)))

    # the file comes back: the frame returns by itself and the master gets a version with it
    gone.write_bytes(keep)
    assert pipe.handle(gone).status == "duplicate"
    assert frame_of(pipe, "bias_003.fits").state == FrameState.INGESTED
    pipe.tick(final=True)
    assert [m.n_frames for m in bias_masters(pipe)] == [4, 5]


def test_input_gone_between_plan_and_job_charges_nobody(pipe, monkeypatch):
    pipe, incoming = pipe
    ingest(pipe, incoming, "bias_*.fits")
    from ccdwatch.jobs import tasks

    real = tasks.build_master

    def delete_then_build(spec):  # the file vanishes after planning, before the job reads it
        Path(spec.frames[1][0][0]).unlink()
        return real(spec)

    monkeypatch.setattr(tasks, "build_master", delete_then_build)
    pipe.tick(final=True)
    monkeypatch.setattr(tasks, "build_master", real)
    with pipe.catalog.reader() as s:
        states = sorted(f.state for f in s.scalars(select(Frame)))
        assert states.count(FrameState.MISSING) == 1
        assert all(f.tries == 0 for f in s.scalars(select(Frame)))
    pipe.tick(final=True)  # planned again without it
    assert [m.n_frames for m in bias_masters(pipe)] == [4]


def test_dark_rewritten_in_place_supersedes_and_master_rebuilt(pipe):
    pipe, incoming = pipe
    ingest(pipe, incoming, "bias_*.fits")
    ingest(pipe, incoming, "dark_*.fits")
    pipe.tick(final=True)
    with pipe.catalog.session() as s:
        dark_v1 = s.scalar(select(Master).where(Master.kind == "dark"))
    path = incoming / "dark_300s_002.fits"
    old = frame_of(pipe, "dark_300s_002.fits")
    with fits.open(path, mode="update") as hdul:  # a program adds a card in place: same exposure
        hdul[0].header["HISTORY"] = "edited in place"
    assert pipe.handle(path).status == "ingested"
    new = frame_of(pipe, "dark_300s_002.fits")
    assert new.id != old.id
    with pipe.catalog.reader() as s:
        was = s.get(Frame, old.id)
        assert was.state == FrameState.SUPERSEDED and f"frame {new.id}" in was.state_reason
    pipe.tick(final=True)
    with pipe.catalog.reader() as s:
        darks = s.scalars(select(Master).where(Master.kind == "dark").order_by(Master.version)).all()
        assert [d.version for d in darks] == [1, 2]
        inputs = {i.frame_id for i in darks[-1].inputs}
        assert new.id in inputs and old.id not in inputs and len(inputs) == 3
        assert dark_v1.id == darks[0].id


def test_light_header_edited_after_calibration_is_stacked_once(pipe):
    pipe, incoming = pipe
    ingest(pipe, incoming)
    pipe.tick(final=True)
    light = sorted(incoming.glob("M51_V_*.fits"))[1]
    with fits.open(light, mode="update") as hdul:  # a plate solver writes WCS into the raw file
        hdul[0].header["CTYPE1"] = "RA---TAN"
        hdul[0].header["CTYPE2"] = "DEC--TAN"
    assert pipe.handle(light).status == "ingested"
    pipe.tick(final=True)
    with pipe.catalog.reader() as s:
        stack = s.scalar(select(Stack).where(Stack.current))
        members = s.scalars(select(StackMember).where(StackMember.stack_id == stack.id)).all()
        assert len(members) == 4 and sum(m.used for m in members) <= 4
        assert stack.version == 2
        lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
        assert sorted(f.state for f in lights).count(FrameState.SUPERSEDED) == 1
        assert stack.total_exposure <= 4 * lights[0].exptime


def test_plate_solved_copy_elsewhere_is_stacked_once(pipe):
    """A program writes a plate-solved copy of a light into another folder after the night was
    stacked: other bytes at another path, the same camera, DATE-OBS and exposure time. The copy
    supersedes the original (history kept) and the stack still counts 4 exposures, not 5."""
    pipe, incoming = pipe
    ingest(pipe, incoming)
    pipe.tick(final=True)
    original = sorted(incoming.glob("M51_V_*.fits"))[2]
    solved = incoming / "solved" / original.name
    solved.parent.mkdir()
    shutil.copy2(original, solved)
    with fits.open(solved, mode="update") as hdul:
        hdul[0].header["CTYPE1"] = "RA---TAN"
    assert pipe.handle(solved).status == "ingested"
    pipe.tick(final=True)
    with pipe.catalog.reader() as s:
        old = s.scalar(select(Frame).where(Frame.path == str(original)))
        new = s.scalar(select(Frame).where(Frame.path == str(solved)))
        assert old.state == FrameState.SUPERSEDED and f"superseded by frame {new.id}" in old.state_reason
        assert new.state == FrameState.STACKED
        stack = s.scalar(select(Stack).where(Stack.current))
        members = s.scalars(select(StackMember).where(StackMember.stack_id == stack.id)).all()
        assert stack.version == 2 and len(members) == 4 and old.id not in {m.frame_id for m in members}
        assert stack.total_exposure == pytest.approx(4 * old.exptime)


def test_light_whose_raw_is_gone_waits_as_missing_not_failed(pipe):
    pipe, incoming = pipe
    ingest(pipe, incoming)
    victim = sorted(incoming.glob("M51_V_*.fits"))[0]
    victim.unlink()
    pipe.tick(final=True)
    f = frame_of(pipe, victim.name)
    assert f.state == FrameState.MISSING and f.tries == 0


def test_retry_resets_failed_frames(pipe):
    pipe, incoming = pipe
    ingest(pipe, incoming, "bias_*.fits")
    with pipe.catalog.session() as s:
        f = s.scalars(select(Frame)).first()
        f.state, f.tries, f.last_error = FrameState.FAILED, 3, "boom"
        fid = f.id
    assert pipe.retry(FrameState.FAILED) == 1
    with pipe.catalog.reader() as s:
        f = s.get(Frame, fid)
        assert (f.state, f.tries, f.last_error) == (FrameState.INGESTED, 0, None)
        assert f.events[-1].kind == "retry"


def test_retry_command_resets_only_the_night_and_state_asked_for(pipe, capsys):
    """`ccdwatch retry --night N` resets that night's failed frames; another night's failed frame
    and the night's missing frame keep their state until asked for with --state missing."""
    from ccdwatch.cli import main

    pipe, incoming = pipe
    ingest(pipe, incoming, "bias_*.fits")
    with pipe.catalog.session() as s:
        frames = s.scalars(select(Frame).order_by(Frame.id)).all()
        night = frames[0].night
        for f, (state, f_night) in zip(frames[:4], [(FrameState.FAILED, night), (FrameState.FAILED, night),
                                                (FrameState.FAILED, "2001-01-01"), (FrameState.MISSING, night)], strict=True):
            f.state, f.tries, f.night = state, 3, f_night
    cfg = pipe.ctx.cfg
    args = ["-q", "--incoming", str(incoming), "--products", str(cfg.paths.products), "--db", str(cfg.paths.database)]
    assert main([*args, "retry", "--night", night]) == 0
    assert capsys.readouterr().out.startswith(f"reset 2 failed frame(s) of night {night}")
    with pipe.catalog.reader() as s:
        states = [f.state for f in s.scalars(select(Frame).order_by(Frame.id))]
    assert states[:4] == [FrameState.INGESTED, FrameState.INGESTED, FrameState.FAILED, FrameState.MISSING]
    assert main([*args, "retry", "--state", "missing"]) == 0
    with pipe.catalog.reader() as s:
        assert s.scalars(select(Frame.state).order_by(Frame.id)).all()[3] == FrameState.INGESTED


def test_a_file_the_system_will_not_let_us_read_is_read_again_once_it_can(pipe, monkeypatch):
    """EACCES on open (a writer's lock on a Windows share, permissions set a moment later, a disk
    that dropped out): tried again up to ingest.max_tries, then quarantined; once readable, the
    next look ingests it, though its size, time and inode never changed (it stayed quarantined,
    'unchanged', for good)."""
    import errno
    import os

    pipe, incoming = pipe
    path = incoming / "bias_001.fits"
    locked = {str(path)}
    real_open = os.open

    def guarded_open(name, flags, *args, **kwargs):
        if os.fspath(name) in locked:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    tries = pipe.cfg.ingest.max_tries
    assert [pipe.handle(path).status for _ in range(tries)] == ["error"] * (tries - 1) + ["quarantined"]
    was = frame_of(pipe, "bias_001.fits")
    assert was.state == FrameState.QUARANTINED and "Permission denied" in was.state_reason
    assert pipe.handle(path).status == "quarantined"  # still locked: looked at again, not 'unchanged'
    locked.clear()
    assert pipe.handle(path).status == "ingested"
    now = frame_of(pipe, "bias_001.fits")
    assert now.state == FrameState.INGESTED and now.imagetyp == "bias"
    with pipe.catalog.reader() as s:
        assert not s.scalars(select(Frame).where(Frame.state == FrameState.QUARANTINED)).all()


def test_a_rewrite_undone_brings_the_first_content_back(pipe):
    """A light plate-solved in place (content A -> B), then put back from a backup (B -> A): A's
    frame goes on and B's is superseded. (Both stayed superseded, each 'by' the other: the
    exposure was never calibrated or stacked again.)"""
    pipe, incoming = pipe
    ingest(pipe, incoming)
    pipe.tick(final=True)
    light = sorted(incoming.glob("M51_V_*.fits"))[1]
    original = light.read_bytes()
    first = frame_of(pipe, light.name)
    with fits.open(light, mode="update") as hdul:
        hdul[0].header["CTYPE1"] = "RA---TAN"
    assert pipe.handle(light).status == "ingested"
    second = frame_of(pipe, light.name)
    light.write_bytes(original)  # the backup restored
    assert pipe.handle(light).status == "duplicate"
    pipe.tick(final=True)
    with pipe.catalog.reader() as s:
        a, b = s.get(Frame, first.id), s.get(Frame, second.id)
        assert b.state == FrameState.SUPERSEDED and f"frame {a.id}" in b.state_reason
        assert a.state == FrameState.STACKED, (a.state, a.state_reason)
        stack = s.scalar(select(Stack).where(Stack.current))
        members = {m.frame_id for m in s.scalars(select(StackMember).where(StackMember.stack_id == stack.id))}
        assert a.id in members and b.id not in members and len(members) == 4


def test_recovery_removes_true_orphans_only(tmp_path, staging):
    """Start-up recovery removes a product no row names (written, not committed: a crash), but not
    a row's product under another spelling of the products root (a symlink, then its real path in
    the config: every master, light and stack was deleted), nor a user's own file in the tree."""
    real = tmp_path / "data" / "products"
    real.mkdir(parents=True)
    (tmp_path / "products").symlink_to(real, target_is_directory=True)  # what the config first said
    cfg = make_config(tmp_path, workers={"processes": 0})
    for p in sorted(staging.iterdir()):
        shutil.copy2(p, cfg.paths.incoming / p.name)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        ingest(pipe, cfg.paths.incoming)
        pipe.tick(final=True)
    made = sorted(p.relative_to(real) for p in real.rglob("*.fits"))
    assert len(made) >= 8
    mine = real / "stacks" / "M51_final_by_me.fits"
    mine.write_bytes(b"my own processing")
    crashed = real / "calibrated" / "M51_V_009_0123abcd_v1.fits"  # renamed into place, row never committed
    crashed.write_bytes(b"x")
    respelled = make_config(tmp_path, workers={"processes": 0}, paths={"products": real})
    with Catalog(respelled.paths.database) as cat, Pipeline(respelled, cat) as pipe:
        assert pipe.recover()["orphans"] == 1
    assert sorted(p.relative_to(real) for p in real.rglob("*.fits")) == sorted([*made, mine.relative_to(real)])
    assert not crashed.exists() and mine.exists()


def test_exposures_written_as_measured_stack_as_one_group(tmp_path, staging):
    """A driver that writes the measured exposure (200.0, 200.002, 199.998...) split one sequence
    into one group per value, none with stack.min_frames lights: nothing was stacked. Exposures
    within 0.2 % (at least 5 ms) of a group's first are that group's; a 2x longer one is not."""
    from ccdwatch.keys import nominal_exposures

    assert nominal_exposures([(1, "V", 200.0), (2, "V", 200.002), (3, "V", 199.998), (4, "R", 200.001),
                              (5, "V", 400.0), (6, "V", None), (7, "V", 0.0321), (8, "V", 0.0345)]) == {
        1: 200.0, 2: 200.0, 3: 200.0, 4: 200.001, 5: 400.0, 6: None, 7: 0.0321, 8: 0.0321}
    cfg = make_config(tmp_path, workers={"processes": 0})
    for p in sorted(staging.iterdir()):
        shutil.copy2(p, cfg.paths.incoming / p.name)
    lights = sorted(cfg.paths.incoming.glob("M51_V_*.fits"))
    for path, exptime in zip(lights, (300.0, 300.002, 299.998, 300.001), strict=True):
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["EXPTIME"] = exptime
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        ingest(pipe, cfg.paths.incoming)
        pipe.tick(final=True)
        with pipe.catalog.reader() as s:
            stacks = s.scalars(select(Stack)).all()
            assert [(st.n_used, st.group_key.split("|")[3]) for st in stacks] == [(4, "300s")]


def test_the_incoming_directory_gone_again_while_watched_anew_is_no_crash(tmp_path, monkeypatch):
    """The directory comes back and is gone again before the observer watches it (a disk that
    bounces): the check says so and tries at its next turn, rather than raising out of the loop."""
    from watchdog.observers.polling import PollingObserver

    from ccdwatch.daemon.watch import Watcher

    cfg = make_config(tmp_path, workers={"processes": 0})
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        watcher = Watcher(cfg, pipe, progress=False)
        watcher.observer = PollingObserver(timeout=0.1)
        watcher._watch_root(watcher.observer)
        watcher.observer.start()
        try:
            watcher._watched = (0, 0, "")  # as if another directory now stood there (removed, made again)
            real = watcher._watch_root

            def bounced(observer):
                raise FileNotFoundError(2, "No such file or directory", str(cfg.paths.incoming))

            monkeypatch.setattr(watcher, "_watch_root", bounced)
            watcher.check_root()  # no exception
            assert watcher._root_gone and not watcher.observer.emitters
            monkeypatch.setattr(watcher, "_watch_root", real)
            watcher.check_root()
            assert not watcher._root_gone and len(watcher.observer.emitters) == 1
        finally:
            watcher.observer.stop()
            watcher.observer.join(5)
