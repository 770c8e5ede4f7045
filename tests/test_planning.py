"""Waiting lights are planned on events, not on every tick: an idle daemon's cost must not grow
with the number of lights that wait (issue: 2,000 lights waiting for flats cost a third of a core).

Events: start-up, a new master, a light that changes (new, back from ``missing``, reset by
another process), a wait that times out under ``on_timeout = "partial"``, a job to try again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update

from ccdwatch import synth
from ccdwatch.catalog import Catalog, utcnow
from ccdwatch.jobs import tasks
from ccdwatch.models import Calibrated, Frame, FrameState
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
