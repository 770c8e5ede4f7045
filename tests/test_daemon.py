"""The daemon as systemd runs it: a subprocess, inotify events, a fake NOTIFY_SOCKET."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ccdwatch import synth

pytestmark = pytest.mark.slow  # live daemons and subprocesses: seconds each

CAMERA = synth.Camera(shape=(64, 96))


def frame_bytes(tmp: Path, kind: str = "bias", seed: int = 0, name: str = "src.fits") -> bytes:
    data = synth.expose(CAMERA, kind=kind, exptime=1.0, rng=np.random.default_rng(seed))
    from datetime import datetime

    hdr = synth.frame_header(CAMERA, kind=kind, exptime=1.0, date_obs=datetime(2024, 1, 1, 22, 0, seed % 60))
    p = synth.write_fits(tmp / name, synth.quantise(data), hdr)
    out = p.read_bytes()
    p.unlink()
    return out


class Daemon:
    def __init__(self, tmp: Path, extra: str = "", env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.tmp = tmp
        self.incoming = tmp / "incoming"
        self.incoming.mkdir(exist_ok=True)
        self.db = tmp / "state" / "c.db"
        self.cfg = tmp / "ccdwatch.toml"
        self.cfg.write_text(f"""
[paths]
incoming = "{self.incoming}"
products = "{tmp / 'products'}"
database = "{self.db}"
[watch]
settle_seconds = 0.5
tick_interval = 0.5
rescan_interval = 0
{extra}
""")
        self.sock_path = tmp / "notify.sock"
        self.messages: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.sock_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(0.1)
        self._listening = True
        self._listener = threading.Thread(target=self._listen, daemon=True)  # drains like systemd does
        self._listener.start()
        env = dict(os.environ, NOTIFY_SOCKET=str(self.sock_path), WATCHDOG_USEC="1000000", **self.env)
        self.log = open(self.tmp / "daemon.log", "ab")  # noqa: SIM115 - the daemon writes it until stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "ccdwatch.cli", "--config", str(self.cfg), "watch"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_message("READY=1", timeout=60)

    def _listen(self) -> None:
        while self._listening:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def read_messages(self) -> None:
        time.sleep(0.05)

    def wait_message(self, text: str, timeout: float = 20) -> None:
        end = time.time() + timeout
        while time.time() < end:
            self.read_messages()
            if any(text in m for m in self.messages):
                return
            assert self.proc.poll() is None, f"daemon died: {(self.tmp / 'daemon.log').read_text()}"
        raise AssertionError(f"no {text!r} from the daemon; got {self.messages}")

    def query(self, sql: str, *args):
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def wait_for(self, sql: str, expected, timeout: float = 30):
        end = time.time() + timeout
        got = None
        while time.time() < end:
            got = self.query(sql)
            if got == expected:
                return got
            assert self.proc.poll() is None, f"daemon died: {(self.tmp / 'daemon.log').read_text()}"
            time.sleep(0.2)
        raise AssertionError(f"{sql}: expected {expected}, got {got}\n{(self.tmp / 'daemon.log').read_text()[-3000:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        time.sleep(0.3)
        self._listening = False
        self._listener.join(2)
        self.sock.close()
        self.log.close()
        return code


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def test_slow_writer_is_ingested_once_after_the_last_byte(daemon):
    daemon.start()
    blob = frame_bytes(daemon.tmp)
    target = daemon.incoming / "slow.fits"
    with open(target, "wb") as fh:
        for chunk in (blob[:2880], blob[2880:6000], blob[6000:]):
            fh.write(chunk)
            fh.flush()
            time.sleep(1.2)  # longer than settle_seconds: a size-stable partial file
    import hashlib

    sha = hashlib.sha256(blob).hexdigest()
    daemon.wait_for("SELECT sha256, state FROM frames", [(sha, "ingested")])
    time.sleep(1.0)
    assert daemon.query("SELECT count(*) FROM frames") == [(1,)]
    assert daemon.stop() == 0
    assert any("STOPPING=1" in m for m in daemon.messages)


def test_rename_into_place_copy_in_and_duplicates(daemon):
    daemon.start()
    (daemon.incoming / ".a.fits.part").write_bytes(frame_bytes(daemon.tmp, seed=1))
    (daemon.incoming / ".a.fits.part").rename(daemon.incoming / "a.fits")
    src = daemon.tmp / "b_src.fits"
    src.write_bytes(frame_bytes(daemon.tmp, seed=2))
    shutil.copy(src, daemon.incoming / "b.fits")
    shutil.copy(src, daemon.incoming / "b_again.fits")
    daemon.wait_for("SELECT count(*) FROM files", [(3,)])
    daemon.wait_for("SELECT count(*) FROM frames", [(2,)])
    assert daemon.query("SELECT count(*) FROM files WHERE path LIKE '%.part'") == [(0,)]
    assert daemon.stop() == 0


def test_hostile_files_are_quarantined_and_the_daemon_lives_on(daemon):
    daemon.start()
    inc = daemon.incoming
    blob = frame_bytes(daemon.tmp, seed=3)
    (inc / "empty.fits").write_bytes(b"")
    (inc / "trunc_header.fits").write_bytes(blob[:1000])
    (inc / "trunc_data.fits").write_bytes(blob[: len(blob) - 4000])
    (inc / "garbage.fits").write_bytes(b"\x00\x01not a fits file at all" * 200)
    cards = [("SIMPLE", "T"), ("BITPIX", "16"), ("NAXIS", "2"), ("NAXIS1", "1000000"), ("NAXIS2", "1000000")]
    huge = "".join(f"{k:<8}= {v:>20}".ljust(80) for k, v in cards) + "END".ljust(80)
    (inc / "huge.fits").write_bytes(huge.encode().ljust(5760, b" "))
    os.mkfifo(inc / "fifo.fits")
    os.symlink("/dev/zero", inc / "zero.fits")
    (inc / "dir.fits").mkdir()
    old = time.time() - 3600  # finished long ago: truncation is final, not "still being written"
    for name in ("empty.fits", "trunc_header.fits", "trunc_data.fits"):
        os.utime(inc / name, (old, old))
    daemon.wait_for("SELECT count(*) FROM frames WHERE state = 'quarantined'", [(8,)], timeout=40)
    reasons = dict(daemon.query("SELECT path, state_reason FROM frames WHERE state = 'quarantined'"))
    reasons = {Path(k).name: v for k, v in reasons.items()}
    assert reasons["fifo.fits"].startswith("not-regular-file")
    assert reasons["zero.fits"].startswith("symlink")
    assert reasons["dir.fits"].startswith("not-regular-file")
    assert reasons["huge.fits"].startswith("too-large") or reasons["huge.fits"].startswith("truncated")
    assert reasons["garbage.fits"].startswith("not-fits")
    assert reasons["empty.fits"].startswith("empty")
    assert reasons["trunc_data.fits"].startswith("truncated-data")
    (inc / "good.fits").write_bytes(blob)
    daemon.wait_for("SELECT count(*) FROM frames WHERE state = 'ingested'", [(1,)])
    assert daemon.stop() == 0


def test_catch_up_at_start_ingests_nothing_twice(daemon):
    for i in range(3):
        (daemon.incoming / f"early_{i}.fits").write_bytes(frame_bytes(daemon.tmp, seed=10 + i))
    daemon.start()
    daemon.wait_for("SELECT count(*) FROM frames", [(3,)])
    assert daemon.stop() == 0
    for i in range(2):
        (daemon.incoming / f"while_down_{i}.fits").write_bytes(frame_bytes(daemon.tmp, seed=20 + i))
    daemon.start()
    daemon.wait_for("SELECT count(*) FROM frames", [(5,)])
    assert daemon.query("SELECT count(*) FROM events WHERE kind = 'ingested'") == [(5,)]
    assert daemon.stop() == 0


def test_notify_protocol_order(daemon):
    daemon.start()
    daemon.wait_message("WATCHDOG=1", timeout=10)
    assert daemon.stop() == 0
    kinds = [m.split("=")[0] for m in daemon.messages]
    assert kinds.index("READY") < kinds.index("WATCHDOG")
    assert "STOPPING" in kinds[-2:] or kinds[-1] == "STOPPING"


@pytest.mark.parametrize("action", ["crash", "hang"])
def test_poison_file_is_retried_then_quarantined(tmp_path, action):
    """A file that kills or hangs its worker costs a bounded number of tries, never the daemon."""
    d = Daemon(tmp_path, extra="[ingest]\nmax_tries = 2\n[workers]\nprocesses = 1\ningest_timeout = 3\n",
               env={"CCDWATCH_FAULTS": f"ingest@/poison.fits={action}"})
    try:
        d.start()
        (d.incoming / "poison.fits").write_bytes(frame_bytes(tmp_path, seed=40))
        d.wait_for("SELECT count(*) FROM frames WHERE state = 'quarantined'", [(1,)], timeout=60)
        reason = d.query("SELECT state_reason FROM frames WHERE state = 'quarantined'")[0][0]
        assert "after 2 tries" in reason
        assert ("overran" in reason) if action == "hang" else ("died" in reason)
        (d.incoming / "good.fits").write_bytes(frame_bytes(tmp_path, seed=41))
        d.wait_for("SELECT count(*) FROM frames WHERE state = 'ingested'", [(1,)], timeout=60)
        n = len(d.messages)
        time.sleep(1.5)
        assert any("WATCHDOG=1" in m for m in d.messages[n:]), "the healthy daemon stopped its watchdog"
        assert d.stop() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()


def test_watchdog_stops_when_the_worker_loop_hangs(tmp_path):
    """With jobs run inside the daemon (processes = 0) a hang stalls the loop: no more WATCHDOG=1,
    so systemd's WatchdogSec kills and restarts the service."""
    d = Daemon(tmp_path, extra="[workers]\nprocesses = 0\n", env={"CCDWATCH_FAULTS": "ingest@/stuck.fits=hang"})
    try:
        d.start()
        d.wait_message("WATCHDOG=1", timeout=10)
        (d.incoming / "stuck.fits").write_bytes(frame_bytes(tmp_path, seed=42))
        time.sleep(3.0)  # settle (0.5 s), then the hang
        n = len(d.messages)
        time.sleep(3.0)
        assert not any("WATCHDOG=1" in m for m in d.messages[n:])
    finally:
        d.proc.kill()
        d.proc.wait()


def test_disk_full_pauses_and_resumes_by_itself(tmp_path):
    """ENOSPC while writing a master: no partial product, frames keep their state, STATUS says
    paused, and the master is built once space returns, with nobody touching the daemon."""
    marker = tmp_path / "disk-is-full"
    marker.touch()
    d = Daemon(tmp_path, extra="[masters]\nsettle_seconds = 0\n",
               env={"CCDWATCH_FAULTS": f"product-write=enospc?{marker}"})
    # [watch] is written by Daemon; retry the paused work every second.
    d.cfg.write_text(d.cfg.read_text().replace("rescan_interval = 0", "rescan_interval = 0\npause_retry_seconds = 1"))
    try:
        d.start()
        for i in range(3):
            (d.incoming / f"bias_{i}.fits").write_bytes(frame_bytes(tmp_path, seed=60 + i))
        d.wait_for("SELECT count(*) FROM frames WHERE state = 'ingested'", [(3,)])
        d.wait_message("STATUS=paused: disk full", timeout=30)
        assert d.query("SELECT count(*) FROM masters") == [(0,)]
        assert not [p for p in (tmp_path / "products").rglob("*") if p.is_file() and p.suffix == ".fits"]
        marker.unlink()  # space returns
        d.wait_for("SELECT count(*) FROM masters", [(1,)], timeout=30)
        d.wait_for("SELECT count(*) FROM frames WHERE state = 'used'", [(3,)])
        assert d.stop() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()


def test_burst_of_small_files_is_catalogued_once_with_bounded_memory(daemon):
    """1,000 frames land within a second or two (the benchmark does 5,000): each is catalogued
    once, no 'database is locked' anywhere, and the daemon's peak memory stays modest."""
    daemon.start()
    blobs = [frame_bytes(daemon.tmp, seed=1000 + i) for i in range(8)]
    staging = daemon.tmp / "staging"
    staging.mkdir()
    for i in range(1000):  # distinct content: a changed card in a copy of one of 8 frames
        blob = bytearray(blobs[i % 8])
        card = f"OBSERVER= 'burst {i:05d}'".ljust(80).encode()
        at = blob.index(b"END" + b" " * 77)
        blob[at:at + 80] = card
        blob[at + 80:at + 160] = b"END".ljust(80)
        (staging / f"b{i:05d}.fits").write_bytes(bytes(blob))
    for p in sorted(staging.iterdir()):
        p.rename(daemon.incoming / p.name)
    daemon.wait_for("SELECT count(*) FROM frames", [(1000,)], timeout=240)
    assert daemon.query("SELECT count(*) FROM files") == [(1000,)]
    assert daemon.query("SELECT count(*) FROM events WHERE kind = 'ingested'") == [(1000,)]
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    assert daemon.stop() == 0
    log = (daemon.tmp / "daemon.log").read_text()
    assert "database is locked" not in log
    assert peak_kb < 600_000, f"daemon peak RSS {peak_kb / 1024:.0f} MiB"


def test_polling_observer_for_network_mounts(tmp_path):
    d = Daemon(tmp_path)
    d.cfg.write_text(d.cfg.read_text().replace("rescan_interval = 0", "rescan_interval = 0\nobserver = 'polling'"))
    try:
        d.start()
        src = tmp_path / "copied.fits"
        src.write_bytes(frame_bytes(tmp_path, seed=77))
        shutil.copy(src, d.incoming / "copied.fits")
        d.wait_for("SELECT count(*) FROM frames", [(1,)])
        assert d.stop() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()


def test_dead_observer_thread_makes_the_daemon_exit_nonzero(tmp_path, monkeypatch):
    """watchdog can lose its thread silently; the loop notices and exits 3 so systemd restarts."""
    from ccdwatch.catalog import Catalog
    from ccdwatch.daemon.watch import EXIT_OBSERVER_DIED, Watcher
    from ccdwatch.pipeline import Pipeline

    from .helpers import make_config

    cfg = make_config(tmp_path, workers={"processes": 0})
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        watcher = Watcher(cfg, pipe, progress=False)
        real = watcher._make_observer

        def doomed():
            obs = real()
            original = obs.start

            def start():
                original()
                obs.stop()  # the observer thread ends right after start-up
                obs.join(5)
            obs.start = start
            return obs

        monkeypatch.setattr(watcher, "_make_observer", doomed)
        assert watcher.run() == EXIT_OBSERVER_DIED


def test_sigterm_abandons_a_long_job_promptly(tmp_path):
    """A worker stuck in a job must not hold up a stop until systemd's SIGKILL: the job is
    abandoned (and redone at the next start), the daemon exits 0 within seconds."""
    d = Daemon(tmp_path, extra="[workers]\nprocesses = 1\ningest_timeout = 600\n",
               env={"CCDWATCH_FAULTS": "ingest@/slowjob.fits=hang"})
    try:
        d.start()
        (d.incoming / "slowjob.fits").write_bytes(frame_bytes(tmp_path, seed=80))
        time.sleep(3.0)  # settled and handed to the worker, which hangs
        t0 = time.time()
        assert d.stop() == 0
        assert time.time() - t0 < 10
        assert d.query("SELECT count(*) FROM frames") == [(0,)]  # nothing charged to the file
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()


def test_the_loop_waits_for_events_no_longer_than_the_next_tick(tmp_path, monkeypatch):
    """The loop waits for filesystem events up to half the settle time, but never past a due
    tick: a stack group that closes in 0.1 s is stacked then, not at the end of the wait."""
    from ccdwatch.catalog import Catalog
    from ccdwatch.daemon.watch import Watcher
    from ccdwatch.pipeline import Pipeline

    from .helpers import make_config

    cfg = make_config(tmp_path, workers={"processes": 0}, watch={"settle_seconds": 2.0})
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        watcher = Watcher(cfg, pipe, progress=False)
        waits: list[float] = []
        monkeypatch.setattr(watcher, "drain_events", waits.append)
        monkeypatch.setattr(pipe, "tick", lambda: None)
        far = time.monotonic() + 3600.0
        due = {"tick": time.monotonic() + 0.1, "status": far, "snapshot": far, "rescan": far}
        watcher._iteration(due)
        due["tick"] = far
        watcher._iteration(due)
    assert 0.0 <= waits[0] <= 0.1  # the tick is due in 0.1 s
    assert waits[1] == 0.5  # nothing due soon: half the settle time, at most 0.5 s


def test_ctrl_c_at_a_terminal_stops_a_catch_up_cleanly(tmp_path):
    """Ctrl-C at a terminal sends SIGINT to the whole process group, the workers included. The
    workers leave it to the daemon, which stops as on SIGTERM: exit 0, no traceback, no process
    left in the group (a worker's job used to end with KeyboardInterrupt, which came back through
    its future and ended the daemon with the worker's traceback)."""
    d = Daemon(tmp_path)  # for its configuration only
    synth.make_night(d.incoming, camera=CAMERA, seed=3, n_bias=3, n_dark=3, n_flat=3, filters=("V",), n_light=3,
                     light_exptime=30.0, dark_exptime=30.0, flat_exptime=3.0, n_stars=20)
    env = dict(os.environ, CCDWATCH_FAULTS="calibrate=hang")  # a light's job that would run for an hour
    proc = subprocess.Popen([sys.executable, "-m", "ccdwatch", "--config", str(d.cfg), "watch", "--once"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            try:
                if d.db.exists() and d.query("SELECT COUNT(*) FROM masters") == [(3,)]:
                    break
            except sqlite3.OperationalError:  # no table yet
                pass
            time.sleep(0.2)
        time.sleep(1.5)  # the lights' jobs are in the workers, hanging
        assert proc.poll() is None, proc.communicate()[0].decode()
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # any process of the group still there?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("processes of the daemon's group outlived it")


def test_incoming_through_a_symlink_and_a_directory_that_comes_back(tmp_path):
    """``paths.incoming`` a symlink to the real directory (a NAS mount): files are seen live (inotify
    watched the link itself and never reported one) and recorded under the configured path; the
    directory removed and made again (a disk unplugged and plugged in, a share mounted again): it
    is watched anew and rescanned, though the periodic rescan is off."""
    d = Daemon(tmp_path)
    real = tmp_path / "nas" / "night"
    real.mkdir(parents=True)
    d.incoming.rmdir()
    d.incoming.symlink_to(real, target_is_directory=True)
    try:
        d.start()
        (real / "a.fits").write_bytes(frame_bytes(tmp_path, seed=11))
        d.wait_for("SELECT path FROM files", [(str(d.incoming / "a.fits"),)], timeout=15)
        shutil.rmtree(real)  # unplugged ...
        time.sleep(1.0)
        real.mkdir()  # ... and back, empty, with a new inode
        (d.incoming / "b.fits").write_bytes(frame_bytes(tmp_path, seed=12))
        d.wait_for("SELECT count(*) FROM frames WHERE path LIKE '%b.fits'", [(1,)], timeout=20)
        assert "watching it anew" in (tmp_path / "daemon.log").read_text()
        assert d.stop() == 0
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()


def test_a_frame_moved_to_a_hidden_trash_folder_is_gone_not_kept(daemon):
    """A file manager's delete on a USB disk moves the file into ``.Trash-1000/files/`` below the
    incoming directory: the scans skip hidden folders, and the events now do too, so the frame is
    missing rather than kept alive by its copy in the trash."""
    daemon.start()
    (daemon.incoming / "flat_003.fits").write_bytes(frame_bytes(daemon.tmp, kind="flat", seed=13))
    daemon.wait_for("SELECT count(*) FROM frames", [(1,)])
    trash = daemon.incoming / ".Trash-1000" / "files"
    trash.mkdir(parents=True)
    (daemon.incoming / "flat_003.fits").rename(trash / "flat_003.fits")
    time.sleep(2.0)  # settle_seconds 0.5: its move event handled by now
    assert daemon.query("SELECT count(*) FROM files WHERE path LIKE '%.Trash%'") == [(0,)]
    assert daemon.stop() == 0


def test_an_inotify_overflow_asks_for_a_rescan_without_recursion_too(tmp_path):
    """watchdog 7 logs a kernel queue overflow on its reader's logger, and on its watch group's only
    when rebuilding recursive watches: with ``watch.recursive = false`` the overflow went unheard."""
    import logging

    from watchdog.observers.inotify import InotifyObserver
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    from ccdwatch.daemon.inbox import Inbox
    from ccdwatch.daemon.watch import OVERFLOW_LOGGERS, WATCHED_EVENTS, _Enqueue, _OverflowWatch

    for recursive in (True, False):
        q, where = Inbox(), tmp_path / f"r{recursive}"
        where.mkdir()
        overflow = _OverflowWatch(q)
        for name in OVERFLOW_LOGGERS:
            logging.getLogger(name).addFilter(overflow)
        obs = InotifyObserver(generate_full_events=True)
        try:
            obs.schedule(_Enqueue(q), str(where), recursive=recursive, event_filter=WATCHED_EVENTS)
            obs.start()
            reader = getattr(obs, "_inotify_fd", None)
            if reader is None:
                pytest.skip("this watchdog reports overflows another way (no shared inotify reader)")
            # the kernel's IN_Q_OVERFLOW (wd -1), as the reader hands it over
            reader.handle_event(InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b""))
            assert ("overflow", "") in list(q.take()), recursive
        finally:
            obs.stop()
            obs.join(5)
            for name in OVERFLOW_LOGGERS:
                logging.getLogger(name).removeFilter(overflow)
