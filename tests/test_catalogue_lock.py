"""Another process holds the SQLite catalogue's write lock for longer than a writer waits (a user's
``sqlite3`` shell with a transaction open, a VACUUM, a backup tool): the writer says it is alive
while it waits, the pipeline pauses and resumes by itself, the daemon lives on (no watchdog kill,
a prompt SIGTERM), and a daemon started meanwhile exits in words with a restartable code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from ccdwatch import synth
from ccdwatch.catalog import Catalog, db
from ccdwatch.catalog.queries import state_counts
from ccdwatch.pipeline import Pipeline

from .helpers import make_config
from .test_daemon import Daemon

#: The checkout under test, for the daemons run as subprocesses (else the venv's editable install).
ROOT = str(Path(__file__).resolve().parents[1])
FAST = """min_free_mb = 1
pause_retry_seconds = 1
[masters]
settle_seconds = 0
[stack]
quiet_minutes = 0.01
"""


def hold_write_lock(db: Path | str) -> sqlite3.Connection:
    """Another process's write transaction, left open."""
    con = sqlite3.connect(db, isolation_level=None, timeout=30, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")
    return con


@pytest.fixture(scope="module")
def biases(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("lock-staging")
    synth.make_night(d, camera=synth.Camera(shape=(64, 96)), seed=9, n_bias=3, n_dark=0, n_flat=0, filters=(),
                     n_light=0)
    return sorted(d.glob("bias_*.fits"))


def test_a_writer_waits_for_the_lock_in_short_tries_saying_it_is_alive(tmp_path):
    with Catalog(str(tmp_path / "c.db")) as cat:
        calls: list[float] = []
        cat.lock_wait.timeout = 2.5
        cat.lock_wait.still_waiting = lambda: calls.append(time.monotonic()) is None
        other = hold_write_lock(tmp_path / "c.db")
        assert not cat.lock_free()
        t0 = time.monotonic()
        with pytest.raises(OperationalError) as err, cat.session() as s:
            state_counts(s)
        took = time.monotonic() - t0
        assert db.catalogue_locked(err.value) and 2.4 < took < 4.0, took
        gaps = [b - a for a, b in zip([t0, *calls], [*calls, t0 + took], strict=True)]
        assert len(calls) >= 2 and max(gaps) < 1.5, gaps  # a ping at least every try of a second

        cat.lock_wait.still_waiting = lambda: False  # asked to stop: no more waiting
        t0 = time.monotonic()
        with pytest.raises(OperationalError), cat.session() as s:
            state_counts(s)
        assert time.monotonic() - t0 < 1.5

        cat.lock_wait.still_waiting = None
        threading.Timer(1.2, other.rollback).start()  # the lock freed while the writer waits
        with cat.session() as s:
            assert state_counts(s) == {}
        other.close()
        assert cat.lock_free()
        with cat.engine.connect() as conn:  # the busy timeout is the full one again outside BEGIN
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500


def test_the_pipeline_pauses_on_a_locked_catalogue_and_resumes_once_it_is_free(tmp_path, biases):
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False},
                      watch={"pause_retry_seconds": 0.0, "min_free_mb": 1})
    path = Path(cfg.paths.incoming) / biases[0].name
    shutil.copy(biases[0], path)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        cat.lock_wait.timeout = 1.0
        other = hold_write_lock(cfg.paths.database)
        assert [o.status for o in pipe.handle_many([path])] == ["paused"]
        assert pipe.paused is not None and pipe.paused.startswith("catalogue locked by another process")
        assert "database is locked" in pipe.paused
        t0 = time.monotonic()
        assert not pipe.maybe_resume() and pipe.paused is not None
        pipe.tick()  # paused: does nothing, raises nothing
        assert time.monotonic() - t0 < 0.5, "a paused pipeline does not wait for the lock again"
        other.rollback()
        other.close()
        assert pipe.maybe_resume() and pipe.paused is None
        assert [o.status for o in pipe.handle_many([path])] == ["ingested"]


def test_start_refusal_names_the_lock_with_a_restartable_exit_code(tmp_path):
    path = str(tmp_path / "c.db")
    with Catalog(path) as cat:
        other = hold_write_lock(path)
        cat.lock_wait.timeout = 0.2
        with pytest.raises(OperationalError) as err, cat.session() as s:
            state_counts(s)
    other.close()
    code, words = db.start_refusal(err.value, path, 1)
    assert code == db.EXIT_LOCKED == 8 and "\n" not in words
    assert f"the catalogue {path} is locked by another process" in words and "starts it again" in words


@pytest.mark.slow
def test_a_daemon_started_on_a_locked_catalogue_exits_8_in_one_line(tmp_path):
    d = Daemon(tmp_path)
    Catalog(str(d.db)).close()
    other = hold_write_lock(d.db)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(PYTHONPATH=ROOT, CCDWATCH_BUSY_TIMEOUT_MS="1500")
    try:
        done = subprocess.run([sys.executable, "-m", "ccdwatch.cli", "--config", str(d.cfg), "watch"], env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        other.close()
    assert done.returncode == 8, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("ccdwatch:")]
    assert len(lines) == 1 and "is locked by another process" in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def watchdog_times(d: Daemon, until: float) -> list[float]:
    """When each new WATCHDOG=1 reached the fake systemd, until ``until`` (monotonic)."""
    seen, times = len(d.messages), []
    while time.monotonic() < until:
        now = len(d.messages)
        times += [time.monotonic() for m in d.messages[seen:now] if "WATCHDOG=1" in m]
        seen = now
        time.sleep(0.02)
    return times


@pytest.mark.slow
def test_a_catalogue_locked_for_several_busy_timeouts_pauses_the_daemon_then_it_resumes(tmp_path, biases):
    """Locked for ~3 busy timeouts while frames arrive: it pauses (log, STATUS=, status file),
    WATCHDOG=1 never stops, not even during a wait for the lock; the lock freed, it carries on."""
    d = Daemon(tmp_path, extra=FAST, env={"PYTHONPATH": ROOT, "CCDWATCH_BUSY_TIMEOUT_MS": "4000"})
    d.start()
    try:
        shutil.copy(biases[0], d.incoming / biases[0].name)
        d.wait_for("SELECT count(*) FROM frames", [(1,)])
        other = hold_write_lock(d.db)
        t0 = time.monotonic()
        for p in biases[1:]:
            shutil.copy(p, d.incoming / p.name)
        pings = watchdog_times(d, t0 + 12.0)
        assert d.proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
        statuses = [m for m in d.messages if m.startswith("STATUS=")]
        assert statuses[-1].startswith("STATUS=paused: catalogue locked by another process"), statuses[-3:]
        status = json.loads((Path(d.tmp) / "products" / "status.json").read_text())
        assert status["status"].startswith("paused: catalogue locked"), status
        gaps = [b - a for a, b in zip([t0, *pings], [*pings, t0 + 12.0], strict=True)]
        assert max(gaps) < 3.0, gaps  # WATCHDOG_USEC is 1 s; the wait for the lock alone lasts 4 s
        other.rollback()
        other.close()
        d.wait_for("SELECT count(*) FROM frames", [(3,)])
    finally:
        code = d.stop()
    log = (tmp_path / "daemon.log").read_text()
    assert code == 0 and "Traceback" not in log, log[-3000:]
    assert "pausing: catalogue: database is locked (catalogue locked by another process)" in log
    assert "resuming after the pause" in log


@pytest.mark.slow
def test_sigterm_while_waiting_for_the_lock_is_not_held_up_by_the_wait(tmp_path, biases):
    """The full busy timeout (60 s): a stop request ends the wait within a try, exit 0."""
    d = Daemon(tmp_path, extra=FAST, env={"PYTHONPATH": ROOT})
    d.start()
    other = hold_write_lock(d.db)
    try:
        shutil.copy(biases[0], d.incoming / biases[0].name)
        time.sleep(3.0)  # ready and waiting for the lock by now
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        try:
            code = d.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t0
    finally:
        other.close()
        if d.proc.poll() is None:
            d.proc.kill()
        d.stop()  # (already gone) closes the fake systemd's socket and the log
    log = (tmp_path / "daemon.log").read_text()
    assert code == 0 and took < 5.0, (code, took, log[-3000:])
    assert "Traceback" not in log
