"""The pipeline, assembled in one place you can read top to bottom.

``handle(path)``  ingest one file: safe read, header normalisation, one catalogue row per
                  distinct content; a light is calibrated at once when its masters exist.
``tick()``        periodic work: build masters whose frames have settled, calibrate lights that
                  were waiting (and recalibrate those a new master serves better), stack groups
                  that have gone quiet, refresh the night report. Waiting lights are planned
                  again on events only (new masters, changed lights, a timed-out wait, start-up:
                  :class:`~ccdwatch.pipeline.calibrate.WaitingLights`), so an idle tick costs
                  the same however many lights wait.
``finish()``      what ``watch --once`` does at the end: everything ``tick`` does, as if the
                  night were over.

This is the only place that orders the stages (``ingest``, ``masters``, ``calibrate``,
``stacking``); they never call each other. Each stage plans in the catalogue, the runner runs
the jobs on the workers, and the stage commits each result in one transaction, after its
output files are safely in place (temp file, fsync, rename). Every job is safe to run twice:
a job whose result already exists is not planned again.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ccdwatch.catalog import Catalog, catalogue_full, catalogue_locked, connection_lost
from ccdwatch.catalog.queries import known_product_paths
from ccdwatch.config import Config
from ccdwatch.fitsio import sweep_temp_files
from ccdwatch.jobs import pool, specs
from ccdwatch.keys import GroupKey
from ccdwatch.models import FrameState
from ccdwatch.pipeline import calibrate, durability, gone, masters, stacking
from ccdwatch.pipeline.context import Context
from ccdwatch.pipeline.ingest import Ingester, Outcome, wants
from ccdwatch.pipeline.reclassify import Reclassified, reclassify
from ccdwatch.pipeline.runner import RESULTS, Runner
from ccdwatch.products import preview_path, unreferenced_products

logger = logging.getLogger(__name__)


class Pipeline:
    """All processing for one incoming tree, one products root and one catalogue."""

    def __init__(self, config: Config, catalog: Catalog, *, clock: Callable[[], float] = time.time,
                 defer_sync: bool = False) -> None:
        """``defer_sync``: calibrated lights are not waited on to reach the disk (the ``watch``
        daemon), where `ccdwatch.pipeline.durability.for_daemon` says that can be made safe."""
        ctx = Context(config, catalog, clock)
        self.ctx = dataclasses.replace(ctx, unsynced=durability.for_daemon(ctx)) if defer_sync else ctx
        self.cfg = config
        self.catalog = catalog
        self.ctx.products.mkdir(parents=True, exist_ok=True)
        self.runner = Runner(self.ctx)
        self.ingester = Ingester(self.ctx, self.runner)
        self.waiting = calibrate.WaitingLights(self.ctx)
        #: when the next open stack group closes (catalogue time, UTC), as of the last `tick`
        self.next_group_close: datetime | None = None

    @property
    def workers(self) -> pool.JobRunner:
        return self.runner.workers

    @property
    def paused(self) -> str | None:
        """Why processing is paused (a full disk), or None."""
        return self.runner.paused

    def maybe_resume(self) -> bool:
        return self.runner.maybe_resume()

    def close(self) -> None:
        self.runner.close()
        if self.catalog.writer:
            from ccdwatch.catalog.sites import release_all

            release_all(self.catalog, self.ctx.owner)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wants(self, path: Path) -> bool:
        """`ingest.wants` below this pipeline's incoming directory."""
        return wants(path, self.ctx.incoming)

    # ------------------------------------------------------------------ start-up recovery
    def load_jobs(self) -> None:
        """Import what planning and running jobs needs (the jobs' module; QA's, which ranks a
        group's frames) now: the live daemon, which will plan jobs, pays it at start-up instead
        of in the first file's or the first group's latency. ``watch --once`` does not call it:
        it imports them with its first job, if it has one."""
        importlib.import_module("ccdwatch.jobs.tasks")
        for name in RESULTS:
            importlib.import_module(name)

    def recover(self) -> dict[str, int]:
        """Converge after a crash: sweep temp files, forget outputs no row references, retire
        the current masters whose file is gone (made again from their raw frames)."""
        products = self.ctx.products
        removed = sweep_temp_files(products)
        if self.ctx.workdir.exists():
            shutil.rmtree(self.ctx.workdir, ignore_errors=True)
        with self.catalog.session() as s:
            known = known_product_paths(s)
        orphans = 0
        for path in unreferenced_products(products, known):
            path.unlink(missing_ok=True)
            preview_path(path).unlink(missing_ok=True)
            orphans += 1
        if removed or orphans:
            logger.warning("recovery: removed %d temp files and %d orphan products", len(removed), orphans)
        lost = self.ctx.unsynced.settle(self.catalog) if self.ctx.unsynced is not None else []
        masters_lost = gone.check_masters(self.ctx)  # rows without files: made again from their raw frames
        changed = self.reclassify()  # the rules may have changed since the last run
        return {"temp_files": len(removed), "orphans": orphans, "reclassified": len(changed.changed),
                "lost": len(lost), "masters_lost": len(masters_lost)}

    def reclassify(self, night: str | None = None, *, force: bool = False) -> Reclassified:
        """Classify again the frames classified with other rules (or another classifier);
        what depended on a changed type is redone by the next ``tick``."""
        return reclassify(self.ctx, night=night, force=force)

    # ------------------------------------------------------------------ the stages, in order
    def handle(self, path: str | os.PathLike[str], *, final: bool = False) -> Outcome:
        """Ingest one path (safe to call for any event, any number of times)."""
        return self.handle_many([path], final=final)[0]

    def handle_many(self, paths: Sequence[str | os.PathLike[str]], *, final: bool = False) -> list[Outcome]:
        """Ingest a batch of paths; calibrate the new lights whose masters exist.

        ``final``: the files of a night caught up (``watch --once``), which `finish` ends by
        planning every waiting light: the new lights are left to it, planned once (a catch-up of
        41 files planned its 16 lights, all waiting for masters, between its two batches of
        ingest: 0.1 s with the workers idle, and again at the end).

        A catalogue that cannot be written (disk full, its write lock held by another process,
        its server gone) pauses the pipeline: every path of the batch comes back ``paused``, to
        be offered again once it can.
        """
        waiting = self.waiting
        try:
            untouched = not final and waiting.seen is not None and waiting.signature() == waiting.seen
            outcomes, lights = self.ingester.ingest(paths, final=final)
        except Exception as exc:
            if not self._pause_for(exc):
                raise
            return [Outcome("paused", detail=self.paused or "") for _ in paths]
        # new lights, and known content seen again (a light back from 'missing' waits again)
        todo = lights + [o.frame_id for o in outcomes if o.status == "duplicate" and o.frame_id is not None]
        if todo and not final:
            with self._pause_on_full_catalogue():
                self.calibrate(todo, final=final)
                if untouched:  # every change to the waiting lights since the last pass was ours
                    waiting.settled()
        return outcomes

    def tick(self, *, final: bool = False) -> None:
        """Masters, then calibration (with what the new masters serve), then stacks and reports.
        A master a job found gone or changed (retired: `ccdwatch.pipeline.gone`) is made again,
        and its lights calibrated, in the same tick: ``watch --once`` ends with them done."""
        if not self.maybe_resume():
            return
        with self._pause_on_full_catalogue():
            lost = self.runner.lost_masters
            self._masters_and_lights(final=final)
            if self.runner.lost_masters != lost and self.paused is None:
                self._masters_and_lights(final=final)  # masters found gone or changed: made again now, once
            if self.paused is None:
                due, self.next_group_close = stacking.due_and_next_close(self.ctx, final=final)
                self.stack(due)
            if self.ctx.unsynced is not None and not final:
                self.ctx.unsynced.maybe_settle(self.catalog)  # the live daemon, between jobs

    def _masters_and_lights(self, *, final: bool) -> None:
        """A tick's masters, then its lights (those the new masters serve, those that wait)."""
        built, early = self.build_masters(final=final)
        if self.paused is not None:
            return
        lights, full = self.waiting.due(built, final=final)
        if early is not None:  # planned once a tick: what failed is tried at the next one
            covered = early.covered
            lights = [i for i in lights if i not in covered]
            self.waiting.planned(early.failed, [])
        if lights:
            self.calibrate(lights, final=final)
        if (full or lights) and self.paused is None:
            self.waiting.settled()

    @contextmanager
    def _pause_on_full_catalogue(self) -> Iterator[None]:
        """A commit refused for lack of space, kept waiting past the busy timeout by another
        process's write lock, or cut by a lost connection to the catalogue's server, rolls back
        and pauses the pipeline: the work is planned again from the catalogue's states once space
        returns, the lock is free or the server answers again."""
        try:
            yield
        except Exception as exc:
            if not self._pause_for(exc):
                raise

    def _pause_for(self, exc: BaseException) -> bool:
        """Pause for a full, locked or unreachable catalogue; False for any other error."""
        if catalogue_full(exc):
            self.runner.pause(exc, where="catalogue: ")
        elif catalogue_locked(exc):
            self.runner.pause(exc, where="catalogue: ", what="catalogue locked by another process",
                              check=self.catalog.lock_free)
        elif connection_lost(exc):
            self.runner.pause(exc, where="catalogue: ", what="catalogue unreachable",
                              check=self.catalog.ping)
        else:
            return False
        return True

    def finish(self) -> None:
        """End of ``watch --once``: build, calibrate and stack everything as if the night were over."""
        self.tick(final=True)

    # ------------------------------------------------------------------ one stage each
    def build_masters(self, *, final: bool = False) -> tuple[list[int], calibrate.EarlyLights | None]:
        """Build (or rebuild as a new version) every master whose frames have settled: bias
        first, then darks (on the bias), then flats (on both; beside the darks when they need
        none of them, `masters.build_ranks`); one rank's masters in parallel. The lights whose
        masters all exist are calibrated as the last rank's masters are committed
        (`calibrate.EarlyLights`). The masters built, by id, and those lights (None: no rank
        was built)."""
        ranks = masters.build_ranks(self.ctx, masters.candidates(self.ctx))
        last = max((r for r, groups in enumerate(ranks) if groups), default=-1)
        built: list[int] = []
        early = None
        for rank, groups in enumerate(ranks):
            plans = masters.plan_due(self.ctx, groups, final=final)
            if plans:
                self.waiting.unsettled()  # a full pass of the waiting lights, even if this one is cut short
                early = calibrate.EarlyLights(self.ctx, plans, built, final=final) if rank == last else None
                # a last round's idle workers: threads for its masters, unless lights will follow on them
                share = early is None or len(plans) < self.runner.workers.processes
                built += [i for i in self.runner.run(specs.BUILD_MASTER, plans,
                                                     lambda p, r: masters.commit(self.ctx, p, r),
                                                     fault_point="master-written", share_cores=share, then=early)
                          if i is not None]  # None: too few inputs were left once those of bad level went
            if self.paused is not None:
                break
        return built, early

    def calibrate(self, frame_ids: Sequence[int], *, final: bool = False) -> int:
        """Calibrate the lights whose masters exist (or policy allows partial); the number written."""
        plans = calibrate.plan_many(self.ctx, frame_ids, final=final)
        if not plans:
            return 0
        done = self.runner.run_stage(calibrate.stage(self.ctx, plans))
        self.waiting.planned([p.frame_id for p in plans], done)
        return len(done)

    def stack(self, groups: Sequence[GroupKey]) -> list[int]:
        """Stack several groups (combined in parallel on the workers), then refresh their reports."""
        plans = stacking.plan_many(self.ctx, groups)
        if not plans:
            return []
        built = self.runner.run(specs.STACK_GROUP, plans,
                                lambda p, r: stacking.commit(self.ctx, p, r),
                                fault_point="stack-written", share_cores=True)
        if built:
            from ccdwatch import report

            for night in sorted({g.night for g in groups}, key=str):
                report.refresh(self.cfg, self.catalog, night, run=self.runner.run_side_jobs)  # never raises
        return built

    # ------------------------------------------------------------------ on demand (CLI)
    def groups_of_night(self, night: str) -> list[GroupKey]:
        """Assign the night's lights to their stack groups; the groups, by key."""
        with self.catalog.session() as s:
            return sorted(set(stacking.assign_groups(self.ctx, s, night).values()), key=str)

    def recalibrate(self, night: str | None = None) -> tuple[int, int]:
        """Redo the calibration of every light (of a night), e.g. after a configuration change:
        new product versions, the old ones stay recorded. Returns (recalibrated, considered)."""
        from ccdwatch.catalog.queries import forget_current_calibrations

        with self.catalog.session() as s:
            ids = forget_current_calibrations(s, night, site=self.ctx.site)
        n = sum(self.calibrate([i], final=True) for i in ids)
        self.stack(stacking.due_groups(self.ctx, final=True))
        return n, len(ids)

    def retry(self, state: FrameState = FrameState.FAILED, night: str | None = None) -> int:
        """Give frames in ``state`` (failed, missing, quarantined or rejected) another try; how many."""
        from ccdwatch.catalog.queries import frames_to_retry
        from ccdwatch.pipeline.lifecycle import retry

        with self.catalog.session() as s:
            frames = frames_to_retry(s, state, night, site=self.ctx.site)
            for f in frames:
                retry(s, f)
            return len(frames)
