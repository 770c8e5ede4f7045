"""Reprocessing throughput on a Dask cluster: the same campaign on 1 and on 2 workers.

``python -m benchmarks.cluster [--nights N] [--lights N] [--size S]`` writes N synthetic nights,
reduces them once with local workers, then runs ``reprocess --all`` (every master, calibrated
light and stack again) through a ``LocalCluster`` of 1 and of 2 single-threaded worker
processes, and prints wall time, jobs per second and the speed-up. It also times the daemon's
own serial share of each job (planning it and committing its result to the catalogue: what bounds
a campaign however many workers it has) and the bytes each kind of job reads and writes (what the
shared filesystem must carry). ``--db URL`` keeps the catalogue on a PostgreSQL server instead of
SQLite (an empty database: the benchmark creates the schema).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.config import (
    Config,
    MastersConfig,
    PathsConfig,
    ReportConfig,
    SiteConfig,
    StackConfig,
    WatchConfig,
    WorkersConfig,
)
from ccdwatch.daemon.watch import Watcher
from ccdwatch.pipeline import Pipeline, calibrate, masters, stacking
from ccdwatch.pipeline.reprocess import Selection, reprocess


def write_nights(root: Path, nights: int, lights: int, shape: tuple[int, int]) -> None:
    camera = synth.Camera(shape=shape)
    for i in range(nights):
        synth.make_night(root / f"night{i:02d}", camera=camera, seed=100 + i, n_bias=5, n_dark=5, n_flat=5,
                         filters=("V", "R"), n_light=lights, n_stars=80, start=datetime(2024, 3, 10 + i, 20, tzinfo=UTC))


@contextlib.contextmanager
def daemon_share() -> Iterator[dict[str, float]]:
    """Wall seconds the daemon spends planning jobs and committing their results, by function."""
    spent: dict[str, float] = {}
    targets = [(masters, "plan_master"), (masters, "commit"), (calibrate, "plan_many"), (calibrate, "commit"),
               (stacking, "plan_many"), (stacking, "commit")]
    originals = [(mod, name, getattr(mod, name)) for mod, name in targets]

    def timed(label: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
        return run

    for mod, name, fn in originals:
        setattr(mod, name, timed(f"{mod.__name__.rsplit('.', 1)[1]}.{name}", fn))
    try:
        yield spent
    finally:
        for mod, name, fn in originals:
            setattr(mod, name, fn)


def product_bytes(database: str) -> dict[str, float]:
    """Mean bytes of a master, a calibrated light and a stack file, and of a raw light."""
    from sqlalchemy import select

    from ccdwatch.models import Calibrated, Frame, Master, Stack

    out = {}
    with Catalog(database) as cat, cat.reader() as s:
        for label, stmt in (("master", select(Master.path)), ("calibrated", select(Calibrated.path)),
                            ("stack", select(Stack.path)), ("raw light", select(Frame.path).where(
                                Frame.imagetyp == "light"))):
            sizes = [os.path.getsize(p) for p in s.scalars(stmt)]
            out[label] = sum(sizes) / max(1, len(sizes))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nights", type=int, default=3)
    ap.add_argument("--lights", type=int, default=6, help="lights per filter and night")
    ap.add_argument("--size", type=int, default=1024, help="detector width (height is 3/4 of it)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--db", help="an empty PostgreSQL database URL for the catalogue (default: SQLite)")
    args = ap.parse_args()
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory(prefix="ccdwatch-bench-cluster-") as tmp:
        root = Path(tmp)
        write_nights(root / "incoming", args.nights, args.lights, (args.size * 3 // 4, args.size))
        cfg = Config(paths=PathsConfig(incoming=root / "incoming", products=root / "products",
                                       database=args.db or str(root / "c.db")),
                     watch=WatchConfig(settle_seconds=0.0, rescan_interval=0.0),
                     masters=MastersConfig(settle_seconds=0.0), stack=StackConfig(quiet_minutes=0.0),
                     report=ReportConfig(refresh=False, previews=False), site=SiteConfig(name="bench"),
                     workers=WorkersConfig(processes=2))
        t0 = time.perf_counter()
        with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
            Watcher(cfg, pipe, progress=False).run_once()
        print(f"first reduction (2 local workers): {time.perf_counter() - t0:.1f} s")
        rows = []
        for n in args.workers:
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
                run = dataclasses.replace(cfg, workers=dataclasses.replace(cfg.workers,
                                                                           scheduler=cluster.scheduler_address))
                with Catalog(cfg.paths.database) as cat, Pipeline(run, cat) as pipe, daemon_share() as spent:
                    done = reprocess(pipe, Selection(every=True))
            jobs = done.masters + done.calibrated + done.stacks
            rows.append((n, done.seconds, jobs))
            st = done.stage_seconds
            print(f"{n} worker(s): {done.masters} masters, {done.calibrated} lights, {done.stacks} stacks "
                  f"in {done.seconds:.1f} s = {jobs / done.seconds:.2f} jobs/s; per job: master "
                  f"{st['masters'] / max(1, done.masters):.2f} s, light {st['lights'] / max(1, done.calibrated):.2f} s, "
                  f"stack {st['stacks'] / max(1, done.stacks):.2f} s (wall, stage / jobs); load average "
                  f"{os.getloadavg()[0]:.1f}")
            print(f"  the daemon's serial share (plan + commit): {1000 * sum(spent.values()) / jobs:.0f} ms per job ("
                  + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(spent.items())) + ")")
        sizes = product_bytes(cfg.paths.database)
        pixels = args.size * (args.size * 3 // 4)
        print("bytes per file (per pixel): " + ", ".join(f"{k} {v / 1e6:.2f} MB ({v / pixels:.1f})"
                                                         for k, v in sizes.items()))
        base = rows[0][1]
        print("\n| Dask workers | wall s | jobs | jobs/s | speed-up |\n|---:|---:|---:|---:|---:|")
        for n, secs, jobs in rows:
            print(f"| {n} | {secs:.1f} | {jobs} | {jobs / secs:.2f} | {base / secs:.2f} |")


if __name__ == "__main__":
    main()
