"""What a real night does to a running daemon: signals at random moments, a catalogue disk that
fills up, raw files that vanish or are rewritten while it works.

The daemon runs as systemd runs it (:class:`tests.test_daemon.Daemon`: a subprocess, inotify, a
fake NOTIFY_SOCKET); its products are checked against ``watch --once`` on the same files
(:func:`tests.test_crash.signature`: every product's name and bytes, the catalogue's states).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from astropy.io import fits

from ccdwatch import synth

from .test_crash import run_once, signature
from .test_daemon import Daemon

CAMERA = synth.Camera(shape=(96, 128))
#: Processing as soon as possible: masters as soon as lights wait for them, stacks once quiet.
FAST = """min_free_mb = 1
pause_retry_seconds = 1
[masters]
settle_seconds = 0
[stack]
quiet_minutes = 0.01
"""


@pytest.fixture(scope="module")
def staging(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("live-staging")
    synth.make_night(d, camera=CAMERA, seed=9, n_bias=3, n_dark=3, n_flat=3, filters=("V",), n_light=3,
                     n_stars=40)
    return d


@pytest.fixture
def daemons():
    """Daemons started by a test, killed at teardown if still running."""
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def log_text(d: Daemon) -> str:
    return (d.tmp / "daemon.log").read_text(errors="replace")


STATES = "SELECT state, count(*) FROM frames GROUP BY state ORDER BY state"


def night_done(d: Daemon, n_lights: int = 3, timeout: float = 120) -> None:
    """Masters built, every light stacked, nothing waiting, failed or quarantined."""
    d.wait_for(STATES, [("stacked", n_lights), ("used", 9)], timeout=timeout)


def sigterm(d: Daemon, budget: float = 30.0) -> tuple[float, int | None]:
    """SIGTERM the daemon; (seconds until it exited, exit code), the code None if it hung."""
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = d.proc.wait(budget)
    except subprocess.TimeoutExpired:
        code = None
        d.proc.kill()
        d.proc.wait()
    took = time.monotonic() - t0
    d._listening = False
    d._listener.join(2)
    d.sock.close()
    d.log.close()
    return took, code


def sigkill(d: Daemon) -> None:
    d.proc.kill()
    d.proc.wait()
    d._listening = False
    d._listener.join(2)
    d.sock.close()
    d.log.close()


def events(d: Daemon) -> int:
    try:
        return int(d.query("SELECT count(*) FROM events")[0][0])
    except Exception:  # noqa: BLE001 - no catalogue (or no table) yet
        return 0


def night_is_done(d: Daemon, n_lights: int = 3) -> bool:
    """What :func:`night_done` waits for, now."""
    try:
        return d.query(STATES) == [("stacked", n_lights), ("used", 9)]
    except Exception:  # noqa: BLE001 - no catalogue (or no table) yet
        return False


def kill_mid_work(d: Daemon, rng: random.Random, timeout: float = 30.0) -> bool:
    """SIGKILL ``d`` at a random moment once this start has committed something (or ``timeout``):
    a fixed delay after READY lands before the first job on a loaded machine (the fork server's
    imports), where a kill proves nothing. Returns whether the night still had work left when the
    kill landed (a daemon that has finished the night commits nothing more: no wait for it)."""
    t0, seen = time.monotonic(), events(d)
    while events(d) == seen and not night_is_done(d) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.25))
    mid_work = not night_is_done(d)
    sigkill(d)
    return mid_work


def copier(files: list[Path], incoming: Path, stop: threading.Event, pause: float = 0.4) -> threading.Thread:
    """Files arriving one by one, as a camera writes them, until all are in or ``stop``."""
    def run() -> None:
        for p in files:
            if stop.wait(pause):
                return
            shutil.copy(p, incoming / p.name)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_sigterm_at_random_moments_never_hangs(tmp_path, staging, daemons):
    """18 starts, each stopped after 0.2-2 s while files arrive and jobs run: every stop ends
    in exit 0 within 5 s, and the night then completes as if nothing had happened. (A start's
    first job begins 0.7-1.2 s after READY and these frames' jobs take well under a second: 2 s
    reach into its scan, settle time and jobs as 3 s did.)"""
    rng = random.Random(8)
    d = Daemon(tmp_path, extra=FAST)
    daemons.append(d)
    files = sorted(staging.glob("*.fits"), key=lambda p: rng.random())
    stop = threading.Event()
    writer = copier(files, d.incoming, stop, pause=1.7)  # arriving over the first ~9 starts
    exits: list[tuple[float, float, int | None]] = []
    try:
        for _ in range(18):
            d.messages.clear()  # READY of this start, not of the last one
            d.start()
            delay = rng.uniform(0.2, 2.0)
            time.sleep(delay)
            took, code = sigterm(d)
            exits.append((delay, took, code))
    finally:
        stop.set()
        writer.join(10)
    for p in files:  # the files the writer did not get to
        if not (d.incoming / p.name).exists():
            shutil.copy(p, d.incoming / p.name)
    hangs = [e for e in exits if e[2] is None]
    times = [t for _, t, _ in exits]
    print("\n" + " ".join(f"{delay:.2f}->{took:.2f}" for delay, took, _ in exits))
    print(f"SIGTERM x{len(exits)}: {len(hangs)} hangs; exit s median {statistics.median(times):.2f}, "
          f"max {max(times):.2f}; codes {sorted({c for *_, c in exits}, key=str)}")
    assert not hangs, f"hung after SIGTERM: {hangs}"
    assert all(code == 0 for *_, code in exits), exits
    assert max(times) < 5.0, exits
    d.messages.clear()
    d.start()
    night_done(d)
    assert sigterm(d)[1] == 0
    assert "Traceback" not in log_text(d)


def test_a_signal_ends_the_loops_wait_at_once():
    """The loop's wait (select on the inbox's self-pipe) ends when a signal handler wakes it,
    however long the wait was meant to be: the stop is never held until a timeout that a signal
    run past its deadline could make endless (the old SimpleQueue.get(timeout=...))."""
    from ccdwatch.daemon.inbox import Inbox

    inbox = Inbox()
    woken = threading.Event()
    old = signal.signal(signal.SIGUSR1, lambda *_: (woken.set(), inbox.wake()))
    try:
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.start()
        t0 = time.monotonic()
        inbox.wait(120)
        assert woken.is_set() and time.monotonic() - t0 < 60
        timer.join()
        inbox.put(("created", "/x.fits"))
        inbox.wait(120)  # an item already queued: no wait at all
        assert list(inbox.take()) == [("created", "/x.fits")] and inbox.empty()
    finally:
        signal.signal(signal.SIGUSR1, old)
        inbox.close()


SLOW_SERVER = textwrap.dedent(
    """
    import os, signal, threading
    from ccdwatch.jobs import forkserver, pool
    forkserver.PRELOAD = ["slow_import"]  # a fork server still importing, as on a loaded machine
    stop = threading.Event()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # what the daemon's handler does
    workers = pool.Workers(processes=1, memory_limit=0, should_stop=stop.is_set)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        workers.map(abs, [-1], timeout=120)
        print("ran")
    except pool.Stopping:
        print("stopped")
    """
)


def test_sigterm_while_the_fork_server_still_imports_is_not_held(tmp_path):
    """Starting the first worker waits for the fork server's imports (seconds on a loaded machine,
    and the live daemon's first job comes right after start-up): a stop request meanwhile ends
    the wait at once instead of when the server answers. Here the server would answer after 60 s."""
    (tmp_path / "slow_import.py").write_text(
        "import os, time\n"
        "parent, end = os.getppid(), time.monotonic() + 60\n"
        "while os.getppid() == parent and time.monotonic() < end:  # until the test's process is gone\n"
        "    time.sleep(0.05)\n")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(root)]))  # the server's path too
    done = subprocess.run([sys.executable, "-c", SLOW_SERVER], capture_output=True, text=True, timeout=40, cwd=root,
                          env=env)
    assert done.stdout.split() == ["stopped"], done.stdout + done.stderr
    assert "Traceback" not in done.stderr  # no request was left for the server: no stray worker


READY = textwrap.dedent(
    """
    import os
    from ccdwatch.jobs import forkserver, pool
    workers = pool.Workers(processes=1, memory_limit=0)
    print(workers.run(abs, -3, timeout=120), forkserver.ready(), os.path.exists(forkserver._ready_file))
    workers.close()
    """
)


def test_the_fork_server_says_when_its_imports_are_done(tmp_path):
    """The real preload marks the server ready (else every first job would wait out the limit)."""
    env = {k: v for k, v in os.environ.items() if k != "CCDWATCH_FORKSERVER_READY"}
    done = subprocess.run([sys.executable, "-c", READY], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1], env=env)
    assert done.stdout.split() == ["3", "True", "True"], done.stdout + done.stderr


@pytest.fixture(scope="module")
def reference(staging, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("live-reference")
    assert run_once(root, staging) == 0
    return signature(root)


@pytest.mark.slow
def test_sigkill_at_random_moments_converges_byte_for_byte(tmp_path, staging, reference, daemons):
    """A power cut at random moments (6 of them) while the daemon catches up on a night, each
    0-0.25 s after that start has committed some work: the restarted daemon ends with the products
    of an uninterrupted ``watch --once``, name for name and byte for byte. The night takes ~5 such
    starts: the cuts land in its ingest, masters, calibrations and stack (with up to 1.5 s, 4 of
    the 6 came after the night was done, each after a 30 s wait for a commit that never came)."""
    rng = random.Random(11)
    d = Daemon(tmp_path, extra=FAST)
    daemons.append(d)
    for p in sorted(staging.glob("*.fits"), key=lambda p: rng.random()):
        shutil.copy2(p, d.incoming / p.name)
    mid_work = []
    for _ in range(6):
        d.messages.clear()
        d.start()
        mid_work.append(kill_mid_work(d, rng))
    print(f"\nSIGKILL x6, with work left: {mid_work}")
    assert sum(mid_work) >= 2, "the cuts came after the night was done: they proved nothing"
    d.messages.clear()
    d.start()
    night_done(d)
    assert sigterm(d)[1] == 0
    assert signature(tmp_path, d.db) == reference


def fill(path: Path) -> int:
    """Write zeros to ``path`` until its filesystem is full; the bytes written."""
    n = 0
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                n += fh.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        try:  # the last partial block
            while fh.write(b"\0" * 512):
                n += 512
        except OSError:
            pass
    return n


@pytest.fixture
def small_state_disk(tmp_path):
    """``tmp_path/state`` on a 3 MiB tmpfs (skipped where mounting is not allowed)."""
    state = tmp_path / "state"
    state.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(state)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield state
    if subprocess.run(["umount", str(state)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)


def _started_with_its_biases(tmp_path, staging, daemons) -> Daemon:
    """A live daemon (fast settings) that has catalogued the night's 3 biases."""
    d = Daemon(tmp_path, extra=FAST)
    daemons.append(d)
    d.start()
    for p in sorted(staging.glob("bias_*.fits")):
        shutil.copy(p, d.incoming / p.name)
    d.wait_for("SELECT count(*) FROM frames", [(3,)])
    return d


def test_catalogue_disk_full_mid_night_pauses_then_resumes(tmp_path, staging, small_state_disk, daemons):
    d = _started_with_its_biases(tmp_path, staging, daemons)
    filler = small_state_disk / "filler"
    assert fill(filler) > 0
    for p in sorted(staging.glob("*.fits")):
        if not p.name.startswith("bias"):
            shutil.copy(p, d.incoming / p.name)
    d.wait_message("STATUS=paused: disk full (catalogue", timeout=60)
    n = len(d.messages)
    time.sleep(3.0)  # paused, not dead, not spinning on errors: still paused a few seconds later
    assert d.proc.poll() is None
    statuses = [m for m in d.messages if m.startswith("STATUS=")]  # sent when it changes
    assert statuses[-1].startswith("STATUS=paused: disk full"), statuses[-3:]
    assert any("WATCHDOG=1" in m for m in d.messages[n:]), "a paused daemon is healthy: WATCHDOG goes on"
    frames_while_full = d.query("SELECT count(*) FROM frames")[0][0]
    filler.unlink()  # space returns
    night_done(d, timeout=120)
    assert frames_while_full < 12
    assert sigterm(d)[1] == 0
    log = log_text(d)
    assert "Traceback" not in log and "pausing: catalogue" in log and "resuming after the pause" in log


def test_a_daemon_started_on_a_full_catalogue_disk_exits_in_words_and_starts_once_space_returns(
        tmp_path, staging, small_state_disk, daemons):
    """Restarted while the catalogue's disk is still full (SQLite cannot even open it in WAL mode:
    'disk I/O error'): exit 7 with the reason in words, no traceback - the unit starts it again
    every RestartSec= without ever reaching its start limit - and once space returns it starts and
    finishes the night."""
    d = _started_with_its_biases(tmp_path, staging, daemons)
    assert sigterm(d)[1] == 0
    filler = small_state_disk / "filler"
    assert fill(filler) > 0
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    done = subprocess.run([sys.executable, "-m", "ccdwatch.cli", "--config", str(d.cfg), "watch"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 7, done.stderr[-3000:]
    assert "ccdwatch: the catalogue's disk is full" in done.stderr and "Traceback" not in done.stderr
    filler.unlink()
    for p in sorted(staging.glob("*.fits")):
        if not p.name.startswith("bias"):
            shutil.copy(p, d.incoming / p.name)
    d.messages.clear()
    d.start()
    night_done(d)
    assert sigterm(d)[1] == 0


def test_vanished_bias_and_overwritten_dark_while_running(tmp_path, staging, daemons):
    """A bias deleted before its master is built is ``missing`` (never charged to the others) and
    returns by itself; a dark rewritten in place supersedes its old frame, the master dark gets a
    new version without it, and the lights are recalibrated and restacked on that version; a
    light whose header a plate solver edits in place is restacked as the same exposure."""
    d = Daemon(tmp_path, extra=FAST.replace("settle_seconds = 0", "settle_seconds = 4"))
    daemons.append(d)
    d.start()
    extra = tmp_path / "extra"  # five biases: one can go and three remain
    synth.make_night(extra, camera=CAMERA, seed=9, n_bias=5, n_dark=0, n_flat=0, filters=(), n_light=0)
    for p in sorted(extra.glob("bias_*.fits")):
        shutil.copy(p, d.incoming / p.name)
    d.wait_for("SELECT count(*) FROM frames", [(5,)])
    gone = d.incoming / "bias_004.fits"
    gone.unlink()  # before the master (settle 4 s) is built
    d.wait_for("SELECT n_frames FROM masters WHERE kind = 'bias'", [(4,)], timeout=60)
    assert d.query("SELECT state, tries FROM frames WHERE path LIKE '%bias_004.fits'") == [("missing", 0)]
    shutil.copy(extra / "bias_004.fits", gone)  # it comes back: a new version with it
    d.wait_for("SELECT n_frames FROM masters WHERE kind = 'bias' ORDER BY version", [(4,), (5,)], timeout=60)
    assert d.query("SELECT count(*) FROM frames WHERE state = 'missing' OR state = 'failed'") == [(0,)]

    for p in sorted(staging.glob("*.fits")):
        if not p.name.startswith("bias"):
            shutil.copy(p, d.incoming / p.name)
    d.wait_for("SELECT count(*) FROM frames WHERE state = 'stacked'", [(3,)], timeout=120)
    dark = d.incoming / "dark_300s_002.fits"
    with fits.open(dark, mode="update") as hdul:  # a program edits a card in place: same exposure
        hdul[0].header["OBSERVER"] = "edited after the fact"
    d.wait_for("SELECT version, n_frames FROM masters WHERE kind = 'dark' ORDER BY version",
               [(1, 3), (2, 3)], timeout=60)
    (dark_v2,) = d.query("SELECT id FROM masters WHERE kind = 'dark' AND version = 2")[0]
    d.wait_for(f"SELECT count(*) FROM calibrated WHERE current AND dark_id = {dark_v2}", [(3,)], timeout=60)
    d.wait_for("SELECT version, n_used FROM stacks ORDER BY version", [(1, 3), (2, 3)], timeout=60)
    superseded = d.query("SELECT id FROM frames WHERE state = 'superseded'")
    assert len(superseded) == 1
    inputs = d.query(f"SELECT frame_id FROM master_inputs WHERE master_id = {dark_v2}")
    assert superseded[0] not in inputs and len(inputs) == 3

    light = sorted(d.incoming.glob("M51_V_*.fits"))[1]
    with fits.open(light, mode="update") as hdul:  # a plate solver writes WCS into the raw light
        hdul[0].header["CTYPE1"] = "RA---TAN"
        hdul[0].header["CTYPE2"] = "DEC--TAN"
    d.wait_for("SELECT version, n_used FROM stacks ORDER BY version", [(1, 3), (2, 3), (3, 3)], timeout=60)
    (exptime,) = d.query(f"SELECT DISTINCT exptime FROM frames WHERE path = '{light}'")[0]
    assert d.query("SELECT total_exposure FROM stacks WHERE current") == [(3 * exptime,)]  # 3 exposures, not 4
    assert d.query("SELECT imagetyp, count(*) FROM frames WHERE state = 'superseded' GROUP BY imagetyp "
                   "ORDER BY imagetyp") == [("dark", 1), ("light", 1)]
    assert d.query("SELECT count(*) FROM frames WHERE state IN ('failed', 'quarantined')") == [(0,)]
    assert sigterm(d)[1] == 0
    assert "Traceback" not in log_text(d)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="process tree from /proc: Linux")
def test_workers_die_with_a_daemon_killed_outside_systemd(tmp_path, staging, daemons):
    """SIGKILL of the daemon alone (no control group to clean up after it): its fork server and
    its workers, warm with a night's numerics (~400 MB), do not outlive it."""
    d = Daemon(tmp_path, extra=FAST)
    daemons.append(d)
    d.start()
    for p in sorted(staging.glob("*.fits")):
        shutil.copy(p, d.incoming / p.name)
    night_done(d)
    tree = descendants(d.proc.pid)
    assert len(tree) >= 3, tree  # the fork server and the two workers at least
    sigkill(d)
    end = time.monotonic() + 20
    while any(alive(p) for p in tree) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [p for p in tree if alive(p)], "processes outlived the daemon"


def test_a_light_with_nan_and_inf_pixels_in_the_live_daemon(tmp_path, staging, daemons):
    """A float light with a NaN block and infinite pixels, arriving at a running daemon: calibrated
    and stacked with those pixels masked, said at WARNING in the log, no traceback."""
    d = Daemon(tmp_path, extra=FAST)
    daemons.append(d)
    d.start()
    victim = sorted(staging.glob("M51_V_*.fits"))[1]
    for p in sorted(staging.glob("*.fits")):
        if p != victim:
            shutil.copy(p, d.incoming / p.name)
    with fits.open(victim) as hdul:
        header, raw = hdul[0].header.copy(), hdul[0].data.astype("float32")
    raw[10:20, 30:50] = float("nan")
    raw[50, 60], raw[70, 20] = float("inf"), float("-inf")
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    fits.PrimaryHDU(raw, header=header).writeto(tmp_path / victim.name)
    shutil.move(tmp_path / victim.name, d.incoming / victim.name)  # moved into place, as a camera does
    night_done(d)
    assert d.query("SELECT n_used FROM stacks WHERE current") == [(3,)]
    assert d.query("SELECT e.detail FROM events e JOIN frames f ON f.id = e.frame_id "
                   f"WHERE e.kind = 'masked' AND f.path LIKE '%{victim.name}'") == [
        (f"{200 + 2} raw pixel(s) were NaN or infinite: masked (NaN in the calibrated frame, left out of its "
         "quality measurement and of stacks)",)]
    assert sigterm(d)[1] == 0
    log = log_text(d)
    assert "WARNING" in log and "were NaN or infinite" in log and "Traceback" not in log


IDLE_DEATH = textwrap.dedent(
    """
    import os, signal, time
    from ccdwatch.jobs import pool
    workers = pool.Workers(processes=2, memory_limit=0)
    print(workers.run(abs, -3, timeout=120))
    for proc in list(workers._executor()._processes.values()):  # killed while idle, as by the OOM killer
        os.kill(proc.pid, signal.SIGKILL)
    time.sleep(1.0)  # the executor notices and marks itself broken
    print([f.result() for f in workers.map(abs, [-4, -5], timeout=120)])
    workers.close()
    """
)


def test_a_worker_killed_between_jobs_does_not_take_the_next_jobs_down(tmp_path):
    """The workers killed while no job runs: the next jobs run on fresh workers (the daemon used
    to die of the pool's BrokenProcessPool at the next submit, live, between a night's stages)."""
    done = subprocess.run([sys.executable, "-c", IDLE_DEATH], capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split() == ["3", "[4,", "5]"], done.stdout + done.stderr
    assert "starting fresh workers" in done.stderr
