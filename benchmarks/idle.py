"""Idle cost of the daemon with many lights waiting (issue 8: it grew with the waiting lights).

``python -m benchmarks.idle DIR [--lights 2000] [--seconds 30]`` writes that many tiny synthetic
lights (32x32, no calibration frames, so every one waits for its masters) into ``DIR/incoming``
(once; reused on the next run), starts ``ccdwatch watch`` on them with the default tick interval,
waits until every light waits with a reason, lets the catch-up settle for 10 s, then prints the
daemon's CPU (user + sys from ``/proc/PID/stat``) over ``--seconds`` as a percentage of one core.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from ccdwatch import synth


def write_lights(incoming: Path, n: int) -> None:
    """``n`` distinct 32x32 lights (one pixel pattern, a new DATE-OBS each)."""
    cam = synth.Camera(shape=(32, 32))
    data = synth.quantise(synth.expose(cam, kind="light", exptime=10.0, rng=np.random.default_rng(1)))
    t0 = datetime(2024, 1, 1, 22, 0, 0)
    for i in range(n):
        hdr = synth.frame_header(cam, kind="light", exptime=10.0, date_obs=t0 + timedelta(seconds=11 * i),
                                 filter="V", object="M51")
        synth.write_fits(incoming / f"M51_V_{i:05d}.fits", data, hdr)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled(db: Path) -> int:
    """Lights that wait with a reason, plus quarantined files (which never will)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return int(con.execute("SELECT count(*) FROM frames WHERE (state = 'waiting' AND state_reason IS NOT"
                                   " NULL) OR state = 'quarantined'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--lights", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args(argv)
    root: Path = args.dir.absolute()
    incoming, db = root / "incoming", root / "state" / "c.db"
    incoming.mkdir(parents=True, exist_ok=True)
    if not any(incoming.iterdir()):
        write_lights(incoming, args.lights)
    cfg = root / "ccdwatch.toml"
    cfg.write_text(f'[paths]\nincoming = "{incoming}"\nproducts = "{root / "products"}"\ndatabase = "{db}"\n'
                   "[watch]\nsettle_seconds = 0.5\n")
    with open(root / "daemon.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ccdwatch", "--config", str(cfg), "watch"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            t0 = time.time()
            while settled(db) < args.lights:
                if proc.poll() is not None or time.time() - t0 > 1800:
                    raise SystemExit(f"the daemon did not settle; see {root / 'daemon.log'}")
                time.sleep(1.0)
            print(f"{args.lights} lights waiting after {time.time() - t0:.1f} s")
            time.sleep(10.0)
            c0, w0 = cpu_seconds(proc.pid), time.time()
            time.sleep(args.seconds)
            c1, w1 = cpu_seconds(proc.pid), time.time()
            print(f"idle daemon CPU over {w1 - w0:.1f} s: {100 * (c1 - c0) / (w1 - w0):.1f} % of a core "
                  f"({c1 - c0:.2f} s CPU)")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
