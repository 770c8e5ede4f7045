"""Reprocessing campaigns: new versions of every master, calibration and stack of some nights.

After a calibration change or a new ccdwatch version, ``ccdwatch reprocess --night N | --since D
| --all`` makes every product of the selected nights again, as new versions (the old ones stay
recorded), on the local workers or the Dask cluster. A campaign is a catalogue row with its
start time: a product made after it counts as done, so a campaign interrupted and run again
continues where it stopped. Masters first (bias, dark, flat), then the lights (in batches that
keep the workers busy), then the stacks; each result is committed as it arrives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ccdwatch.catalog.campaigns import (
    campaign_start,
    finish_campaign,
    lights_to_redo,
    master_frames,
    nights_selected,
)
from ccdwatch.jobs import specs
from ccdwatch.keys import CALIBRATION_KINDS, CalibKey, GroupKey, calib_keys
from ccdwatch.pipeline import calibrate, masters, stacking
from ccdwatch.pipeline.core import Pipeline

logger = logging.getLogger(__name__)

__all__ = ["Done", "Selection", "reprocess"]


@dataclass(frozen=True)
class Selection:
    """Which nights a campaign covers: one night, every night since a date, or every night."""

    night: str | None = None
    since: str | None = None
    every: bool = False

    def __post_init__(self) -> None:
        if sum((self.night is not None, self.since is not None, self.every)) != 1:
            raise ValueError("choose exactly one of a night, a first night (since), or every night")

    @property
    def key(self) -> str:
        """How the selection is stored with its campaign."""
        return f"night={self.night}" if self.night else f"since={self.since}" if self.since else "all"

    def __str__(self) -> str:
        return f"night {self.night}" if self.night else f"nights since {self.since}" if self.since else "every night"


@dataclass
class Done:
    """What a campaign run made, and what it found already made by an earlier run."""

    masters: int = 0
    calibrated: int = 0
    stacks: int = 0
    skipped: int = 0
    seconds: float = 0.0
    #: wall seconds of each stage ("masters", "lights", "stacks"): planning, jobs and commits
    stage_seconds: dict[str, float] = field(default_factory=dict)


def reprocess(pipe: Pipeline, selection: Selection, *, progress: bool = False) -> Done:
    """Make every master, calibrated light and stack of the selected nights (of this pipeline's
    site) again, unless the campaign already made it; returns the counts."""
    ctx = pipe.ctx
    t0 = time.perf_counter()
    with ctx.catalog.session() as s:
        campaign, started, resumed = campaign_start(s, ctx.site, selection.key)
        nights = nights_selected(s, ctx.site, night=selection.night, since=selection.since)
        frames = master_frames(s, ctx.site, nights)
        keys = sorted({(k, f.night or "nonight")
                       for f, k in zip(frames, calib_keys(frames, ctx.cfg.masters.temperature_tolerance), strict=True)})
        lights = lights_to_redo(s, ctx.site, nights)
    if resumed:
        logger.info("continuing the campaign on %s begun at %sZ", selection, started.isoformat(timespec="seconds"))
    done = Done()
    with _bar(progress, len(keys) + len(lights) + 1) as bar:
        t = time.perf_counter()
        _masters(pipe, keys, started, done, bar)
        done.stage_seconds["masters"], t = time.perf_counter() - t, time.perf_counter()
        _lights(pipe, lights, started, done, bar)
        done.stage_seconds["lights"], t = time.perf_counter() - t, time.perf_counter()
        groups = sorted({g for night in nights for g in pipe.groups_of_night(night)}, key=str)
        bar.total = len(keys) + len(lights) + len(groups)
        bar.refresh()
        _stacks(pipe, groups, started, done, bar)
        done.stage_seconds["stacks"] = time.perf_counter() - t
    if not pipe.paused:
        with ctx.catalog.session() as s:
            finish_campaign(s, campaign)
    done.seconds = time.perf_counter() - t0
    return done


def _masters(pipe: Pipeline, keys: Sequence[tuple[CalibKey, str]], started: datetime, done: Done, bar: Any) -> None:
    ctx = pipe.ctx
    for rank in range(len(CALIBRATION_KINDS)):
        todo = [(k, n) for k, n in keys if k.rank == rank]
        plans = [p for p in (masters.plan_master(ctx, k, n, final=True, redo_before=started) for k, n in todo)
                 if p is not None]
        built = pipe.runner.run(specs.BUILD_MASTER, plans, lambda p, r: masters.commit(ctx, p, r),
                                fault_point="master-written", share_cores=True)
        done.masters += sum(1 for b in built if b is not None)  # None: its inputs were rejected
        done.skipped += len(todo) - len(plans)
        bar.update(len(todo))


def _lights(pipe: Pipeline, lights: Sequence[int], started: datetime, done: Done, bar: Any) -> None:
    ctx = pipe.ctx
    batch = max(4, 4 * max(1, ctx.cfg.workers.processes))
    for i in range(0, len(lights), batch):
        ids = lights[i:i + batch]
        plans = calibrate.plan_many(ctx, ids, final=True, redo_before=started)
        made = pipe.runner.run_stage(calibrate.stage(ctx, plans))
        done.calibrated += len(made)
        done.skipped += len(ids) - len(plans)
        bar.update(len(ids))


def _stacks(pipe: Pipeline, groups: Sequence[GroupKey], started: datetime, done: Done, bar: Any) -> None:
    ctx = pipe.ctx
    plans = stacking.plan_many(ctx, groups, redo_before=started)
    built = pipe.runner.run(specs.STACK_GROUP, plans, lambda p, r: stacking.commit(ctx, p, r),
                            fault_point="stack-written", share_cores=True)
    done.stacks += len(built)
    done.skipped += len(groups) - len(plans)
    bar.update(len(groups))
    if built:
        from ccdwatch import report

        for night in sorted({g.night for g in groups}, key=str):
            report.refresh(ctx.cfg, ctx.catalog, night, run=pipe.runner.run_side_jobs)


@contextmanager
def _bar(progress: bool, total: int) -> Iterator[Any]:
    """A tqdm progress bar with ETA (a silent one when ``progress`` is off)."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="job", desc="reprocess", disable=not progress, smoothing=0.1)
    try:
        yield bar
    finally:
        bar.close()
