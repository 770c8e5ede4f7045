"""Plan -> run on the workers -> commit, once for every stage.

A stage hands the runner its plans (each carries the job's picklable ``spec``); the runner
runs them on the workers, commits each result through the stage's commit function, and deals
with what can go wrong the same way for every stage: a full disk pauses the pipeline (every
state kept; resumed once space returns), a raw file or a master the job reads gone is charged
to nobody, any other failure is logged and counted against the frames the plan names, which end
``failed`` after ``ingest.max_tries``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.exc import IntegrityError

from ccdwatch import faults
from ccdwatch.catalog import log_event, sqlite_path, utcnow
from ccdwatch.catalog.queries import frame_by_sha256, frames_by_id
from ccdwatch.fitsio import DiskFull
from ccdwatch.fitsio.rejected import ProductGone, RawGone
from ccdwatch.jobs import memory, pool
from ccdwatch.models import FrameState
from ccdwatch.pipeline import gone
from ccdwatch.pipeline.context import Context
from ccdwatch.pipeline.lifecycle import mark_missing

logger = logging.getLogger(__name__)


#: What the daemon imports to read jobs' results and rank a group's frames (`ccdwatch.qa`).
RESULTS = ("ccdwatch.qa",)


class Plan(Protocol):
    """What the runner needs of a stage's plan."""

    @property
    def spec(self) -> Any: ...

    @property
    def subject(self) -> str:
        """Says what the job makes, for the log."""
        ...

    @property
    def charged(self) -> Sequence[int]:
        """Frames a failure of the job counts against."""
        ...


P = TypeVar("P", bound=Plan)
R = TypeVar("R")


@dataclass
class Stage(Generic[P, R]):
    """Jobs of one kind for the workers: the job, its plans, how a result is committed (in plan
    order) and, optionally, ``then``: once a result is committed, the stage it makes possible at
    once, whose jobs join the same pass over the workers behind those queued (the lights whose
    masters now all exist, while the last masters are still being built). ``committed`` holds
    what was committed."""

    job: Callable[[Any], Any]
    plans: list[P]
    commit: Callable[[P, Any], R]
    fault_point: str
    then: Callable[[P, R], Stage | None] | None = None
    committed: list[R] = field(default_factory=list)


class Runner:
    """The workers, the pause on a full disk, and failure counting."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.workers: pool.JobRunner = pool.make_workers(ctx.cfg.workers, incoming=ctx.incoming,
                                                         products=ctx.products)
        if isinstance(self.workers, pool.Workers):  # imported while the fork server starts: with the
            self.workers.meanwhile = RESULTS  # first calibrated light's result, they took ~0.25 s of busy cores
        self.paused: str | None = None
        self._paused_at = 0.0
        self._resume_check: Callable[[], bool] | None = None
        self._refused: dict[str, str] = {}  # subject -> the refusal last logged for it
        self.lost_masters = 0  # masters retired because a job found their file gone or changed

    # ------------------------------------------------------------------ running
    def run(self, job: Callable[[Any], Any], plans: Sequence[P], commit: Callable[[P, Any], R], *,
            fault_point: str, share_cores: bool = False,
            then: Callable[[P, R], Stage | None] | None = None) -> list[R]:
        """Run ``job`` on every plan's spec on the workers; commit each result in plan order (`Stage`).

        ``share_cores``: when there are fewer jobs than workers (one master of a rank, one group
        to stack), each job gets the idle workers' share of cores as threads; so do the jobs of a
        last round that does not fill the workers (`_share_cores`).
        """
        stage = Stage(job, list(plans), commit, fault_point, then)
        return self.run_stage(stage, share_cores=share_cores)

    def run_stage(self, stage: Stage, *, share_cores: bool = False) -> list:
        """Run ``stage`` (and the stages its results make possible) in one pass over the workers.

        Each result is committed as soon as it and those before it are done, while the other jobs
        run (committing a stage's results after its last job left both cores idle ~0.1 s at each
        stage of a night). A full disk pauses the pipeline; a raw file gone is no fault of the
        job, nor a master it reads gone or changed (retired and made again, `Runner.product_gone`);
        any other failure of a job is counted against the frames its plan names. An error
        of the commit itself (the catalogue) stops the recording: it is raised once the pass's
        jobs have run (those queued still run, their results not recorded; no job is added), and
        what was not recorded is planned again at the next tick. The results come in the order
        of the jobs (`JobRunner.map`), also when one ran again after its worker died. Returns
        what ``stage`` committed (a follow-up stage's are in its own ``committed``)."""
        entries: list[tuple[Stage, Any]] = []  # job i of the pass: its stage and plan
        first = self._queue(stage, entries, share_cores=share_cores)
        if not first:
            return stage.committed
        stored: list[Exception] = []

        def take(i: int, fut: Future) -> list[pool.Job] | None:
            if stored:  # the catalogue failed: nothing more is recorded in this pass
                return None
            owner, plan = entries[i]
            try:
                follow = self._settle(owner, plan, fut)
                return [(follow.job, spec) for spec in self._queue(follow, entries)] if follow is not None else None
            except Exception as exc:  # noqa: BLE001 - raised once the workers are done (an interrupt goes at once)
                stored.append(exc)
                return None

        self.workers.map(stage.job, first, timeout=self.ctx.cfg.workers.job_timeout, on_result=take)
        if stored:
            raise stored[0]
        return stage.committed

    def _queue(self, stage: Stage, entries: list[tuple[Stage, Any]], *, share_cores: bool = False) -> list[Any]:
        """The specs of ``stage``'s plans that fit the workers' memory (`_fit_memory`), with their
        threads (``share_cores``); their plans are appended to ``entries``."""
        specs = [p.spec for p in stage.plans]
        if share_cores:
            specs = self._share_cores(specs)
        plans, specs = self._fit_memory(stage.plans, specs)
        entries += [(stage, p) for p in plans]
        return specs

    def _settle(self, stage: Stage, plan: Any, fut: Future) -> Stage | None:
        """One finished job: its result committed (or its failure dealt with); the stage its
        result makes possible, if any (``stage.then``)."""
        try:
            result = fut.result()
        except DiskFull as exc:
            self.pause(exc)
            self.note(plan.charged, f"paused: disk full ({exc})")
            return None
        except RawGone as exc:  # no fault of the job's other inputs: nobody is charged
            self.missing(exc.sha256, f"{plan.subject}: {exc.detail}")
            return None
        except ProductGone as exc:  # a master it reads, not the job: retired, made again; nobody is charged
            self.product_gone(plan, exc)
            return None
        except Exception as exc:
            message = f"{plan.subject} failed: {_reason(exc)}"
            logger.error("%s", message)
            self.charge(plan.charged, message)
            return None
        faults.point(stage.fault_point, plan.spec.out_path)
        try:
            committed = stage.commit(plan, result)
        except IntegrityError as exc:  # another planner committed the same version first
            logger.warning("%s: another writer committed it first (%s); planned again at the next tick",
                           plan.subject, _first_line(exc))
            return None
        stage.committed.append(committed)
        return stage.then(plan, committed) if stage.then is not None and self.paused is None else None

    def run_side_jobs(self, fn: Callable[[Any], Any], specs: list[Any]) -> list[Any]:
        """Run side jobs (the report's pictures) on the workers: each one's result, or the
        exception it raised, in order."""
        futures = self.workers.map(fn, specs, timeout=self.ctx.cfg.workers.job_timeout)
        return [f.exception() or f.result() for f in futures]

    def _fit_memory(self, plans: Sequence[P], specs: list[Any]) -> tuple[list[P], list[Any]]:
        """The plans whose jobs fit ``workers.memory_limit_mb`` by their estimate (with fewer
        threads if that is what fits), and their specs; the others are refused."""
        limit = int(self.ctx.cfg.workers.memory_limit_mb * 2**20)
        kept: list[P] = []
        fitted: list[Any] = []
        for plan, spec in zip(plans, specs, strict=True):
            fit, need = memory.fitting(spec, limit)
            if fit is None and need is not None:
                self.refuse(plan, need)
                continue
            kept.append(plan)
            fitted.append(fit)
        return kept, fitted

    def _share_cores(self, specs: list[Any]) -> list[Any]:
        """Threads for each job: the jobs that fill every worker run on one each; those of a last,
        incomplete round (or all of them, when there are fewer jobs than workers) share the
        workers that round leaves idle. The pool starts jobs in order, so those come last: the
        scaled night's second rank of masters (a dark and two flats on two workers) had its last
        flat alone on one thread beside an idle core (0.5 s of that night's 6.5)."""
        workers = max(1, self.workers.processes)
        full = len(specs) // workers * workers  # jobs in rounds that occupy every worker
        tail = len(specs) - full
        shared = max(1, workers // tail) if tail else 1
        return [dataclasses.replace(spec, threads=shared) if i >= full and shared > 1 else spec
                for i, spec in enumerate(specs)]

    # ------------------------------------------------------------------ failures
    def charge(self, frame_ids: Sequence[int], message: str) -> None:
        """Count a failed try against frames; at ``ingest.max_tries`` they end ``failed``."""
        with self.ctx.catalog.session() as s:
            for f in frames_by_id(s, frame_ids):
                f.tries += 1
                f.last_error = message
                if f.tries >= self.ctx.cfg.ingest.max_tries:
                    f.state, f.state_reason = FrameState.FAILED, message
                    logger.error("frame %d failed for good after %d tries: %s", f.id, f.tries, message)
                log_event(s, f, "error", message)

    def refuse(self, plan: Plan, need: int) -> None:
        """A job that cannot fit the workers' memory limit is not run, and not tried again: the
        frames it would charge end ``failed`` with the reason (``ccdwatch retry`` once the limit
        is raised); a stack's members keep their state and get the reason. Logged once per job."""
        w = self.ctx.cfg.workers
        then = "restart the daemon" if not plan.charged else "restart it and run `ccdwatch retry`"
        message = memory.refusal(plan.subject, need, limit_mb=w.memory_limit_mb, processes=w.processes, then=then)
        if self._refused.get(plan.subject) == message:
            return
        self._refused[plan.subject] = message
        logger.error("%s", message)
        with self.ctx.catalog.session() as s:
            for f in frames_by_id(s, plan.charged):
                f.state, f.state_reason, f.last_error, f.updated_at = FrameState.FAILED, message, message, utcnow()
                log_event(s, f, "refused", message)
            for f in frames_by_id(s, getattr(plan, "members", ())):
                if f.state == FrameState.CALIBRATED:
                    f.state_reason = message
                f.last_error, f.updated_at = message, utcnow()
                log_event(s, f, "refused", message)

    def missing(self, sha256: str, why: str) -> None:
        """The raw file of a frame is gone: the frame is ``missing`` until the file returns."""
        with self.ctx.catalog.session() as s:
            frame = frame_by_sha256(s, sha256)
            if frame is not None:
                mark_missing(s, frame, why)

    def product_gone(self, plan: Plan, exc: ProductGone) -> None:
        """A master the job reads is gone or changed: it is retired (`gone.product_gone`) and made
        again; the frames the job would charge wait for it, told why, not charged."""
        retired, foreign = gone.product_gone(self.ctx, exc.path, exc.detail)
        if retired:
            self.lost_masters += 1
            message = f"{plan.subject}: {exc.detail}: the master is retired and made again"
        elif foreign:
            message = (f"{plan.subject}: {exc.detail}: a master of site {', '.join(foreign)} (site.share_masters_from) "
                       "that this site cannot read here; it waits until it can, or for a master of its own")
        else:  # retired meanwhile (another job of the pass), or not a master
            message = f"{plan.subject}: {exc.detail}"
        logger.warning("%s", message)
        self.note(plan.charged, message)

    def note(self, frame_ids: Sequence[int], message: str) -> None:
        """Record why frames did not progress, without counting a try."""
        with self.ctx.catalog.session() as s:
            for f in frames_by_id(s, frame_ids):
                f.last_error, f.updated_at = message, utcnow()

    # ------------------------------------------------------------------ disk full
    def pause(self, exc: BaseException, *, where: str = "", what: str = "disk full",
              check: Callable[[], bool] | None = None) -> None:
        """A product or a catalogue row could not be written (no space; the catalogue's write
        lock held by another process; its server gone): stop writing, keep every state, try again
        every ``watch.pause_retry_seconds``, resuming once ``check`` (default: the free-space
        check) passes."""
        if self.paused is None:
            logger.error("pausing: %s%s (%s); nothing is lost, processing resumes by itself",
                         where, _first_line(exc), what)
        self.paused = f"{what} ({where}{_first_line(exc)})"
        self._paused_at = self.ctx.clock()
        self._resume_check = check

    def maybe_resume(self) -> bool:
        """Clear a pause once the retry interval has passed and the space check passes again
        on the products' disk and on the catalogue's."""
        if self.paused is None:
            return True
        if self.ctx.clock() - self._paused_at < self.ctx.cfg.watch.pause_retry_seconds:
            return False
        if self._resume_check is not None and not self._resume_check():
            self._paused_at = self.ctx.clock()
            return False
        for place in self._disks():
            try:
                free = shutil.disk_usage(place).free
            except OSError:
                continue
            if free < self.ctx.min_free:
                self._paused_at = self.ctx.clock()
                return False
        logger.info("resuming after the pause: %s", self.paused)
        self.paused, self._resume_check = None, None
        return True

    def _disks(self) -> list[Path]:
        places = [self.ctx.products]
        db = sqlite_path(self.ctx.catalog.url)
        if db is not None:
            places.append(db.parent)
        return places

    def close(self) -> None:
        self.workers.close()


def _reason(exc: BaseException) -> str:
    """An exception as words: its type and its text (or that it gave none)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no message)"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__

