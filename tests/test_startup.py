"""What the daemon's process and the workers' fork server import at start-up (issue 7: start-up
is ~1 s of a 2k night, so each avoidable import is measurable)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _modules_after(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code + "\nimport gc, json, sys\n"
                          "print(json.dumps({'modules': sorted(sys.modules), 'gc_enabled': gc.isenabled(),"
                          " 'frozen': gc.get_freeze_count()}))"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_fork_server_preload_is_warm_frozen_and_leaves_the_collector_on():
    state = _modules_after("import ccdwatch.jobs._preload")
    modules = set(state["modules"])
    for name in ("ccdwatch.jobs.tasks", "ccdwatch.previews", "ccdwatch.report.figures", "sep", "cv2"):
        assert name in modules, f"workers would import {name} on their first job"
    # alignment needs no SciPy (`ccdwatch.neighbours`): it was ~0.2 s of the server's start; the rare warps
    # that do (spline orders, many missing pixels: `ccdwatch.resample`) import scipy.ndimage themselves
    assert not any(m == "scipy" or m.startswith("scipy.") for m in modules), "the fork server imports SciPy"
    assert not any(m == "alembic" or m.startswith("alembic.") for m in modules), "workers never migrate"
    # workers never read the catalogue: SQLAlchemy and the models were ~0.4 s of the server's start
    for name in ("sqlalchemy", "ccdwatch.models", "ccdwatch.catalog", "ccdwatch.report.collect"):
        assert name not in modules, f"the fork server imports {name}, which no job uses"
    assert state["gc_enabled"], "workers forked from the server must collect cycles"
    assert state["frozen"] > 100_000, "the preloaded heap should be frozen before forking"


def test_daemon_process_does_not_load_what_only_workers_use():
    modules = set(_modules_after("import ccdwatch.cli, ccdwatch.pipeline, ccdwatch.daemon.watch")["modules"])
    assert "ccdwatch.pipeline.core" in modules  # the import did run
    assert "scipy.spatial" not in modules  # alignment runs on the workers only
    assert "matplotlib" not in modules
    # the job descriptions and the jobs' numerics come with the first planned job (issue 17:
    # `watch --once` with nothing to do never needs them)
    for name in ("ccdwatch.jobs.tasks", "ccdwatch.qa", "sep", "cv2", "numpy", "astropy", "ccdwatch.calib"):
        assert name not in modules, f"the daemon imports {name} before it has a job"


def test_what_the_daemon_calls_to_plan_masters_and_read_ahead_loads_no_numpy(tmp_path):
    """Sizing a master's job (`memory.master`: the strips of `calib.combine`), naming the products'
    compression and reading raws ahead are the daemon's, between jobs: importing numpy and astropy
    there (~0.15-0.3 s) held the workers' first master and the ingest of a night."""
    raw = tmp_path / "raw.fits"
    raw.write_bytes(b"\0" * 2880)
    modules = set(_modules_after(
        "from ccdwatch.jobs import memory\n"
        "from ccdwatch.fitsio import read_ahead\n"
        "from ccdwatch.pipeline.context import Context\n"
        "from ccdwatch.fitsio.compress import Compression\n"
        "need = memory.master(memory.FrameSize(2048, 2048), kind='flat', n=10, threads=2, budget=1 << 30,\n"
        "                     bias=True, dark=True)\n"
        "assert need > 10 * 4 * 2048 * 2048, need\n"
        f"read_ahead([{str(raw)!r}], 1 << 20)\n"
        "assert Compression('gzip').active\n")["modules"])
    assert "ccdwatch.strips" in modules  # the strips were sized
    for name in ("numpy", "astropy", "ccdwatch.calib", "ccdwatch.fitsio.raw"):
        assert name not in modules, f"planning a master or reading ahead imports {name}"


def test_the_pool_imports_what_the_daemon_asks_for_while_the_fork_server_starts():
    """`Workers.meanwhile`: the modules the daemon needs for the jobs' results (the calibrated
    lights' quality: numpy, sep, OpenCV) load in a thread while it waits for the fork server."""
    code = ("import threading\n"
            "from ccdwatch.jobs import forkserver, pool\n"
            "w = pool.Workers(processes=1, meanwhile=('ccdwatch.qa',))\n"
            "[f] = w.map(abs, [-3], timeout=120)\n"
            "assert f.result() == 3 and w.meanwhile == ()  # imported once\n"
            "for t in threading.enumerate():\n"
            "    if t.name == 'imports':\n"
            "        t.join(60)\n"
            "w.close()\n")
    modules = set(_modules_after(code)["modules"])
    assert "ccdwatch.qa" in modules and "numpy" in modules


def test_watch_once_with_nothing_to_do_needs_neither_numpy_nor_astropy(tmp_path):
    """The timer-driven ``watch --once`` that finds nothing new (issue 17's start-up target): the
    catalogue, the configuration and the scan only; FITS and the numerics load with the first file."""
    (tmp_path / "incoming").mkdir()
    argv = ["watch", "--once", "-q", "--incoming", str(tmp_path / "incoming"),
            "--products", str(tmp_path / "products"), "--db", str(tmp_path / "catalogue.db")]
    run = f"import ccdwatch.cli\ntry:\n    ccdwatch.cli.main({argv!r})\nexcept SystemExit:\n    pass"
    _modules_after(run)  # the first run creates the catalogue
    modules = set(_modules_after(run)["modules"])
    assert "ccdwatch.pipeline.core" in modules and "sqlalchemy" in modules  # the run did happen
    for name in ("numpy", "astropy", "ccdwatch.calib", "ccdwatch.fitsio.raw", "ccdwatch.jobs.tasks"):
        assert name not in modules, f"watch --once with nothing to do imports {name}"


def test_the_console_script_starts_the_fork_server_before_the_command_line_loads(tmp_path, monkeypatch):
    """`ccdwatch.__main__` starts the workers' fork server for a `watch` that will run local jobs,
    from the arguments and the configuration alone, before `ccdwatch.cli` imports SQLAlchemy;
    anything else starts nothing (the command line then decides, and reports what is wrong)."""
    from ccdwatch import __main__ as script
    from ccdwatch.jobs import forkserver

    started = []
    monkeypatch.setattr(forkserver, "start", lambda: started.append(True))
    monkeypatch.setattr(script, "_stop_cleanly_until_watching", lambda: None)  # not in this test's process
    empty, night = tmp_path / "empty", tmp_path / "night"
    empty.mkdir()
    night.mkdir()
    (night / "bias_001.fits").write_bytes(b"")
    local = tmp_path / "local.toml"
    local.write_text("[workers]\nprocesses = 0\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[workers]\nprocesses = 'many'\n")
    cases = {
        ("watch", "--once", "--incoming", str(night)): True,
        ("--db", str(tmp_path / "c.db"), "watch", "--once", "--incoming", str(night), "-v"): True,
        ("watch", "--incoming", str(empty)): True,  # the live daemon: its jobs are coming
        ("watch", "--once", "--incoming", str(empty)): False,  # an idle --once stays light
        ("watch", "--once", "--incoming", str(night), "--scheduler", "tcp://127.0.0.1:1"): False,
        ("--config", str(local), "watch", "--once", "--incoming", str(night)): False,  # inline jobs
        ("--config", str(bad), "watch", "--once", "--incoming", str(night)): False,  # cli reports it
        ("watch", "--help"): False,
        ("watch", "--once", "--incoming"): False,  # does not parse
        ("frames", "--incoming", str(night)): False,
    }
    for argv, expected in cases.items():
        started.clear()
        assert script.start_workers_early(list(argv)) is expected, argv
        assert started == ([True] if expected else []), argv



def test_a_once_over_frames_already_catalogued_does_not_start_the_fork_server(tmp_path, monkeypatch):
    """A timer's `watch --once` over a camera folder that keeps the nights already reduced: the
    frames changed before the catalogue last did are not work, and the fork server (~0.8 s of CPU)
    is not started for them; a frame written, copied or moved in since is."""
    import os
    import time

    from ccdwatch import __main__ as script
    from ccdwatch.jobs import forkserver

    started = []
    monkeypatch.setattr(forkserver, "start", lambda: started.append(True))
    monkeypatch.setattr(script, "_stop_cleanly_until_watching", lambda: None)
    night, db = tmp_path / "night", tmp_path / "c.db"
    night.mkdir()
    (night / "bias_001.fits").write_bytes(b"")
    argv = ["--db", str(db), "watch", "--once", "--incoming", str(night)]
    assert script.start_workers_early(argv)  # no catalogue yet: everything is new
    time.sleep(0.05)
    db.write_bytes(b"")  # the catalogue as a run left it
    assert not script.start_workers_early(argv)
    time.sleep(0.05)
    old = tmp_path / "bias_002.fits"
    old.write_bytes(b"")
    os.utime(old, (1e9, 1e9))  # a copy that keeps its time (cp -p)
    old.rename(night / old.name)  # moved in after the catalogue: its ctime says so
    assert script.start_workers_early(argv)
    assert started == [True, True]

def test_a_stop_while_the_daemon_starts_leaves_nothing_in_tmp(tmp_path, request):
    """SIGTERM after the fork server has started and before the daemon's own handler is in place:
    exit 0 as a stop, through the exit handlers; the server's temporary directory goes with them
    (killed by the signal itself, the daemon left /tmp/pymp-*, its socket and ready file)."""
    import os
    import shutil
    import signal
    import tempfile
    import time

    import numpy as np
    from astropy.io import fits

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    # multiprocessing's directory: apart from other runs', and short (its socket's path must fit)
    tmp = Path(tempfile.mkdtemp(prefix="ccdw-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    fits.PrimaryHDU(np.zeros((8, 8), np.int16)).writeto(incoming / "bias_001.fits")  # the server starts early
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-m", "ccdwatch", "watch", "--once", "--incoming", str(incoming),
                             "--products", str(tmp_path / "products"), "--db", str(tmp_path / "c.db")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline and not any(tmp.iterdir()):  # the fork server is up
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    deadline = time.time() + 10
    while time.time() < deadline and any(tmp.iterdir()):  # the server follows its daemon out
        time.sleep(0.05)
    assert not any(tmp.iterdir()), sorted(p.name for p in tmp.rglob("*"))


def test_a_once_whose_files_are_all_unchanged_never_starts_the_fork_server(tmp_path, monkeypatch):
    """The scan of a folder that keeps the nights already reduced finds every file ready, and
    every one unchanged: no job, so no fork server (it started as soon as the scan found files)."""
    import dataclasses

    from ccdwatch import synth
    from ccdwatch.catalog import Catalog
    from ccdwatch.daemon.watch import Watcher
    from ccdwatch.jobs import forkserver
    from ccdwatch.pipeline import Pipeline

    from .conftest import make_config

    cfg = make_config(tmp_path, workers={"processes": 0})
    synth.make_night(cfg.paths.incoming, camera=synth.Camera(shape=(48, 64)), seed=2, n_bias=3, n_dark=0, n_flat=0,
                     filters=("V",), n_light=0, n_stars=5)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        assert Watcher(cfg, pipe, progress=False).run_once().ingested == 3  # jobs in this process
    started: list[bool] = []
    monkeypatch.setattr(forkserver, "start", lambda: started.append(True))
    cfg = dataclasses.replace(cfg, workers=dataclasses.replace(cfg.workers, processes=2))
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        stats = Watcher(cfg, pipe, progress=False).run_once()
    assert (stats.ingested, stats.unchanged) == (0, 3)
    assert started == []


def test_a_temporary_directory_too_long_for_a_socket_is_no_reason_to_die(tmp_path):
    """TMPDIR longer than a socket's path allows (multiprocessing's fork server listens on a socket
    inside it): the daemon died at start-up with "AF_UNIX path too long". It now works from /tmp,
    and leaves nothing behind there or in TMPDIR."""
    import os

    from ccdwatch import synth
    from ccdwatch.jobs.forkserver import SOCKET_DIR_MAX

    incoming = tmp_path / "incoming"
    synth.make_night(incoming, camera=synth.Camera(shape=(48, 64)), seed=3, n_bias=3, n_dark=0, n_flat=0,
                     filters=("V",), n_light=0, n_stars=0)
    long_tmp = tmp_path / ("t" * max(1, SOCKET_DIR_MAX + 5 - len(str(tmp_path))))
    long_tmp.mkdir()
    out = subprocess.run([sys.executable, "-m", "ccdwatch", "watch", "--once", "--incoming", str(incoming),
                          "--products", str(tmp_path / "products"), "--db", str(tmp_path / "c.db")],
                         env=dict(os.environ, TMPDIR=str(long_tmp)), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 ingested" in out.stdout
    assert not any(long_tmp.iterdir())  # (its /tmp/pymp-* goes at exit too: other workers' come and go there)
