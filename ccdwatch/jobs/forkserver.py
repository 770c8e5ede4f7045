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
#: (numpy, astropy, sep, scipy's k-d tree, OpenCV; matplotlib and the report for the pictures;
#: astropy.table, which every product's table HDU imports: ~0.4 s in each worker's first job).
WARM = ("ccdwatch.jobs.tasks", "ccdwatch.previews", "ccdwatch.report", "scipy.spatial", "astropy.table")
#: The fork server's preload: one module that imports `WARM` through `warm_imports`.
PRELOAD = ["ccdwatch.jobs._preload"]


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


def context() -> multiprocessing.context.BaseContext:
    """Fork server on POSIX (workers fork from a warm, single-threaded server), spawn elsewhere."""
    ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    if os.name == "posix":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the fork server now, without waiting for its imports."""
    if os.name == "posix":
        from multiprocessing import forkserver

        context()
        forkserver.ensure_running()
