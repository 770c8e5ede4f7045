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

#: What the fork server imports once, so that every worker forked from it starts warm
#: (numpy, astropy, sep, OpenCV; matplotlib and the report's pictures, whose records need no
#: catalogue, so no SQLAlchemy: ~0.4 s less; astropy.table, which every product's table HDU
#: imports: ~0.4 s in each worker's first job). No SciPy: alignment finds its neighbours with
#: `ccdwatch.neighbours` (scipy.spatial was ~0.2 s of this list).
WARM = ("ccdwatch.jobs.tasks", "ccdwatch.previews", "ccdwatch.report.figures", "astropy.table")
#: The fork server's preload: one module that imports `WARM` through `warm_imports`.
PRELOAD = ["ccdwatch.jobs._preload"]
#: Names the file the fork server creates once its imports are done (set by `context`).
READY_ENV = "CCDWATCH_FORKSERVER_READY"
_ready_file: str | None = None  # this process's server's (`context`)
_ready = False


def warm_imports() -> None:
    """Import `WARM` with the cyclic collector off, then freeze what was imported.

    While a large import graph loads, the collector walks the growing heap again and again
    Freezing afterwards (`gc.freeze`, as its documentation
    advises before forking) keeps the workers' collections from touching - and so copying -
    the server's pages, and from walking those objects at every full collection.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in WARM:
            try:
                importlib.import_module(name)
            except ImportError:  # as multiprocessing's own preload: the worker's job reports it
                pass
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


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


def context() -> multiprocessing.context.BaseContext:
    """Fork server on POSIX (workers fork from a warm, single-threaded server), spawn elsewhere.

    The server inherits the environment: `READY_ENV` names a file in this process's own
    multiprocessing temp directory (removed at exit), never one inherited from a parent."""
    global _ready_file
    ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    if os.name == "posix":
        ctx.set_forkserver_preload(PRELOAD)
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
