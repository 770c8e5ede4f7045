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
from datetime import UTC, datetime
from pathlib import Path

CCDWATCH = [sys.executable, "-m", "ccdwatch"]


def _config(work: Path, incoming: Path, stack: dict[str, float] | None = None, **watch: float) -> Path:
    cfg = work / "ccdwatch.toml"
    lines = ["[paths]", f'incoming = "{incoming}"', f'products = "{work / "products"}"',
             f'database = "{work / "catalogue.db"}"', "[watch]"]
    lines += [f"{k} = {v}" for k, v in watch.items()]
    if stack:
        lines += ["[stack]"] + [f"{k} = {v}" for k, v in stack.items()]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)


def _utc(stamp: str) -> float:
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()


def latency(manifest_path: str, workdir: str, *, period: float = 2.0, quiet_seconds: float = 15.0) -> dict:
    """Masters first (``watch --once`` on the calibration frames), then a running ``ccdwatch watch``
    while a simulated camera writes one light every ``period`` s (open, write, close in place);
    latency = close of the file -> its calibrated row visible to a reader of the catalogue.

    Then the group's stack: the lights are one group (one target, filter, exposure), which closes
    when the sequence ends, that is when no light of it has arrived for ``stack.quiet_minutes``
    (set to ``quiet_seconds`` here, as the quiet time after the last light of a sequence; the
    night's end is the other way a group closes). The group closes at the last light's catalogue
    time + ``quiet_seconds`` (how `ccdwatch.pipeline.stacking.due_groups` decides), and
    ``stack_after_close`` is the time from then to the stack's row visible to a reader."""
    m = json.loads(Path(manifest_path).read_text())
    work = Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    incoming = work / "incoming"
    incoming.mkdir(parents=True)
    for kind in ("bias", "dark", "flat"):
        for p in m["files"][kind]:
            shutil.copy2(p, incoming / Path(p).name)
    cfg = _config(work, incoming, stack={"quiet_minutes": quiet_seconds / 60.0}, settle_seconds=2.0)
    settle = 2.0
    subprocess.run(CCDWATCH + ["--config", str(cfg), "watch", "--once"], check=True, capture_output=True)
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 - the daemon writes it until it is stopped
    daemon = subprocess.Popen(CCDWATCH + ["--config", str(cfg), "-v", "watch"], stdout=log, stderr=subprocess.STDOUT)
    db = work / "catalogue.db"
    try:
        _wait_for_log(work / "daemon.log", b"watching ", timeout=60.0)  # start-up scan done
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
        stacked, last_in = _wait_for_stack(db, closed, timeout=quiet_seconds + 120)
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
    closes = (last_in + quiet_seconds) if last_in is not None else None
    return {"n": len(closed), "missing": missing, "settle_seconds": settle, "period": period,
            "quiet_seconds": quiet_seconds,
            "stack_after_close": (stacked - closes) if stacked is not None and closes is not None else None,
            "stack_after_last": (stacked - max(closed.values())) if stacked is not None else None,
            "median": statistics.median(lat) if lat else None, "p95": p95, "max": max(lat) if lat else None,
            "all": lat}


def _wait_for_log(log: Path, text: bytes, *, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and text not in log.read_bytes():
        time.sleep(0.05)


def _wait_for_stack(db: Path, closed: dict[str, float], *, timeout: float) -> tuple[float | None, float | None]:
    """When a stack row became visible (epoch s, polled every 20 ms) and when the group's last
    light was catalogued (its frame row's stamp); None for what did not happen within ``timeout``."""
    con = _ro(db)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if con.execute("SELECT COUNT(*) FROM stacks").fetchone()[0]:
                    stacked = time.time()
                    break
            except sqlite3.OperationalError:
                pass
            time.sleep(0.02)
        else:
            stacked = None
        marks = ",".join("?" * len(closed))
        row = con.execute(f"SELECT MAX(created_at) FROM frames WHERE path IN ({marks})",  # noqa: S608
                          list(closed)).fetchone()
        return stacked, (_utc(row[0]) if row and row[0] else None)
    finally:
        con.close()


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
