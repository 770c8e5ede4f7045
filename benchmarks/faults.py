"""Signals at random moments against the live daemon (issue 14): more tries than the test suite.

``python -m benchmarks.faults DIR sigterm [--tries 40] [--seed 8]``
    ``ccdwatch watch`` started again and again while a night's files arrive, each start stopped by
    SIGTERM 0.2-3 s after READY; prints every stop's delay -> exit time, the hangs (no exit within
    30 s), the exit codes, and whether the night then completes as if nothing had happened.
``python -m benchmarks.faults DIR sigkill [--tries 8] [--seed 11]``
    The night's files in place, the daemon SIGKILLed at a random moment of each start once it has
    committed something (``kill_mid_work``; the catalogue printed after each kill); then a last start
    that finishes the night, compared name for name and byte for byte with ``watch --once``.

The daemon, the night (96x128, 3 bias, 3 darks, 3 flats, 3 lights) and the comparison are those
of ``tests/test_faults_live.py``; everything is written under ``DIR`` (emptied first).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import threading
import time
from pathlib import Path

from ccdwatch import synth
from tests.test_crash import run_once, signature
from tests.test_daemon import Daemon
from tests.test_faults_live import CAMERA, FAST, copier, kill_mid_work, log_text, night_done, sigterm


def staging(root: Path) -> Path:
    d = root / "staging"
    synth.make_night(d, camera=CAMERA, seed=9, n_bias=3, n_dark=3, n_flat=3, filters=("V",), n_light=3, n_stars=40)
    return d


def sigterms(root: Path, tries: int, seed: int) -> dict:
    rng = random.Random(seed)
    files = sorted(staging(root).glob("*.fits"), key=lambda p: rng.random())
    (root / "daemon").mkdir()
    d = Daemon(root / "daemon", extra=FAST)
    stop = threading.Event()
    writer = copier(files, d.incoming, stop, pause=2.5)
    exits: list[tuple[float, float, int | None]] = []
    try:
        for i in range(tries):
            d.messages.clear()
            d.start()
            delay = rng.uniform(0.2, 3.0)
            time.sleep(delay)
            took, code = sigterm(d)
            exits.append((delay, took, code))
            print(f"{i + 1:3d}: SIGTERM {delay:.2f} s after READY -> exit {code} after {took:.2f} s", flush=True)
    finally:
        stop.set()
        writer.join(10)
    for p in files:
        if not (d.incoming / p.name).exists():
            shutil.copy(p, d.incoming / p.name)
    d.messages.clear()
    d.start()
    night_done(d)
    final = sigterm(d)
    times = [t for _, t, _ in exits]
    return {"tries": tries, "hangs": sum(c is None for *_, c in exits), "codes": sorted({str(c) for *_, c in exits}),
            "exit_s_median": statistics.median(times), "exit_s_max": max(times),
            "exit_s_p90": statistics.quantiles(times, n=10)[-1], "night_completed": True, "final_exit": final[1],
            "tracebacks": log_text(d).count("Traceback")}


def sigkills(root: Path, tries: int, seed: int) -> dict:
    night = staging(root)
    ref_root = root / "reference"
    ref_root.mkdir()
    assert run_once(ref_root, night) == 0
    reference = signature(ref_root)
    rng = random.Random(seed)
    (root / "daemon").mkdir()
    d = Daemon(root / "daemon", extra=FAST)
    for p in sorted(night.glob("*.fits"), key=lambda p: rng.random()):
        shutil.copy2(p, d.incoming / p.name)
    for i in range(tries):
        d.messages.clear()
        d.start()
        delay = kill_mid_work(d, rng)
        done = d.query("SELECT state, count(*) FROM frames GROUP BY state ORDER BY state")
        products = d.query("SELECT (SELECT count(*) FROM masters), (SELECT count(*) FROM calibrated), "
                           "(SELECT count(*) FROM stacks)")[0]
        print(f"{i + 1:3d}: SIGKILL {delay:.2f} s after READY; frames {done}; masters, calibrated, stacks "
              f"{products}", flush=True)
    d.messages.clear()
    d.start()
    night_done(d)
    final = sigterm(d)
    got = signature(root / "daemon", d.db)
    same = got == reference
    return {"tries": tries, "identical_to_watch_once": same, "products": len(got["files"]),
            "final_exit": final[1], "tracebacks": log_text(d).count("Traceback")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("kind", choices=("sigterm", "sigkill"))
    ap.add_argument("--tries", type=int)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    if args.kind == "sigterm":
        out = sigterms(args.dir, args.tries or 40, 8 if args.seed is None else args.seed)
    else:
        out = sigkills(args.dir, args.tries or 8, 11 if args.seed is None else args.seed)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
