"""Crash safety: SIGKILL the daemon at each step, restart, and converge to a crash-free run.

Jobs run inside the daemon here (``workers.processes = 0``) so that a fault in a job kills the
daemon itself, mid-write, as a power cut would. Convergence is byte for byte, product names
included, and does not depend on the order the files were processed in (catalogue ids do, so
no id may reach a product).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ccdwatch import synth
from ccdwatch.pipeline import durability

pytestmark = pytest.mark.slow  # live daemons and subprocesses: seconds each

CAMERA = synth.Camera(shape=(96, 128))
#: The daemon's own state in the products root (not products): its status, and the marker of
#: calibrated lights not yet known to be on the disk (its time differs from run to run).
DAEMON_STATE = ("status.json", durability.MARKER)


@pytest.fixture(scope="module")
def staging(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("staging")
    synth.make_night(d, camera=CAMERA, seed=9, n_bias=3, n_dark=3, n_flat=3, filters=("V",), n_light=3,
                     n_stars=40)
    return d


def run_once(root: Path, incoming: Path, faults: str | None = None) -> int:
    cfg = root / "ccdwatch.toml"
    cfg.write_text(f"""
[paths]
incoming = "{incoming}"
products = "{root / 'products'}"
database = "{root / 'ccdwatch.db'}"
[watch]
settle_seconds = 0.0
[masters]
settle_seconds = 0
[workers]
processes = 0
[report]
refresh = false
""")
    env = {k: v for k, v in os.environ.items() if k != "CCDWATCH_FAULTS"}
    if faults:
        env["CCDWATCH_FAULTS"] = faults
    proc = subprocess.run([sys.executable, "-m", "ccdwatch.cli", "-q", "--config", str(cfg), "watch", "--once"],
                          env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode


def signature(root: Path, db: Path | None = None) -> dict:
    """What a run leaves behind, independent of where its products root is."""
    products = root / "products"
    con = sqlite3.connect(db or root / "ccdwatch.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {}
        for table in ("masters", "calibrated", "stacks"):
            got = con.execute(f"SELECT path, sha256 FROM {table} ORDER BY path").fetchall()
            for path, sha in got:
                p = Path(path)
                assert p.exists(), f"{table} row points to a missing file {p}"
                assert hashlib.sha256(p.read_bytes()).hexdigest() == sha, f"{p} does not match its sha256"
            rows[table] = [(str(Path(p).relative_to(products)), sha) for p, sha in got]
        rows["frames"] = sorted(con.execute("SELECT sha256, imagetyp, state FROM frames").fetchall(), key=str)
    finally:
        con.close()
    files = sorted(str(p.relative_to(products)) for p in products.rglob("*")
                   if p.is_file() and "reports" not in p.parts and p.name not in DAEMON_STATE)
    temps = [f for f in files if Path(f).name.startswith(".ccdwatch-tmp")]
    assert not temps, f"temp files left at final paths: {temps}"
    # every file's bytes, previews included
    rows["files"] = [(f, hashlib.sha256((products / f).read_bytes()).hexdigest())
                     for f in files if not f.startswith(".work")]
    return rows


def frame_ids(root: Path) -> dict[str, int]:
    """sha256 -> catalogue id: what differs between runs that process files in other orders."""
    con = sqlite3.connect(root / "ccdwatch.db")
    try:
        return dict(con.execute("SELECT sha256, id FROM frames").fetchall())
    finally:
        con.close()


def shuffled_copy(staging: Path, dest: Path, seed: int) -> Path:
    """The night's files under ``dest``, each in a folder whose name sets its place in the scan
    order (a random one): the same files and file names, processed in another order."""
    files = sorted(staging.glob("*.fits"))
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    for rank, path in zip(order, files, strict=True):
        folder = dest / f"p{rank:03d}"
        folder.mkdir(parents=True)
        shutil.copy2(path, folder / path.name)
    return dest


@pytest.fixture(scope="module")
def reference_run(staging, tmp_path_factory) -> Path:
    """An uninterrupted ``watch --once`` of the night in the scan order: its root."""
    root = tmp_path_factory.mktemp("reference")
    assert run_once(root, staging) == 0
    return root


@pytest.fixture(scope="module")
def reference(reference_run):
    return signature(reference_run)


@pytest.mark.parametrize("point", [
    "ingest-commit",        # mid-ingest: the frame's row never committed
    "master-build",         # mid-master: inputs half combined in the work directory
    "master-written",       # between the master's rename and its commit
    "calibrate",            # mid-calibration
    "calibrated-written",   # between the calibrated frame's rename and its commit
    "stack",                # mid-stack
    "stack-written",        # between the stack's rename and its commit
])
def test_kill_and_restart_converges(point, staging, reference, tmp_path):
    code = run_once(tmp_path, staging, faults=f"{point}=kill")
    assert code == -9, f"the fault at {point} did not fire (exit {code})"
    assert run_once(tmp_path, staging) == 0
    assert signature(tmp_path) == reference


def test_reprocessing_gives_identical_products(staging, reference, tmp_path):
    assert run_once(tmp_path, staging) == 0
    assert signature(tmp_path) == reference
    # The same night reduced again from scratch: the same bytes.
    shutil.rmtree(tmp_path / "products")
    (tmp_path / "ccdwatch.db").unlink()
    assert run_once(tmp_path, staging) == 0
    assert signature(tmp_path) == reference


@pytest.fixture(scope="module")
def reference_ids(reference_run) -> dict[str, int]:
    return frame_ids(reference_run)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_processing_order_changes_ids_not_products(seed, staging, reference, reference_ids, tmp_path):
    """Files scanned in another order get other catalogue ids, and the very same products."""
    incoming = shuffled_copy(staging, tmp_path / "incoming", seed)
    assert run_once(tmp_path, incoming) == 0
    ids = frame_ids(tmp_path)
    assert ids.keys() == reference_ids.keys() and ids != reference_ids  # the order did change
    assert signature(tmp_path) == reference


@pytest.mark.slow
@pytest.mark.parametrize("point, seed", [("master-written", 3), ("calibrated-written", 4), ("stack", 5)])
def test_kill_in_another_order_converges_to_the_same_bytes(point, seed, staging, reference, tmp_path):
    incoming = shuffled_copy(staging, tmp_path / "incoming", seed)
    assert run_once(tmp_path, incoming, faults=f"{point}=kill") == -9
    assert run_once(tmp_path, incoming) == 0
    assert signature(tmp_path) == reference
