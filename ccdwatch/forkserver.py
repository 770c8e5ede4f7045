"""The multiprocessing context of the workers, and an early start of their fork server.

Kept apart from `ccdwatch.jobs` (which imports numpy, astropy, sep, OpenCV...) so that the
daemon can start the fork server before it imports any of that itself: the server's imports
(~1 s) then run on the other core while the daemon loads, opens the catalogue and scans.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os

#: What the fork server imports once, so that every worker forked from it starts warm
#: (numpy, astropy, sep, astroalign, scipy, OpenCV; matplotlib and the report for the pictures).
PRELOAD = ["ccdwatch.jobs", "ccdwatch.previews", "ccdwatch.report"]


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
