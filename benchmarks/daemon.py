"""Daemon-mode figures: latency with a simulated camera, catch-up ingest rate, catalogue growth.

Run as ``python -m benchmarks.daemon latency MANIFEST WORKDIR`` or
``python -m benchmarks.daemon catchup N WORKDIR``; each prints one JSON line.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

CCDWATCH = [sys.executable, "-m", "ccdwatch.cli"]


def _config(work: Path, incoming: Path, **watch: float) -> Path:
    cfg = work / "ccdwatch.toml"
    lines = ["[paths]", f'incoming = "{incoming}"', f'products = "{work / "products"}"',
             f'database = "{work / "catalogue.db"}"', "[watch]"]
    lines += [f"{k} = {v}" for k, v in watch.items()]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)


def latency(manifest_path: str, workdir: str, *, period: float = 2.0) -> dict:
    """Masters first (``watch --once`` on the calibration frames), then a running ``ccdwatch watch``
    while a simulated camera writes one light every ``period`` s (open, write, close in place);
    latency = close of the file -> its calibrated row visible to a reader of the catalogue."""
    m = json.loads(Path(manifest_path).read_text())
    work = Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    incoming = work / "incoming"
    incoming.mkdir(parents=True)
    for kind in ("bias", "dark", "flat"):
        for p in m["files"][kind]:
            shutil.copy2(p, incoming / Path(p).name)
    cfg = _config(work, incoming, settle_seconds=2.0)
    settle = 2.0
    subprocess.run(CCDWATCH + ["--config", str(cfg), "watch", "--once"], check=True, capture_output=True)
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 - the daemon writes it until it is stopped
    daemon = subprocess.Popen(CCDWATCH + ["--config", str(cfg), "-v", "watch"], stdout=log, stderr=subprocess.STDOUT)
    db = work / "catalogue.db"
    try:
        time.sleep(3.0)  # start-up scan of the calibration frames (all unchanged)
        closed: dict[str, float] = {}
        seen: dict[str, float] = {}
        stop = threading.Event()

        def poll() -> None:
            con = _ro(db)
            while not stop.is_set():
                try:
                    rows = con.execute("SELECT f.path FROM calibrated c JOIN frames f ON f.id = c.frame_id").fetchall()
                except sqlite3.OperationalError:
                    rows = []
                now = time.time()
                for (p,) in rows:
                    seen.setdefault(p, now)
                time.sleep(0.02)
            con.close()

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        lights = m["lights"]
        t_next = time.time()
        for i, light in enumerate(lights):
            time.sleep(max(0.0, t_next - time.time()))
            t_next += period
            blob = Path(light["path"]).read_bytes()
            target = incoming / f"cam_{i:04d}.fits"
            with open(target, "wb") as fh:  # a camera program writes in place and closes
                fh.write(blob)
            closed[str(target.absolute())] = time.time()
        deadline = time.time() + 60
        while time.time() < deadline and len(set(closed) & set(seen)) < len(closed):
            time.sleep(0.1)
        stop.set()
        poller.join()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
    lat = sorted(seen[p] - t for p, t in closed.items() if p in seen)
    missing = len(closed) - len(lat)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan")
    return {"n": len(closed), "missing": missing, "settle_seconds": settle, "period": period,
            "median": statistics.median(lat) if lat else None, "p95": p95, "max": max(lat) if lat else None,
            "all": lat}


def catchup(source: str, workdir: str) -> dict:
    """``watch --once`` over a directory of many small files; the ingest rate and the time per frame
    as the catalogue grows come from the frames' ``created_at`` (one commit per frame)."""
    work = Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = _config(work, Path(source).absolute())
    t0 = time.perf_counter()
    proc = subprocess.run(CCDWATCH + ["--config", str(cfg), "watch", "--once"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    con = _ro(work / "catalogue.db")
    stamps = [datetime.fromisoformat(r[0]).timestamp()
              for r in con.execute("SELECT created_at FROM frames ORDER BY id")]
    con.close()
    n = len(stamps)
    rate = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else float("nan")

    def per_frame(lo: int, hi: int) -> float:
        hi = min(hi, n - 1)
        return (stamps[hi] - stamps[lo]) / (hi - lo) if hi > lo else float("nan")

    growth = {str(k): per_frame(k, k + 100) for k in (100, 500, 1000, 1500, 1900) if k + 1 < n}
    first, last = growth.get("100"), growth.get("1900")
    return {"n_files": n, "wall": wall, "returncode": proc.returncode,
            "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.returncode else [],
            "ingest_rate": rate, "per_frame_s": growth,
            "growth_ratio": (last / first) if first and last else None}


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "latency":
        print(json.dumps(latency(sys.argv[2], sys.argv[3])))
    else:
        print(json.dumps(catchup(sys.argv[2], sys.argv[3])))
