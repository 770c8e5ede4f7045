"""The multiprocessing context of the workers, and an early start of their fork server.

Kept apart from `ccdwatch.jobs.tasks` (which imports numpy, astropy, sep, OpenCV...) so that the
daemon can start the fork server before it imports any of that itself: the server's imports
then run on the other core while the daemon loads, opens the catalogue and scans.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Iterator
from contextlib import contextmanager

#: What the fork server imports once, so that every worker forked from it starts warm
#: (numpy, astropy, sep, OpenCV; matplotlib and the report's pictures, whose records need no
#: catalogue, so no SQLAlchemy: ~0.4 s less; astropy.table, which every product's table HDU
#: imports: ~0.4 s in each worker's first job). No SciPy: alignment finds its neighbours with
#: `ccdwatch.neighbours` (scipy.spatial was ~0.2 s of this list).
WARM = ("ccdwatch.jobs.tasks", "ccdwatch.previews", "ccdwatch.report.figures", "astropy.table")
#: One thread per numeric library: the pool's processes are the parallelism (`workers.processes`).
#: Set before the fork server loads numpy, which reads them once: set in the workers, as they were,
#: they came too late, and OpenBLAS's threads spun idle in the server through its imports and in
#: the daemon after its first planning (~0.13 s of CPU a night on 2 cores, perf).
ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: The fork server's preload: one module that imports `WARM` through `warm_imports`.
PRELOAD = ["ccdwatch.jobs._preload"]
#: Names the file the fork server creates once its imports are done (set by `context`).
READY_ENV = "CCDWATCH_FORKSERVER_READY"
_ready_file: str | None = None  # this process's server's (`context`)
_ready = False


@contextmanager
def frozen_imports() -> Iterator[None]:
    """Run the block (imports) with the cyclic collector off, then freeze what it loaded.

    While a large import graph loads, the collector walks the growing heap again and again.
    Freezing afterwards (`gc.freeze`, as its documentation advises before forking) keeps later
    collections - and a forked worker's, which would copy the pages they touch - from walking
    those objects again. The daemon's own imports (SQLAlchemy, the catalogue): ~30 ms less of
    every command's start (best of 6: 309-327 against 337-370 ms)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def warm_imports() -> None:
    """Import `WARM` (`frozen_imports`): the fork server's preload."""
    with frozen_imports():
        for name in WARM:
            try:
                importlib.import_module(name)
            except ImportError:  # as multiprocessing's own preload: the worker's job reports it
                pass


def mark_ready() -> None:
    """In the fork server, once its imports are done: say so (see `ready`)."""
    path = os.environ.get(READY_ENV)
    if path:
        try:
            with open(path, "w"):
                pass
        except OSError:  # the daemon then waits for it a while, as it did before this existed
            pass


def ready() -> bool:
    """Has this process's fork server finished its imports (True where there is none: no
    `context` yet, or spawn)?

    Starting a worker waits for the server's answer, and the server answers only once its imports
    are done: ~1 s on an idle machine, 3-7 s seen on a loaded one. That wait is a blocking read a
    signal does not end (PEP 475), so a SIGTERM right after start-up was held that long; the pool
    waits for this instead, in slices that look at a stop request (`pool.Workers.map`)."""
    global _ready
    if not _ready:
        _ready = _ready_file is None or os.path.exists(_ready_file)
    return _ready


#: Longest temporary directory the fork server's socket fits under: a socket's path holds 107 bytes,
#: and multiprocessing puts it at ``<temp dir>/pymp-XXXXXXXX/listener-XXXXXXXX``.
SOCKET_DIR_MAX = 107 - len("/pymp-12345678/listener-12345678")


def _short_temp_dir() -> None:
    """Give multiprocessing a temporary directory its fork server's socket fits under when
    TMPDIR is too long for one (Python 3.11 has no fallback: the daemon died at start-up with
    "AF_UNIX path too long"): a ``pymp-*`` directory in /tmp (or /var/tmp), removed at exit as
    its own would be."""
    import tempfile
    from multiprocessing import process, util

    made = getattr(process.current_process(), "_config", {}).get("tempdir")  # util.get_temp_dir's own
    if made is not None or len(tempfile.gettempdir()) <= SOCKET_DIR_MAX:
        return
    base = next((d for d in ("/tmp", "/var/tmp") if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)), None)
    if base is None:
        return
    saved = tempfile.tempdir
    tempfile.tempdir = base
    try:
        util.get_temp_dir()  # made, and removed at exit, by multiprocessing itself
    finally:
        tempfile.tempdir = saved


def context() -> multiprocessing.context.BaseContext:
    """Fork server on POSIX (workers fork from a warm, single-threaded server), spawn elsewhere.

    The server inherits the environment: `READY_ENV` names a file in this process's own
    multiprocessing temp directory (removed at exit), never one inherited from a parent; and
    `ONE_THREAD` (unless already set), which this process's own numpy then follows too."""
    global _ready_file
    for var in ONE_THREAD:
        os.environ.setdefault(var, "1")
    ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    if os.name == "posix":
        ctx.set_forkserver_preload(PRELOAD)
        _short_temp_dir()
        if _ready_file is None:
            from multiprocessing import util

            _ready_file = os.path.join(util.get_temp_dir(), "ccdwatch-forkserver-ready")
        os.environ[READY_ENV] = _ready_file
    return ctx


def start() -> None:
    """Start the fork server now, without waiting for its imports."""
    if os.name == "posix":
        from multiprocessing import forkserver

        context()
        forkserver.ensure_running()
