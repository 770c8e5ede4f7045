"""Jobs on a Dask cluster: the local pool's interface (``map``, ``run``, ``close``) over
``distributed.Client.submit``.

The jobs are already pure (specs in, files out, no catalogue), so they run unchanged on the
cluster's workers; the daemon keeps every catalogue write. What the cluster adds, and how:

* **paths**: workers must see the incoming and products directories under the same paths (a
  shared filesystem). At connection a tiny task on every worker stats them and reads back a
  token the daemon wrote under products; a worker that cannot is named, with the path and the
  reason, and the daemon refuses to start (:class:`~ccdwatch.config.ConfigError`).
* **a worker lost mid-job**: the scheduler resubmits its tasks to other workers (Dask's own
  ``distributed.scheduler.allowed-failures``, 3 by default); a task that kills that many workers
  ends ``KilledWorker``, which counts against its file like a crashed local worker.
* **a job over its time limit**: its worker is restarted (the only way to stop a running task)
  and the job fails with :class:`~ccdwatch.jobs.pool.WorkerFailure`.
* **the scheduler unreachable** (at start-up or later): jobs run on the local worker processes,
  with a warning, and the scheduler is tried again every ``workers.scheduler_retry`` seconds;
  jobs in flight when it went are run again locally. A night never waits for a cluster.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ccdwatch.config import ConfigError
from ccdwatch.jobs.pool import Job, OnResult, Stopping, WorkerFailure, Workers

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
#: How long the daemon waits at start-up for the first worker to join the scheduler.
WORKER_WAIT_S = 30
PROBE_NAME = ".ccdwatch-probe"


def probe_paths(incoming: str, products: str, token: str) -> list[str]:
    """Run on a worker: what is wrong with its view of the daemon's directories (empty: nothing)."""
    problems = []
    for path, write in ((incoming, False), (products, True)):
        try:
            os.stat(path)
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
            continue
        if not os.access(path, os.R_OK | os.X_OK) or (write and not os.access(path, os.W_OK)):
            problems.append(f"{path}: not {'writable' if write else 'readable'} by the worker's user")
    if not problems:
        try:
            seen = Path(products, PROBE_NAME).read_text()
        except OSError as exc:
            seen = f"unreadable ({exc.strerror})"
        if seen != token:
            problems.append(f"{products} is another directory than the daemon's (a token it wrote there is {seen!r}"
                            f" on the worker): mount the same shared filesystem at the same path")
    return problems


def check_paths(client: Any, incoming: Path, products: Path) -> None:
    """Make sure every worker of ``client`` sees ``incoming`` and ``products`` as the daemon does.

    Raises
    ------
    ConfigError
        Naming each worker that does not, with the path and the reason.
    """
    token = secrets.token_hex(8)
    marker = products / PROBE_NAME
    products.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
    try:
        answers = client.run(probe_paths, str(incoming), str(products), token)
    finally:
        marker.unlink(missing_ok=True)
    bad = {worker: problems for worker, problems in answers.items() if problems}
    if bad:
        lines = "; ".join(f"worker {w}: {', '.join(p)}" for w, p in sorted(bad.items()))
        raise ConfigError(f"the Dask workers must see the incoming and products directories under the same paths "
                          f"as the daemon (a shared filesystem): {lines}")


class ClusterWorkers:
    """Runs jobs on a Dask cluster, falling back to local worker processes when it is unreachable."""

    def __init__(self, address: str, *, local: Workers, incoming: Path, products: Path, retry: float) -> None:
        self.address = address
        self.local = local
        self.incoming, self.products = incoming, products
        self.retry = retry
        self._client: Any = None
        self._next_try = 0.0
        self._connect(first=True)

    # The daemon's loop hooks, shared with the local fallback pool.
    @property
    def heartbeat(self) -> Callable[[], None] | None:
        return self.local.heartbeat

    @heartbeat.setter
    def heartbeat(self, fn: Callable[[], None] | None) -> None:
        self.local.heartbeat = fn

    @property
    def should_stop(self) -> Callable[[], bool] | None:
        return self.local.should_stop

    @should_stop.setter
    def should_stop(self, fn: Callable[[], bool] | None) -> None:
        self.local.should_stop = fn

    @property
    def processes(self) -> int:
        """Job slots: the cluster's threads when connected, else the local processes."""
        if self._client is not None and self._client.status == "running":
            return max(1, sum(self._client.nthreads().values()))
        return self.local.processes

    def _connect(self, *, first: bool = False) -> Any:
        """The connected client, or None (then the local workers run the jobs)."""
        if self._client is not None and self._client.status == "running":
            return self._client
        if time.monotonic() < self._next_try:
            return None
        self._next_try = time.monotonic() + self.retry
        if self._client is not None:  # lost: start afresh
            self.close_client()
        from distributed import Client

        try:
            client = Client(self.address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (OSError, TimeoutError) as exc:
            logger.warning("the Dask scheduler %s cannot be used (%s): jobs run on %d local worker processes; "
                           "trying it again in %g s", self.address, exc or type(exc).__name__, self.local.processes,
                           self.retry)
            return None
        try:
            check_paths(client, self.incoming, self.products)
        except ConfigError:
            client.close()
            if first:
                raise
            logger.exception("the Dask workers cannot be used")
            return None
        self._client = client
        logger.info("jobs run on the Dask cluster at %s (%d workers, %d threads)", self.address,
                    len(client.nthreads()), sum(client.nthreads().values()))
        return client

    def run(self, fn: Callable[[Any], Any], spec: Any, *, timeout: float | None) -> Any:
        return self.map(fn, [spec], timeout=timeout)[0].result()

    def map(self, fn: Callable[[Any], Any], specs: Iterable[Any], *, timeout: float | None,
            on_result: OnResult | None = None) -> list[Future]:
        """Run ``fn`` on every spec on the cluster; each returned future is done (result or exception).
        ``on_result`` (`ccdwatch.jobs.pool.JobRunner.map`) is called for each once all are done; the
        jobs it returns run as the next round.

        The time limit is per job: the batch may take ``timeout`` x (its rounds over the
        cluster's threads). Jobs cut off by a lost scheduler run again on the local workers.
        """
        jobs: list[Job] = [(fn, spec) for spec in specs]
        client = self._connect()
        if client is None or not jobs:
            return self.local.map(fn, [spec for _, spec in jobs], timeout=timeout, on_result=on_result)
        done: list[Future] = []
        while len(done) < len(jobs):
            first = len(done)
            finished = self._round(client, jobs[first:], timeout)
            done += finished
            if on_result is not None:
                for i, fut in enumerate(finished, start=first):
                    jobs += on_result(i, fut) or []
            if len(done) < len(jobs):  # a next round (the next map connects on its own)
                client = self._connect() or client  # a lost scheduler: its next round runs locally
        return done

    def _round(self, client: Any, jobs: list[Job], timeout: float | None) -> list[Future]:
        """One round of jobs on the cluster, those a lost scheduler cut off run again locally."""
        if client.status != "running":
            return self._locally(jobs, timeout)
        futures = [client.submit(f, spec, pure=False) for f, spec in jobs]
        deadline = None if timeout is None else time.monotonic() + timeout * math.ceil(len(jobs) / self.processes)
        self._wait(client, futures, deadline)
        results: list[Future | None] = [self._outcome(f, fut) for (f, _), fut in zip(jobs, futures, strict=True)]
        lost = [i for i, r in enumerate(results) if r is None]
        if lost:
            logger.warning("the Dask scheduler %s was lost with %d %s job(s) in flight: running them locally",
                           self.address, len(lost), "/".join(sorted({jobs[i][0].__name__ for i in lost})))
            for i, fut in zip(lost, self._locally([jobs[i] for i in lost], timeout), strict=True):
                results[i] = fut
        return [r for r in results if r is not None]

    def _locally(self, jobs: list[Job], timeout: float | None) -> list[Future]:
        """``jobs`` on the local workers, each run of one function as one map (side by side)."""
        out: list[Future] = []
        for fn, run in itertools.groupby(jobs, key=lambda job: job[0]):
            out += self.local.map(fn, [spec for _, spec in run], timeout=timeout)
        return out

    def _wait(self, client: Any, futures: Sequence[Any], deadline: float | None) -> None:
        """Wait in short slices (the daemon's heartbeat and stop requests go on); at the deadline
        restart the workers still running these jobs, and cancel them."""
        pending = [f for f in futures if not f.done()]
        while pending:
            try:  # (distributed.wait would need a default client; this one is not)
                pending[0].result(timeout=1.0)
            except KeyboardInterrupt:  # Ctrl-C (`reprocess` on a terminal): the cluster drops the jobs too
                client.cancel(pending)
                raise
            except BaseException:  # noqa: BLE001 - a time-out, a cancellation, or the job's own error: see _outcome
                pass
            pending = [f for f in pending if not f.done()]
            if self.should_stop is not None and self.should_stop():
                client.cancel(pending)
                raise Stopping()
            if self.heartbeat is not None:
                self.heartbeat()
            if client.status != "running":
                return
            if pending and deadline is not None and time.monotonic() > deadline:
                self._kill(client, pending)
                return

    def _kill(self, client: Any, overdue: Sequence[Any]) -> None:
        keys = {f.key for f in overdue}
        busy = [w for w, ks in client.processing().items() if keys & set(ks)]
        logger.error("%d job(s) overran their time limit: restarting Dask workers %s", len(overdue), busy)
        client.cancel(list(overdue), force=True)
        if busy:
            try:
                client.restart_workers(busy)
            except Exception as exc:  # noqa: BLE001 - a worker may already be gone
                logger.warning("could not restart %s: %s", busy, exc)

    def _outcome(self, fn: Callable[[Any], Any], fut: Any) -> Future | None:
        """The cluster future as a done ``concurrent.futures`` one; None if the scheduler lost it."""
        from distributed import KilledWorker

        out: Future = Future()
        status = fut.status
        if status == "finished":
            out.set_result(fut.result())
        elif status == "error":
            exc = fut.exception()
            if isinstance(exc, KilledWorker):
                exc = WorkerFailure(f"{fn.__name__} killed the Dask workers it ran on ({exc})")
            out.set_exception(exc)
        elif status == "cancelled" and self._client is not None and self._client.status == "running":
            out.set_exception(WorkerFailure(f"{fn.__name__} overran its time limit on the Dask cluster"))
        else:
            return None
        return out

    def close_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a client whose scheduler is gone
                pass
            self._client = None

    def close(self) -> None:
        self.close_client()
        self.local.close()
