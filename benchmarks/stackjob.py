"""The stack job alone, on a finished run: ``python -m benchmarks.stackjob RUN [--threads N] [--profile]``.

``RUN`` holds the ``products`` and ``catalogue.db`` of a ``watch --once`` run (e.g. the matched
night's ``runs/2k-matched/ccdwatch`` under the benchmark's work directory). The first group of
the run's first night is planned again (``stacking.plan_many`` with ``redo_before`` in the
future, on a copy of the catalogue) and `tasks.stack_group` runs in this process with
``--threads`` threads (the runner gives a lone stack both cores; its strips then run in forked
processes), without its preview, into a temporary file. Prints one JSON line: wall and CPU
seconds (the children's included), peak RSS (a child's after a +, shared pages counted) and the
product's sha256 (the same in every tree that stacks the same bytes). ``--profile`` prints cProfile's top entries
first. Run each tree in its own process, interleaved, to compare, from inside that tree
(``cd TREE && python -m benchmarks.stackjob RUN``): ``python -m`` puts the current directory first
on ``sys.path``, so from another checkout it would import that checkout's ``ccdwatch`` whatever
``PYTHONPATH`` says.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import pstats
import resource
import shutil
import sqlite3
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ccdwatch.jobs.tasks import StackSpec


def plan(run: Path, scratch: Path) -> StackSpec:
    """The stack spec of the run's first group, planned on a copy of its catalogue in ``scratch``
    (planning claims the group: the run's own catalogue is left as it is; the copy's claims are
    dropped first)."""
    from ccdwatch.catalog import Catalog
    from ccdwatch.config import load_config
    from ccdwatch.pipeline import stacking
    from ccdwatch.pipeline.context import Context

    shutil.copyfile(run / "catalogue.db", scratch / "catalogue.db")
    with sqlite3.connect(scratch / "catalogue.db") as db:  # claims left by earlier runs of this script
        db.execute("DELETE FROM claims")
    cfg = load_config(None).with_overrides(incoming=None, products=str(run / "products"),
                                           database=str(scratch / "catalogue.db"), scheduler=None, site=None)
    ctx = Context(cfg, Catalog(cfg.paths.database, writer=True))
    with ctx.catalog.session() as s:
        night = _first_night(s)
        groups = sorted(set(stacking.assign_groups(ctx, s, night).values()), key=str)
    plans = stacking.plan_many(ctx, groups, redo_before=datetime(2100, 1, 1))
    if not plans:
        raise SystemExit(f"no group to stack in {run}")
    return plans[0].spec


def _first_night(s: Any) -> str:
    from sqlalchemy import select

    from ccdwatch.models import Frame

    night = s.execute(select(Frame.night).where(Frame.night.is_not(None)).order_by(Frame.night)).scalars().first()
    if night is None:
        raise SystemExit("no night in the catalogue")
    return str(night)


def _cpu() -> float:
    """CPU seconds of this process and of its children (a stack's strips may run in forked children)."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _maxrss_mib() -> str:
    """Peak RSS in MiB of this process, and of its largest child when one ran (``a+b``)."""
    own, child = (resource.getrusage(w).ru_maxrss // 1024 for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return f"{own}+{child}" if child else str(own)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    from ccdwatch.jobs import forkserver  # no numpy yet: the settings below come first

    for var in forkserver.ONE_THREAD:
        os.environ.setdefault(var, "1")
    from ccdwatch.jobs import pool, tasks

    forkserver.warm_imports()  # as the workers' fork server: imports are not the job's
    pool._worker_init(0, 0, os.getpid())  # as a worker: OpenCV single-threaded, glibc's heap settings

    with tempfile.TemporaryDirectory() as tmp:
        spec = plan(args.run.absolute(), Path(tmp))
        spec = dataclasses.replace(spec, threads=args.threads, out_path=str(Path(tmp) / "stack.fits"),
                                   preview_path=None, workdir=str(Path(tmp) / "work"))
        t0, c0 = time.perf_counter(), _cpu()
        if args.profile:
            prof = cProfile.Profile()
            result = prof.runcall(tasks.stack_group, spec)
        else:
            result = tasks.stack_group(spec)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    if args.profile:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    print(json.dumps({"frames": len(spec.products), "threads": args.threads, "wall_s": round(wall, 2),
                      "cpu_s": round(cpu, 2), "maxrss_mib": _maxrss_mib(),
                      "sha256": result.sha256}))


if __name__ == "__main__":
    main()
