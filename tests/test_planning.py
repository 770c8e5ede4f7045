"""Waiting lights are planned on events, not on every tick: an idle daemon's cost must not grow
with the number of lights that wait (issue: 2,000 lights waiting for flats cost a third of a core).

Events: start-up, a new master, a light that changes (new, back from ``missing``, reset by
another process), a wait that times out under ``on_timeout = "partial"``, a job to try again.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, update

from ccdwatch import synth
from ccdwatch.catalog import Catalog, utcnow
from ccdwatch.jobs import specs, tasks
from ccdwatch.models import Calibrated, Frame, FrameState, Master
from ccdwatch.pipeline import Pipeline, calibrate

from .conftest import make_config

CAMERA = synth.Camera(shape=(48, 64))
START = datetime(2024, 1, 1, 22, 0, 0)


def write(incoming: Path, kind: str, i: int) -> Path:
    exptime = 0.0 if kind == "bias" else 10.0
    data = synth.quantise(synth.expose(CAMERA, kind=kind, exptime=exptime, rng=np.random.default_rng(i)))
    hdr = synth.frame_header(CAMERA, kind=kind, exptime=exptime, date_obs=START + timedelta(seconds=20 * i),
                             filter="V", object="M51")
    return synth.write_fits(incoming / f"{kind}_{i:04d}.fits", data, hdr)


@pytest.fixture
def planned(monkeypatch) -> list[int]:
    """Every light planned, in order (what an idle tick must not do)."""
    calls: list[int] = []
    real = calibrate.plan_calibration

    def counting(ctx, s, masters, frame_id, *, final, **options):
        calls.append(frame_id)
        return real(ctx, s, masters, frame_id, final=final, **options)

    monkeypatch.setattr(calibrate, "plan_calibration", counting)
    return calls


def make_pipeline(tmp_path: Path, n_lights: int, **calibration) -> tuple[Pipeline, Catalog, list[Path]]:
    cfg = make_config(tmp_path, workers={"processes": 0}, calibration=calibration or {})
    cat = Catalog(cfg.paths.database)
    pipe = Pipeline(cfg, cat)
    paths = [write(cfg.paths.incoming, "light", i) for i in range(n_lights)]
    pipe.handle_many(paths)
    return pipe, cat, paths


def reasons(cat: Catalog) -> dict[int, str | None]:
    with cat.reader() as s:
        return dict(s.execute(select(Frame.id, Frame.state_reason).where(Frame.state == FrameState.WAITING)).all())


def test_idle_ticks_plan_nothing_however_many_lights_wait(tmp_path, planned):
    pipe, cat, _ = make_pipeline(tmp_path, 60)
    with pipe, cat:
        assert len(planned) == 60  # each new light is planned once, when it is ingested
        assert all("bias" in r for r in reasons(cat).values())
        planned.clear()
        pipe.tick()
        assert len(planned) == 60  # start-up: every waiting light once
        planned.clear()
        for _ in range(5):
            pipe.tick()
        assert planned == []
        # an event: a master bias is built; every waiting light is planned again, once
        pipe.handle_many([write(pipe.ctx.incoming, "bias", 100 + i) for i in range(3)])
        pipe.tick()
        assert sorted(planned) == sorted(reasons(cat))
        assert not any("bias" in r for r in reasons(cat).values())  # now they wait for dark and flat
        planned.clear()
        pipe.tick()
        assert planned == []


def test_a_change_made_by_another_process_is_noticed(tmp_path, planned):
    pipe, cat, _ = make_pipeline(tmp_path, 8)
    with pipe, cat:
        pipe.tick()
        with cat.session() as s:  # a light that failed for good ...
            victim = s.scalars(select(Frame).order_by(Frame.id)).first()
            victim.state, victim.tries, victim_id = FrameState.FAILED, 3, victim.id
        pipe.tick()
        planned.clear()
        pipe.tick()
        assert planned == []
        with Catalog(pipe.cfg.paths.database) as other, Pipeline(pipe.cfg, other) as cli:
            assert cli.retry(FrameState.FAILED) == 1  # ... reset by `ccdwatch retry`
        assert reasons(cat)[victim_id] is None
        pipe.tick()
        assert victim_id in planned
        assert "waiting for" in reasons(cat)[victim_id]


def test_light_back_from_missing_is_planned_when_seen_again(tmp_path, planned):
    pipe, cat, paths = make_pipeline(tmp_path, 4)
    with pipe, cat:
        pipe.tick()
        with cat.session() as s:
            light = s.scalars(select(Frame).where(Frame.path == str(paths[2]))).one()
            light.state, light.state_reason, light_id = FrameState.MISSING, "raw file gone", light.id
        pipe.tick()
        planned.clear()
        assert pipe.handle(paths[2]).status == "duplicate"  # the file of a missing frame is read again
        assert planned == [light_id] and "waiting for" in reasons(cat)[light_id]
        planned.clear()
        pipe.tick()
        assert planned == []


def test_timed_out_wait_is_calibrated_partially_and_a_failed_job_tried_again(tmp_path, planned, monkeypatch):
    pipe, cat, _ = make_pipeline(tmp_path, 5, on_timeout="partial", max_wait_hours=1.0)
    with pipe, cat:
        pipe.tick()
        planned.clear()
        pipe.tick()
        assert planned == []
        with cat.session() as s:  # two lights have waited longer than max_wait_hours
            old = [f.id for f in s.scalars(select(Frame).order_by(Frame.id).limit(2))]
            s.execute(update(Frame).where(Frame.id.in_(old)).values(created_at=utcnow() - timedelta(hours=2)))
        real, failures = tasks.calibrate_light, []

        def fail_once(spec):
            if not failures:
                failures.append(spec.frame_id)
                raise OSError("a transient read error")
            return real(spec)

        monkeypatch.setattr(tasks, "calibrate_light", fail_once)
        pipe.tick()
        assert set(old) <= set(planned) and len(failures) == 1
        planned.clear()
        pipe.tick()
        assert planned == failures  # only the failed job, at the next tick
        planned.clear()
        pipe.tick()
        assert planned == []
        with cat.reader() as s:
            done = s.scalars(select(Calibrated).where(Calibrated.current)).all()
            assert sorted(c.frame_id for c in done) == sorted(old)
            assert all(c.partial and "bias" in c.missing for c in done)
            assert s.get(Frame, failures[0]).tries == 1
        assert len(reasons(cat)) == 3


def test_jobs_of_a_last_incomplete_round_share_the_idle_workers():
    """`Runner._share_cores`: jobs that fill every worker run on one thread each; those of a last
    round that leaves workers idle (or all, when fewer than the workers) share them as threads."""
    import dataclasses
    from types import SimpleNamespace

    from ccdwatch.pipeline.runner import Runner

    @dataclasses.dataclass(frozen=True)
    class Spec:
        name: str
        threads: int = 1

    def threads(n: int, workers: int) -> list[int]:
        runner = SimpleNamespace(workers=SimpleNamespace(processes=workers))
        return [s.threads for s in Runner._share_cores(runner, [Spec(str(i)) for i in range(n)])]  # type: ignore[arg-type]

    assert threads(1, 2) == [2]  # one master of a rank, one group to stack
    assert threads(2, 2) == [1, 1]
    assert threads(3, 2) == [1, 1, 2]  # a dark and two flats: the last flat alone on both cores
    assert threads(5, 2) == [1, 1, 1, 1, 2]
    assert threads(3, 4) == [1, 1, 1]  # 4 // 3
    assert threads(5, 4) == [1, 1, 1, 1, 4]
    assert threads(2, 1) == [1, 1]


def test_lights_are_planned_as_the_last_masters_come_once_each_and_get_the_nights_masters(tmp_path, planned,
                                                                                          monkeypatch):
    """The last rank of masters (a dark and two flats: the flats need no dark of theirs) hands
    over the lights its masters complete as each is committed (`calibrate.EarlyLights`): none
    while the dark is still to come, those of a filter once its flat is in, the rest at the last
    master. Every light is planned once in the tick and calibrated once, with its own filter's
    flat of the night and the night's dark."""
    cfg = make_config(tmp_path, workers={"processes": 0})
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=4, n_bias=3, n_dark=3, n_flat=3, filters=("V", "R"),
                     n_light=4, light_exptime=300.0, dark_exptime=300.0, flat_exptime=3.0, n_stars=20)
    handed: list[tuple[str, str | None, list[str]]] = []
    real_call = calibrate.EarlyLights.__call__

    def spying(self, plan, master_id):
        stage = real_call(self, plan, master_id)
        with Catalog(cfg.paths.database) as cat, cat.reader() as s:
            filters = sorted(s.get(Frame, p.frame_id).filter for p in (stage.plans if stage else []))
        handed.append((plan.kind, plan.filter, filters))
        return stage

    monkeypatch.setattr(calibrate.EarlyLights, "__call__", spying)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        pipe.handle_many(sorted(Path(cfg.paths.incoming).glob("*.fits")))
        planned.clear()
        pipe.tick(final=True)
        assert [(kind, flt) for kind, flt, _ in handed] == [("dark", None), ("flat", "R"), ("flat", "V")] or \
            [(kind, flt) for kind, flt, _ in handed] == [("dark", None), ("flat", "V"), ("flat", "R")]
        first_flat, last_flat = handed[1][1], handed[2][1]
        assert handed[0][2] == []  # the dark: both flats still to come hold every light
        assert handed[1][2] == [first_flat] * 4  # the lights of the first flat's filter, the others held
        assert handed[2][2] == [last_flat] * 4  # the rest, at the rank's last master
        with cat.reader() as s:
            lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
            assert sorted(planned) == sorted(f.id for f in lights)  # each once in the tick
            rows = s.scalars(select(Calibrated)).all()
            assert sorted(r.frame_id for r in rows) == sorted(f.id for f in lights)  # each calibrated once
            for row in rows:
                frame = s.get(Frame, row.frame_id)
                flat, dark = s.get(Master, row.flat_id), s.get(Master, row.dark_id)
                assert flat is not None and flat.filter == frame.filter and flat.night == frame.night
                assert dark is not None and dark.exptime == 300.0 and row.bias_id is not None
                assert not row.partial


def test_a_master_still_to_come_holds_the_lights_it_could_serve():
    """Before the rank's last master, a bias or dark still to come holds every light; nothing is
    even looked up (the context is never touched)."""
    from types import SimpleNamespace

    plans = [SimpleNamespace(kind="flat", filter="R"), SimpleNamespace(kind="dark", filter=None),
             SimpleNamespace(kind="flat", filter="V")]
    early = calibrate.EarlyLights(None, plans, [1], final=False)  # type: ignore[arg-type]
    assert early(plans[0], 2) is None
    assert early.built == [1, 2] and early.planned == [] and early.covered == set()



def test_the_masters_of_the_rank_not_committed_yet_hold_the_lights_whatever_their_order():
    """What holds the lights is the rank's masters not committed yet, not those queued after the
    one just committed: a dark run again after its worker died is committed after the flats, and
    until then it holds every light (the flat queued last is not the rank's last master then)."""
    from types import SimpleNamespace

    plans = [SimpleNamespace(kind="dark", filter=None), SimpleNamespace(kind="flat", filter="R"),
             SimpleNamespace(kind="flat", filter="V")]
    early = calibrate.EarlyLights(None, plans, [1], final=False)  # type: ignore[arg-type]
    assert early(plans[1], 2) is None
    assert early(plans[2], 3) is None  # the context is never touched: nothing is even looked up
    assert early.built == [1, 2, 3] and early.planned == [] and early.covered == set()



@dataclasses.dataclass(frozen=True)
class _DarkDiesOnce(specs.Job):
    """`build_master`, but the dark's worker is killed once (``marker`` exists), once the flats
    beside it are done: the dark runs again, alone, and is committed after them."""

    marker: str = ""

    def __call__(self, spec):
        if Path(str(spec.out_path)).name.startswith("dark") and os.path.exists(self.marker):
            time.sleep(2.0)
            os.unlink(self.marker)
            os.kill(os.getpid(), 9)
        return super().__call__(spec)


def test_a_dark_run_again_after_its_worker_died_still_calibrates_every_light(tmp_path, monkeypatch):
    """The last rank (a dark, flats in V and R) on two real workers, the dark's worker killed once
    while the flats are built: every light is calibrated in the same tick, with the night's dark
    (the results came back flats first, and the lights were planned as if the dark were in: they
    waited "for a dark" with the dark built, until some other event)."""
    cfg = make_config(tmp_path, workers={"processes": 2, "memory_limit_mb": 0})
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=4, n_bias=3, n_dark=3, n_flat=3, filters=("V", "R"),
                     n_light=4, light_exptime=300.0, dark_exptime=300.0, flat_exptime=3.0, n_stars=20)
    marker = tmp_path / "kill-the-dark"
    marker.touch()
    monkeypatch.setattr(specs, "BUILD_MASTER", _DarkDiesOnce("build_master", str(marker)))
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        pipe.handle_many(sorted(Path(cfg.paths.incoming).glob("*.fits")))
        pipe.tick(final=True)
        assert not marker.exists()  # the dark's worker did die
        with cat.reader() as s:
            lights = s.scalars(select(Frame.id).where(Frame.imagetyp == "light")).all()
            rows = s.scalars(select(Calibrated)).all()
            assert sorted(r.frame_id for r in rows) == sorted(lights)  # each once
            for row in rows:
                dark = s.get(Master, row.dark_id)
                assert dark is not None and dark.exptime == 300.0 and not row.partial


def test_an_early_light_whose_commit_fails_is_planned_by_the_next_tick(tmp_path, monkeypatch):
    """The first early light's commit fails in the masters' pass: the tick stops there, before the
    waiting lights' pass; the masters are committed, so the next tick builds none, and it must
    still give the lights their pass (it planned nothing: they waited for good)."""
    from ccdwatch.pipeline import masters

    cfg = make_config(tmp_path, workers={"processes": 0})
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=5, n_bias=3, n_dark=3, n_flat=3, filters=("V",),
                     n_light=4, light_exptime=300.0, dark_exptime=300.0, flat_exptime=3.0, n_stars=20)
    real_candidates, real_commit = masters.candidates, calibrate.commit

    def failing_once(ctx, plan, result):
        monkeypatch.setattr(calibrate, "commit", real_commit)
        raise RuntimeError("database is locked")

    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        pipe.handle_many(sorted(Path(cfg.paths.incoming).glob("*.fits")))
        monkeypatch.setattr(masters, "candidates", lambda ctx: [])
        pipe.tick()  # a tick with nothing to build: the waiting lights are settled
        monkeypatch.setattr(masters, "candidates", real_candidates)
        monkeypatch.setattr(calibrate, "commit", failing_once)
        with pytest.raises(RuntimeError, match="locked"):
            pipe.tick()
        pipe.tick()
        with cat.reader() as s:
            assert s.scalar(select(func.count()).select_from(Master)) == 3
            lights = s.scalars(select(Frame.id).where(Frame.imagetyp == "light")).all()
            assert sorted(r.frame_id for r in s.scalars(select(Calibrated))) == sorted(lights)


def test_a_commit_that_fails_stops_the_recording_and_the_rest_are_planned_again(tmp_path, monkeypatch):
    """Results are committed as their jobs end (`Runner.run_stage`); an error of the catalogue
    while committing one stops the recording: raised once the jobs already running are over,
    what was committed before it stays, and the lights not recorded are planned again."""
    cfg = make_config(tmp_path, workers={"processes": 0})
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=5, n_bias=3, n_dark=3, n_flat=3, filters=("V",),
                     n_light=4, light_exptime=300.0, dark_exptime=300.0, flat_exptime=3.0, n_stars=20)
    real_commit = calibrate.commit
    calls: list[int] = []

    def failing_second(ctx, plan, result):
        calls.append(plan.frame_id)
        if len(calls) == 2:
            raise RuntimeError("the catalogue refused it")
        return real_commit(ctx, plan, result)

    monkeypatch.setattr(calibrate, "commit", failing_second)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        pipe.handle_many(sorted(Path(cfg.paths.incoming).glob("*.fits")))
        with pytest.raises(RuntimeError, match="refused"):
            pipe.tick(final=True)
        assert len(calls) == 2  # nothing recorded after the error
        with cat.reader() as s:
            assert [r.frame_id for r in s.scalars(select(Calibrated))] == [calls[0]]
        monkeypatch.setattr(calibrate, "commit", real_commit)
        pipe.tick(final=True)
        with cat.reader() as s:
            rows = s.scalars(select(Calibrated)).all()
            lights = s.scalars(select(Frame.id).where(Frame.imagetyp == "light")).all()
            assert sorted(r.frame_id for r in rows) == sorted(lights)  # each once, the first not again
            assert s.scalar(select(func.count()).select_from(Frame).where(Frame.state == FrameState.WAITING)) == 0


def test_a_catch_up_plans_its_lights_once_when_it_finishes(tmp_path, planned):
    """``watch --once`` ingests with ``final``: the new lights are left to `finish`, which plans
    every waiting light (planning them between the batches of ingest left the workers idle and
    planned them twice)."""
    cfg = make_config(tmp_path, workers={"processes": 0})
    paths = [write(cfg.paths.incoming, "light", i) for i in range(6)]
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        pipe.handle_many(paths[:3], final=True)
        pipe.handle_many(paths[3:], final=True)
        assert planned == []
        pipe.finish()
        assert sorted(planned) == sorted(reasons(cat))
        assert len(planned) == 6 and all("bias" in r for r in reasons(cat).values())


def test_a_light_no_master_of_the_last_rank_serves_is_planned_at_most_twice(tmp_path, planned):
    """Lights in a filter without flats, on a night whose last rank holds a dark and two flats:
    found incomplete once (after the dark), left alone at the next flat, planned as the tick would at
    the rank's last master; the other lights once each."""
    cfg = make_config(tmp_path, workers={"processes": 0})
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=7, n_bias=3, n_dark=3, n_flat=3, filters=("V", "R"),
                     n_light=2, light_exptime=300.0, dark_exptime=300.0, flat_exptime=3.0, n_stars=20)
    for i in range(3):
        data = synth.quantise(synth.expose(CAMERA, kind="light", exptime=300.0, rng=np.random.default_rng(50 + i)))
        hdr = synth.frame_header(CAMERA, kind="light", exptime=300.0, date_obs=START + timedelta(seconds=20 * i),
                                 filter="Ha", object="M51")
        synth.write_fits(Path(cfg.paths.incoming) / f"ha_{i:04d}.fits", data, hdr)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        pipe.handle_many(sorted(Path(cfg.paths.incoming).glob("*.fits")), final=True)
        pipe.tick(final=True)
        with cat.reader() as s:
            by_filter = {f.id: f.filter for f in s.scalars(select(Frame).where(Frame.imagetyp == "light"))}
    counts = {fid: planned.count(fid) for fid in by_filter}
    assert sorted(by_filter.values()) == ["Ha"] * 3 + ["R"] * 2 + ["V"] * 2
    assert all(counts[fid] == 1 for fid, flt in by_filter.items() if flt != "Ha")
    assert all(counts[fid] == 2 for fid, flt in by_filter.items() if flt == "Ha")


def _residual_sigma(path: str, truth: synth.NightTruth, index: int) -> float:
    """Robust sigma (ADU) of a calibrated light against the synthetic truth (sky + stars), off
    the stars and the hot pixels."""
    from ccdwatch import calib
    from ccdwatch.fitsio import read_product

    header, data = read_product(path)
    cam, exptime = truth.camera, truth.exptimes["light"]
    stars = synth.render_stars(cam.shape, truth.light_stars(index), fwhm=truth.fwhm, exptime=exptime)
    residual = data / header["GAIN"] - (truth.sky * exptime + stars)
    return calib.robust_stats(residual[(stars < 1.0) & ~synth.hot_pixels(cam)])[1]


def test_a_night_without_biases_is_calibrated_at_once_and_again_when_its_biases_come(tmp_path):
    """A CMOS night as N.I.N.A. shoots it: no biases, darks of the lights' 300 s, flats with
    dark-flats. The live daemon made darks and flats wait for a master bias that never came, so
    nothing was calibrated for max_wait_hours (18 h). Darks and flats wait for a bias only when
    biases have arrived: here they are made at once, without, and the lights calibrated with the
    dark that includes the bias. Biases that come later in the night make the darks again on the
    master bias (the flat keeps the dark-flat that removed its bias) and the lights again on them."""
    cam = synth.Camera(shape=(96, 128), instrument="ZWO ASI1600MM")
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    truth = synth.make_night(cfg.paths.incoming, camera=cam, seed=3, n_bias=5, n_dark=5, n_flat=5, filters=("V",),
                             n_light=3, light_exptime=300.0, dark_exptime=300.0, sky=2.0, n_stars=20, style="nina")
    rng = np.random.default_rng(5)
    for i in range(5):  # dark-flats, after the flats
        when = truth.dates["flat"][-1] + timedelta(minutes=2, seconds=10 * i)
        synth.write_fits(cfg.paths.incoming / f"darkflat_{i + 1:03d}.fits",
                         synth.quantise(synth.expose(cam, kind="dark", exptime=3.0, rng=rng)),
                         synth.frame_header(cam, kind="dark", exptime=3.0, date_obs=when, style="nina"))
    biases = {str(p) for p in truth.files["bias"]}
    floor = math.sqrt((truth.sky + cam.dark_current) * 300.0 / cam.gain + cam.read_noise ** 2)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        pipe.handle_many(sorted(str(p) for p in cfg.paths.incoming.iterdir() if str(p) not in biases))
        pipe.tick()
        with cat.reader() as s:
            darks = {m.exptime: m for m in s.scalars(select(Master).where(Master.kind == "dark"))}
            flat = s.scalars(select(Master).where(Master.kind == "flat")).one()
            assert sorted(darks) == [3.0, 300.0] and not any(d.bias_subtracted for d in darks.values())
            assert flat.dark_id == darks[3.0].id and flat.bias_id is None
            light = s.scalar(select(Frame.id).where(Frame.path == str(truth.files["light"][0])))
            first = s.scalar(select(Calibrated).where(Calibrated.frame_id == light, Calibrated.current))
            assert (first.bias_id, first.dark_id, first.dark_scale, first.flat_id, first.partial) == (
                None, darks[300.0].id, 1.0, flat.id, False)
            first_path = first.path
            assert s.scalar(select(func.count()).select_from(Frame).where(Frame.state == FrameState.WAITING)) == 0
        assert _residual_sigma(first_path, truth, 0) < 1.2 * floor
        pipe.handle_many(sorted(biases))  # the biases, shot at dawn
        for _ in range(2):
            pipe.tick()
        with cat.reader() as s:
            bias = s.scalars(select(Master).where(Master.kind == "bias")).one()
            current = {(m.kind, m.exptime): m for m in s.scalars(select(Master))
                       if m.version == max(x.version for x in s.scalars(select(Master).where(
                           Master.calib_key == m.calib_key)))}
            assert [(k, m.version, m.bias_id, m.bias_subtracted) for k, m in sorted(current.items(), key=str)] == [
                (("bias", None), 1, None, False), (("dark", 3.0), 2, bias.id, True), (("dark", 300.0), 2, bias.id, True),
                (("flat", 3.0), 1, None, False)]
            again = s.scalar(select(Calibrated).where(Calibrated.frame_id == light, Calibrated.current))
            assert (again.version, again.bias_id, again.dark_id, again.dark_scale) == (
                2, bias.id, current[("dark", 300.0)].id, 1.0)
            again_path = again.path
        assert _residual_sigma(again_path, truth, 0) < 1.2 * floor


def test_darks_wait_for_biases_that_have_arrived_and_their_lights_say_so(tmp_path):
    """Biases have arrived, fewer than min_frames: the darks wait for their master bias (the
    lights' reason says so, not 'not built yet'), and are built on it once it is there."""
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        pipe.handle_many([write(cfg.paths.incoming, kind, i) for kind, n in (("dark", 3), ("light", 2), ("bias", 1))
                          for i in range(10 * len(kind), 10 * len(kind) + n)])
        pipe.tick()
        with cat.reader() as s:
            assert s.scalar(select(func.count()).select_from(Master)) == 0
        assert all("dark: no master dark for camera set-up" in r and
                   "3 darks have arrived; their master waits for the master bias (1 of 3 biases needed have arrived)"
                   in r for r in reasons(cat).values())
        pipe.handle_many([write(cfg.paths.incoming, "bias", 50 + i) for i in range(2)])
        pipe.tick()
        with cat.reader() as s:
            bias = s.scalars(select(Master).where(Master.kind == "bias")).one()
            dark = s.scalars(select(Master).where(Master.kind == "dark")).one()
            assert dark.bias_id == bias.id and dark.version == 1
        assert all(r.startswith("waiting for flat") for r in reasons(cat).values())


def test_another_sites_biases_make_no_dark_of_this_one_wait(tmp_path):
    """One catalogue for two telescopes of one camera model: the first has two biases in (of the
    three its master needs); the second, a CMOS without biases, has its darks made at once. The
    biases that 'have arrived' were counted over every site, so its darks waited for a master
    bias no site of its would make (up to max_wait_hours)."""
    cam = synth.Camera(shape=(64, 96), instrument="ZWO ASI1600MM")
    db = str(tmp_path / "shared.db")
    first = make_config(tmp_path / "t1", workers={"processes": 0}, report={"refresh": False}, site={"name": "t1"},
                        paths={"database": db})
    synth.make_night(first.paths.incoming, camera=cam, seed=1, n_bias=2, n_dark=0, n_flat=0, filters=("V",),
                     n_light=0, n_stars=0)
    second = make_config(tmp_path / "t2", workers={"processes": 0}, report={"refresh": False}, site={"name": "t2"},
                         paths={"database": db})
    synth.make_night(second.paths.incoming, camera=cam, seed=2, n_bias=0, n_dark=3, n_flat=0, filters=("V",),
                     n_light=0, n_stars=0)
    for cfg in (first, second):
        with Catalog(db) as cat, Pipeline(cfg, cat) as pipe:
            pipe.handle_many(sorted(str(p) for p in cfg.paths.incoming.iterdir()))
            pipe.tick()
    with Catalog(db) as cat, cat.reader() as s:
        assert [(m.kind, m.site) for m in s.scalars(select(Master))] == [("dark", "t2")]
        assert s.scalar(select(func.count()).select_from(Frame).where(Frame.site == "t1",
                                                                      Frame.state == FrameState.INGESTED)) == 2
