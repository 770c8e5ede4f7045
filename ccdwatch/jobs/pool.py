"""The workers: a process pool with per-job time limits and per-worker memory limits.

:class:`Workers` wraps a ``concurrent.futures`` process pool: each worker runs under an
data-size limit and a lower CPU priority, each job under a time limit; a worker that dies or
overruns is killed, the pool is rebuilt, and the caller gets a :class:`WorkerFailure` to count
against the file. :func:`make_workers` is the seam: with ``workers.scheduler`` set it gives
:class:`ccdwatch.jobs.cluster.ClusterWorkers`, the same interface (:class:`JobRunner`) over a
Dask cluster, with these local workers as its fallback.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ccdwatch.jobs import forkserver, memory

if TYPE_CHECKING:
    from ccdwatch.config import WorkersConfig

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
M_MMAP_THRESHOLD = -3  # <malloc.h>
M_TRIM_THRESHOLD = -1  # <malloc.h>
#: glibc's default M_TRIM_THRESHOLD: free memory above it at the heap's top goes back at once.
DEFAULT_TRIM = 128 << 10
#: How long a first job waits for the fork server's imports before it is handed over regardless, s.
SERVER_START_LIMIT = 120.0


#: A job: its function and the spec it is called with.
Job = tuple[Callable[[Any], Any], Any]
#: `JobRunner.map`'s callback: job ``i``'s finished future -> the jobs it makes possible (or None).
OnResult = Callable[[int, Future], "Sequence[Job] | None"]


class JobRunner(Protocol):
    """What the pipeline needs of its workers, local or on a cluster."""

    heartbeat: Callable[[], None] | None
    should_stop: Callable[[], bool] | None

    @property
    def processes(self) -> int:
        """How many jobs run at once."""
        ...

    def run(self, fn: Callable[[Any], Any], spec: Any, *, timeout: float | None) -> Any: ...

    def map(self, fn: Callable[[Any], Any], specs: Iterable[Any], *, timeout: float | None,
            on_result: OnResult | None = None) -> list[Future]:
        """Run ``fn`` on every spec; each returned future is done (result or exception).
        ``on_result(i, future)``, if given, is called in this thread once job ``i`` is done (the local
        workers: in order, each as soon as it and those before it are), so that the caller's work on
        one result overlaps the jobs still running; it must not raise. It may return more jobs
        (``(fn, spec)`` pairs) that this result made possible: they join this map after the others
        (job ``i`` of the map: the specs, then these in the order they came), their futures are
        returned too and ``on_result`` is called for them as well."""
        ...

    def close(self) -> None: ...


def warm_up(cfg: WorkersConfig) -> None:
    """Start the local workers' fork server now, its imports overlapping the caller's work.

    Only worth it when jobs will follow: the live daemon calls it first thing, ``watch --once``
    when its incoming folder holds frames changed since the catalogue last was
    (`config.new_files_likely`), or files still settling (a run with nothing to do never starts
    the server, whose ~1 s of imports would otherwise compete with the run's own start-up for
    the CPU). Without it the server starts with the pool, at the first job.
    """
    if cfg.processes > 0 and not cfg.scheduler:
        forkserver.start()


def make_workers(cfg: WorkersConfig, *, incoming: Path, products: Path) -> JobRunner:
    """The local process pool, or with ``cfg.scheduler`` the Dask cluster (falling back to the
    local pool while the scheduler cannot be reached)."""
    local = Workers(processes=cfg.processes, memory_limit=int(cfg.memory_limit_mb * 2**20), nice=cfg.nice)
    if not cfg.scheduler:
        return local
    from ccdwatch.jobs.cluster import ClusterWorkers

    return ClusterWorkers(cfg.scheduler, local=local, incoming=incoming, products=products,
                          retry=cfg.scheduler_retry)


class WorkerFailure(RuntimeError):
    """A job whose worker died or overran its time limit."""


class Stopping(BaseException):
    """The daemon was asked to stop while waiting for a job; the job is abandoned, uncounted.

    A BaseException (like KeyboardInterrupt) so that no job-error handler mistakes it for a
    failure of the file being processed."""


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent, the fork server, exits (prctl
    PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent already went before the call took effect
            os._exit(1)
    except (OSError, AttributeError) as exc:
        logger.warning("cannot tie the worker's life to the fork server's: %s", exc)


def die_with_daemon(daemon: int) -> None:
    """End this worker when the daemon (process ``daemon``) exits, whoever its parent is.

    A worker's parent is the fork server, not the daemon, and every worker holds the write end
    of the server's "alive" pipe and of the pool's call queue: a daemon killed outside systemd
    (no control group to clean up) left the server and the workers, warm with a night's numerics
    (~400 MB), waiting on each other for ever. A thread here waits on a pidfd of the daemon and
    exits the worker when it fires; the server, its last client gone, then exits by itself."""
    def watch() -> None:
        try:
            fd = os.pidfd_open(daemon)
        except ProcessLookupError:
            os._exit(1)
        except (OSError, AttributeError):  # no pidfds (old kernel, other OS): look every second
            while True:
                time.sleep(1.0)
                try:
                    os.kill(daemon, 0)
                except ProcessLookupError:
                    os._exit(1)
                except OSError:
                    pass
        select.select([fd], [], [])  # readable once the process has exited
        os._exit(1)

    threading.Thread(target=watch, name="ccdwatch-die-with-daemon", daemon=True).start()


#: The mmap threshold of jobs on frames up to `SMALL_FRAME` and of the light jobs (`heap_for`): a
#: 2k float64 plane (32 MiB) comes from the heap, a float32 frame of 61 Mpix does not.
REUSE_THRESHOLD = 64 << 20
#: float32 bytes of the largest frame (16 Mpix) whose masters and stacks also reuse the heap.
SMALL_FRAME = 64 << 20
#: Jobs run many times a night, each on one frame: they reuse the heap whatever the frame size.
REUSING_JOBS = frozenset({"ingest", "calibrate_light"})
#: Their trim threshold: free memory at the heap's top is kept up to this for the next job.
REUSE_TRIM = 256 << 20
#: Jobs that keep `REUSE_TRIM` on frames up to `SMALL_FRAME` too: a stack frees and takes again a
#: strip's working set (~100 MiB at 2k for 40 frames) per strip and thread, which glibc's 128 KiB
#: trim gave back to the system every time (2k-matched stack job: 517k vs 225-278k page faults,
#: 13.1-13.6 vs 11.2-12.2 s of CPU, peak RSS 585-595 vs 644-668 MiB; within `memory.stack`, which
#: still counts the whole frames the stack no longer holds).
KEEPING_STACKS = frozenset({"stack_group"})


def give_back_freed_memory(threshold: int = 1 << 20, trim: int = DEFAULT_TRIM) -> None:
    """Have glibc return every block of ``threshold`` bytes or more to the system when it is freed.

    By default its mmap threshold rises to the size of each large block freed (up to 32 MiB), and
    from then on freed strips and temporaries stay in the heap and the threads' arenas, counted by
    RLIMIT_DATA: after a 61 Mpix master bias with 2 threads a worker kept ~180 MiB more than
    before it (400 -> 578 MiB VmData; with this, 461), so the next calibration, estimated to fit
    `memory.WORKER_BASE` + its need within workers.memory_limit_mb, ran out of memory on every try
    in the live daemon. Setting the threshold turns the rise off."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
        libc.mallopt(M_TRIM_THRESHOLD, trim)  # glibc's default stays fixed once the above is set
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _small_frames(spec: Any) -> bool:
    """Whether a job's frames (its spec's ``shape``; unknown counts as small) are up to `SMALL_FRAME`."""
    size = memory.FrameSize.of(getattr(spec, "shape", None))
    return size is None or size.f32 <= SMALL_FRAME


@contextmanager
def keeping_freed_memory(spec: Any) -> Iterator[None]:
    """Within this block, a master job on frames up to `SMALL_FRAME` keeps up to `REUSE_TRIM` of
    freed memory at the heap's top, as the lights and stacks do all the time; on leaving it, the
    job's setting (`heap_for`) is back and the freed memory goes back to the system.

    For a master's combination: each strip frees and takes again its temporaries (~60 MiB for 10
    frames of 2k), which glibc's 128 KiB trim threshold gave back to the system after every strip,
    to be faulted in and zeroed again (a 2k master bias of 10 frames: 107-122k page faults, 55-61k
    with this; 0.79-0.86 s -> 0.60-0.70 s). Only the combination: kept over the whole job, the
    blocks the preparation freed were not reused by the combination, and the peak grew by ~50 MiB,
    which the job's estimate (`memory.master`) does not count; here it grows by 12-19 MiB."""
    if not _small_frames(spec):
        yield
        return
    give_back_freed_memory(REUSE_THRESHOLD, trim=REUSE_TRIM)
    try:
        yield
    finally:
        give_back_freed_memory(REUSE_THRESHOLD, trim=DEFAULT_TRIM)
        memory.malloc_trim()


def heap_for(job: str, spec: Any) -> None:
    """Set the allocator for the job about to run in this worker.

    A block above the mmap threshold costs its pages' faults and the kernel's zeroing at each
    allocation: array arithmetic on 2k frames ran ~1.4x slower with the 1 MiB threshold than
    with the heap, and a light's calibration and QA (~30 frame-sized temporaries) ~1.6x
    (benchmarks.stages under MALLOC_MMAP_THRESHOLD_ 1 MiB vs 64 MiB: 384/287 vs 208/181 ms a
    light). So the jobs take blocks below `REUSE_THRESHOLD` from the heap, which keeps them for
    the next job: what stays is one job's working set of smaller blocks. The light and ingest
    jobs also keep up to `REUSE_TRIM` free at the heap's top (with glibc's 128 KiB it went back
    to the system after each job and was faulted in again: OpenCV's 3x3 filter of a light 16 vs
    1.8 ms, the job in the daemon 231 vs 218 ms, medians of 40 inline, two pairs of runs), and
    so do stacks of small frames (`KEEPING_STACKS`); the masters only while they combine
    (`keeping_freed_memory`): kept through the whole job, their peak would grow past their
    estimates. Masters and stacks of frames above `SMALL_FRAME` keep the 1 MiB threshold (their
    strips and temporaries are what a 61 Mpix night's workers kept, see `give_back_freed_memory`);
    a worker that holds too much before a job is replaced all the same (`memory.room_for`)."""
    small = _small_frames(spec)
    reusing = job in REUSING_JOBS
    keep = reusing or (small and job in KEEPING_STACKS)
    give_back_freed_memory(REUSE_THRESHOLD if small or reusing else 1 << 20,
                           trim=REUSE_TRIM if keep else DEFAULT_TRIM)


def _import_all(names: Iterable[str]) -> None:
    """Import ``names`` (`Workers.meanwhile`); one that fails is imported again, and reports its
    error, where it is used."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001
            logger.debug("importing %s ahead failed", name, exc_info=True)


def _worker_init(memory_limit: int, nice: int, daemon: int) -> None:
    # Ctrl-C at a terminal reaches the whole process group: the daemon stops its workers itself.
    # Left to Python, a worker's job ended with KeyboardInterrupt, which came back through its
    # future and ended the daemon with a traceback before its own stop could act.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # and the strips a stack forks from it
    die_with_parent()
    die_with_daemon(daemon)
    give_back_freed_memory()
    # Only the daemon's own loop speaks to systemd.
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(var, None)
    if memory_limit > 0:
        # RLIMIT_DATA (heap and private writable mappings: every array) rather than RLIMIT_AS:
        # the address space also counts shared libraries (~0.7 GiB before any work) and the
        # read-only memory maps of scratch files, which a large master or stack is built through
        # precisely so that they need not fit in memory.
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
        except (ValueError, OSError) as exc:  # e.g. a lower hard limit already in force
            logger.warning("cannot limit worker memory to %d bytes: %s", memory_limit, exc)
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    for var in forkserver.ONE_THREAD:  # spawn (no fork server): before the job loads numpy
        os.environ.setdefault(var, "1")
    import cv2  # already loaded by the fork server (ccdwatch.stack)

    from ccdwatch.jobs import fanout

    cv2.setNumThreads(1)  # parallelism is the pool's: `workers.processes`, no more
    fanout.allow()  # one thread per library: a job's strips may run in forked children


@dataclass
class Workers:
    """A process pool with per-job time limits and per-worker memory limits.

    ``processes=0`` runs every job inline in the calling process (no isolation): for debugging
    and for tests that monkeypatch job functions.
    """

    processes: int = 1
    memory_limit: int = 4 << 30
    nice: int = 5
    heartbeat: Callable[[], None] | None = None
    should_stop: Callable[[], bool] | None = None
    #: Modules the caller will need once results come back, imported in a thread while it waits
    #: for the fork server's own imports (`_wait_for_server`), the one time it has nothing to do.
    meanwhile: tuple[str, ...] = ()
    _pool: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = forkserver.context()
            self._pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=ctx,
                                             initializer=_worker_init,
                                             initargs=(self.memory_limit, self.nice, os.getpid()))
        return self._pool

    def _reset(self) -> None:
        """Kill every worker (a hung one cannot be cancelled) and start afresh on next use."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):  # no public API for this
            try:
                proc.kill()
            except Exception:  # noqa: BLE001 - already gone
                pass
        pool.shutdown(wait=False, cancel_futures=True)

    def run(self, fn: Callable[[Any], Any], spec: Any, *, timeout: float | None) -> Any:
        return self.map(fn, [spec], timeout=timeout)[0].result()

    def map(self, fn: Callable[[Any], Any], specs: Iterable[Any], *, timeout: float | None,
            on_result: OnResult | None = None) -> list[Future]:
        """Run ``fn`` on every spec; each returned future is done (result or exception).
        ``on_result`` as `JobRunner.map`: called as each job is done, while the others run; the
        jobs it returns are submitted at once, behind those already queued.

        A job that overruns ``timeout`` or whose worker dies ends with :class:`WorkerFailure`.
        The pool is then rebuilt; the other unfinished jobs run again, one at a time, so that a
        poison job cannot take innocent ones down with it (a dead pool does not say who died).
        """
        jobs: list[Job] = [(fn, spec) for spec in specs]
        results: list[Future | None] = [None] * len(jobs)
        handed = [0]  # the next job to hand over: every one before it is

        def settle(i: int, fut: Future) -> list[int]:
            """Job ``i``'s final future; hands over, in order, every final job this one unblocks
            (after a worker died, or a job was sent to fresh workers, the jobs after it finish
            first: their results wait, for the caller commits in order and reads "everything
            before this is committed" into it); the indices of the jobs their results added."""
            results[i] = fut
            added: list[int] = []
            while handed[0] < len(results) and (final := results[handed[0]]) is not None:
                k = handed[0]
                handed[0] += 1
                more = on_result(k, final) if on_result is not None else None
                if more:
                    jobs.extend(more)
                    results.extend([None] * len(more))
                    added += range(len(jobs) - len(more), len(jobs))
            return added

        try:
            return self._map(jobs, results, settle, timeout)
        except BaseException:  # an interrupt, or the caller's on_result: its jobs are not waited for
            self._reset()
            raise

    def _map(self, jobs: list[Job], results: list[Future | None], settle: Callable[[int, Future], list[int]],
             timeout: float | None) -> list[Future]:
        """`map`'s loop over ``jobs`` (which ``settle`` extends with the jobs results add)."""
        if self.processes <= 0:
            for i, (job_fn, spec) in enumerate(jobs):  # the jobs a result adds are run in turn
                settle(i, _inline(job_fn, spec))
            return [r for r in results if r is not None]
        queue = list(range(len(jobs)))
        isolate = False
        later: list[int] = []  # jobs added while the suspects of a dead pool run one at a time
        refreshed: set[int] = set()  # jobs already run again on fresh workers (memory.WorkerFull)
        while queue or later:
            if not queue:  # the suspects are done: what their results added runs side by side again
                queue, later, isolate = later, [], False
            batch = queue[:1] if isolate else queue
            queue = queue[len(batch):]
            self._wait_for_server()
            futs = self._submit(jobs, batch)
            full: list[int] = []
            for i in batch:  # grows with the jobs that results add, submitted as they come
                fut, verdict = self._finished(jobs[i], futs[i], timeout, again=i in refreshed, batch=len(batch))
                added = settle(i, fut) if fut is not None else []
                if added and isolate:
                    later += added
                elif added:
                    futs.update(self._submit(jobs, added))
                    batch += added
                if verdict == "full":
                    full.append(i)
                if verdict in ("done", "full"):
                    continue
                isolate = isolate or verdict == "isolate"
                # The pool is dead or hung: keep what finished, rerun the rest.
                for j in list(batch):
                    f = futs[j]
                    if results[j] is None and f.done() and not f.cancelled() and not _cut_short(f):
                        later += settle(j, f)  # no suspects: they ran to their end, result or error
                self._reset()
                queue = [j for j in batch if results[j] is None] + queue
                break
            else:
                if full:  # freed memory kept by the workers' heaps: fresh workers, no try counted
                    logger.info("%d %s job(s) need more memory than their worker has left after earlier jobs: "
                                "starting fresh workers (%s)", len(full), jobs[full[0]][0].__name__,
                                futs[full[0]].exception())
                    refreshed.update(full)
                    self._reset()
                    queue = full + queue
        return [r for r in results if r is not None]

    def _finished(self, job: Job, fut: Future, timeout: float | None, *, again: bool,
                  batch: int) -> tuple[Future | None, str]:
        """Wait for one job of a batch: its final future (None if it is to run again) and what
        follows: ``"done"``; ``"full"`` (memory.WorkerFull: to run again on fresh workers, unless it
        already did, ``again``); or, the pool being dead or hung, ``"dead"``, or ``"isolate"`` when
        a worker died with other jobs of the ``batch`` in flight (the unfinished ones then run one at a time)."""
        fn, spec = job
        try:
            self._wait(fut, timeout)
        except FutureTimeout:
            logger.error("%s on %s overran %g s: killing the workers", fn.__name__, _subject(spec), timeout)
            return _failed(WorkerFailure(f"{fn.__name__} overran its time limit of {timeout:g} s")), "dead"
        except BrokenProcessPool:
            if batch > 1:
                logger.warning("a worker died (crash, or over its memory limit) while %d %s jobs ran: "
                               "running the unfinished ones one at a time", batch, fn.__name__)
                return None, "isolate"
            logger.error("the worker died during %s on %s", fn.__name__, _subject(spec))
            return _failed(WorkerFailure(
                f"the worker died (crash, or over its memory limit) during {fn.__name__}")), "dead"
        except memory.WorkerFull:  # even fresh workers too full (``again``): the job's own error
            return (fut, "done") if again else (None, "full")
        except Exception:  # noqa: BLE001 - the job's own error, delivered through the future
            pass
        return fut, "done"

    def _submit(self, jobs: list[Job], batch: list[int]) -> dict[int, Future]:
        """Submit the ``batch`` of jobs; on fresh workers if one died while idle.

        A worker killed between jobs (the OOM killer, an operator's kill) breaks the pool with no
        job in flight, and ``submit`` itself then raises: no job of this batch is to blame, so
        the pool is replaced and the batch submitted again (not counted as a failure of any job)."""
        try:
            return {i: self._executor().submit(jobs[i][0], jobs[i][1]) for i in batch}
        except BrokenProcessPool:
            logger.warning("a worker died between jobs (killed, or over its memory limit): starting fresh workers")
            self._reset()
            self._wait_for_server()
            return {i: self._executor().submit(jobs[i][0], jobs[i][1]) for i in batch}

    def _wait_for_server(self) -> None:
        """Wait until the fork server has done its imports (`forkserver.ready`), looking at a
        stop request every 50 ms and feeding the watchdog every second; after
        `SERVER_START_LIMIT` s go on regardless (a server that died is started again by the pool)."""
        self._executor()  # names the server's ready file (`forkserver.context`)
        if forkserver.ready():
            return
        forkserver.start()
        if self.meanwhile:
            names, self.meanwhile = self.meanwhile, ()
            threading.Thread(target=_import_all, args=(names,), name="imports", daemon=True).start()
        t0 = last = time.monotonic()
        while not forkserver.ready() and time.monotonic() - t0 < SERVER_START_LIMIT:
            self._stop_if_asked()
            if self.heartbeat is not None and time.monotonic() - last >= 1.0:
                self.heartbeat()
                last = time.monotonic()
            time.sleep(0.01)

    def _stop_if_asked(self) -> None:
        if self.should_stop is not None and self.should_stop():
            logger.info("stopping: abandoning the jobs in progress (they will be redone at start-up)")
            self._reset()
            raise Stopping()

    def _wait(self, fut: Future, timeout: float | None) -> None:
        """Wait for a job in short slices, calling ``heartbeat`` while it is within its limit:
        the daemon stays 'healthy' for systemd's watchdog while a worker makes progress.

        A stop request is looked at before every wait, not only when a slice runs out: a batch
        of many short jobs (a catch-up's ingests, a night's calibrations) would otherwise hold a
        SIGTERM until the whole batch is done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._stop_if_asked()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise FutureTimeout()
            try:
                fut.result(timeout=1.0 if remaining is None else min(1.0, remaining))
                return
            except FutureTimeout:
                if self.heartbeat is not None:
                    self.heartbeat()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _subject(spec: Any) -> str:
    for attr in ("path", "out_path"):
        if hasattr(spec, attr):
            return str(getattr(spec, attr))
    return type(spec).__name__


def _cut_short(fut: Future) -> bool:
    """Whether a done job did not run to its own end: its pool broke under it, or its worker was
    too full to run it (it runs again; a job that ended with its own error does not)."""
    return isinstance(fut.exception(), (BrokenProcessPool, memory.WorkerFull))


def _failed(exc: BaseException) -> Future:
    fut: Future = Future()
    fut.set_exception(exc)
    return fut


def _inline(fn: Callable[[Any], Any], spec: Any) -> Future:
    fut: Future = Future()
    try:
        fut.set_result(fn(spec))
    except Exception as exc:  # noqa: BLE001 - delivered through the future
        fut.set_exception(exc)
    return fut
