"""Jobs on a Dask cluster: the same products as local workers, paths checked, a lost scheduler or
worker survived. The tests start their own clusters: a ``LocalCluster`` with worker processes,
and ``dask scheduler`` + ``dask worker`` processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.config import ConfigError
from ccdwatch.daemon.watch import Watcher
from ccdwatch.fitsio import read_product
from ccdwatch.jobs import cluster as jobs_cluster
from ccdwatch.jobs.pool import Workers, make_workers
from ccdwatch.models import Frame, Master, Stack
from ccdwatch.pipeline import Pipeline

from .conftest import make_config, need

distributed = need("distributed")

CAMERA = synth.Camera(shape=(96, 128))
NIGHT = {"n_bias": 3, "n_dark": 3, "n_flat": 3, "filters": ("V",), "n_light": 3, "n_stars": 40}


@pytest.fixture(scope="module")
def local_cluster():
    """Two single-threaded worker processes (this machine has two cores)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def _task_counts(address: str) -> dict[str, int]:
    """How many tasks of each job the scheduler has finished (held in memory at some point)."""
    def counts(dask_scheduler) -> dict[str, int]:
        return {k: int(v.state_counts.get("memory", 0)) for k, v in dask_scheduler.task_prefixes.items()}

    with distributed.Client(address, set_as_default=False) as client:
        return client.run_on_scheduler(counts)


def _products(database: str) -> dict[tuple, np.ndarray]:
    with Catalog(database) as cat, cat.reader() as s:
        out = {("master", m.kind, m.filter): read_product(m.path)[1] for m in s.scalars(select(Master))}
        out |= {("stack", x.target, x.filter): read_product(x.path)[1] for x in s.scalars(select(Stack))}
    return out


def _run_once(cfg) -> None:
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()


@pytest.mark.slow
def test_a_night_on_the_cluster_gives_the_local_products(tmp_path, local_cluster):
    synth.make_night(tmp_path / "incoming", camera=CAMERA, seed=7, **NIGHT)
    local = make_config(tmp_path / "local", incoming=tmp_path / "incoming", workers={"processes": 0},
                        report={"refresh": False})
    dask = make_config(tmp_path / "dask", incoming=tmp_path / "incoming", report={"refresh": False},
                       workers={"scheduler": local_cluster.scheduler_address})
    before = _task_counts(local_cluster.scheduler_address)
    _run_once(local)
    _run_once(dask)
    after = _task_counts(local_cluster.scheduler_address)
    ran = {k: after.get(k, 0) - before.get(k, 0) for k in ("ingest", "build_master", "calibrate_light", "stack_group")}
    assert ran == {"ingest": 12, "build_master": 3, "calibrate_light": 3, "stack_group": 1}
    a, b = _products(local.paths.database), _products(dask.paths.database)
    assert a.keys() == b.keys() and len(a) == 4
    for key in a:
        assert np.array_equal(a[key], b[key], equal_nan=True), key


def test_workers_that_cannot_see_the_paths_are_named(tmp_path, local_cluster):
    with pytest.raises(ConfigError, match=r"same paths.*worker tcp://127\.0\.0\.1:\d+: .*nowhere: No such file"):
        jobs_cluster.ClusterWorkers(local_cluster.scheduler_address, local=Workers(processes=0),
                                    incoming=tmp_path / "nowhere", products=tmp_path / "products", retry=60)


def test_the_probe_tells_another_directory_under_the_same_path(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / jobs_cluster.PROBE_NAME).write_text("not-the-token")
    problems = jobs_cluster.probe_paths(str(tmp_path / "in"), str(tmp_path / "out"), "token")
    assert len(problems) == 1 and "another directory" in problems[0]
    (tmp_path / "out" / jobs_cluster.PROBE_NAME).write_text("token")
    assert jobs_cluster.probe_paths(str(tmp_path / "in"), str(tmp_path / "out"), "token") == []


def test_an_unreachable_scheduler_falls_back_to_local_workers(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(jobs_cluster, "CONNECT_TIMEOUT_S", 1)
    cfg = make_config(tmp_path, workers={"processes": 0, "scheduler": "tcp://127.0.0.1:1"})
    with caplog.at_level(logging.WARNING, logger="ccdwatch.jobs.cluster"):
        workers = make_workers(cfg.workers, incoming=tmp_path, products=tmp_path / "products")
    try:
        assert "cannot be used" in caplog.text and "local worker processes" in caplog.text
        assert [f.result() for f in workers.map(abs, [-1, -2], timeout=5)] == [1, 2]
    finally:
        workers.close()


def _start(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            **kwargs)


@pytest.mark.slow
def test_a_worker_killed_mid_night_the_night_completes(tmp_path):
    """`dask scheduler` and two `dask worker` processes; one worker is killed while it runs a
    master or a calibration: the scheduler gives the job to the other, the night completes, and
    no frame is charged a try."""
    synth.make_night(tmp_path / "incoming", camera=synth.Camera(shape=(384, 512)), seed=8, n_bias=5, n_dark=5,
                     n_flat=5, filters=("V",), n_light=6, n_stars=60)
    sched_file = tmp_path / "scheduler.json"
    procs = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--scheduler-file", str(sched_file), "--no-dashboard"])]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        workers = [_start(["distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                           "--no-dashboard", "--host", "127.0.0.1"]) for _ in range(2)]
        procs += workers
        with distributed.Client(address, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            pids = client.run(os.getpid)
            cfg = tmp_path / "ccdwatch.toml"
            cfg.write_text("[report]\nrefresh = false\n[watch]\nsettle_seconds = 0.3\n")
            daemon = subprocess.Popen(
                [sys.executable, "-m", "ccdwatch.cli", "--config", str(cfg), "--scheduler", address,
                 "--incoming", str(tmp_path / "incoming"), "--products", str(tmp_path / "products"),
                 "--db", str(tmp_path / "c.db"), "watch", "--once"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            victim = None
            deadline = time.monotonic() + 120
            while victim is None and daemon.poll() is None and time.monotonic() < deadline:
                for worker, keys in client.processing().items():
                    if any(str(k).startswith(("build_master", "calibrate_light")) for k in keys):
                        victim = worker
                        os.kill(pids[worker], signal.SIGKILL)
                        break
                time.sleep(0.02)
            out, err = daemon.communicate(timeout=240)
        assert victim is not None, "no job was seen running on a worker"
        assert daemon.returncode == 0, err
        with Catalog(str(tmp_path / "c.db")) as cat, cat.reader() as s:
            states = dict(s.execute(select(Frame.state, func.count()).group_by(Frame.state)).all())
            assert states == {"used": 15, "stacked": 6}
            assert s.scalar(select(func.max(Frame.tries))) == 0
            assert sorted(m.kind for m in s.scalars(select(Master))) == ["bias", "dark", "flat"]
    finally:
        for p in procs:
            p.kill()
            p.wait(30)


@pytest.mark.slow
def test_reprocess_makes_new_versions_and_an_interrupted_campaign_continues(tmp_path, monkeypatch, capsys):
    """`reprocess --night`: every master, calibrated light and stack gets one new version with the
    same pixels; a campaign interrupted after its first calibration continues where it stopped."""
    from ccdwatch import faults
    from ccdwatch.cli import main
    from ccdwatch.models import Calibrated
    from ccdwatch.pipeline.reprocess import Selection, reprocess

    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False}, site={"name": "t1"})
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=9, **NIGHT)
    _run_once(cfg)
    before = _products(cfg.paths.database)
    calls = {"n": 0}
    point = faults.point

    def interrupt(name: str, subject: object = "") -> None:
        if name == "calibrated-written":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        point(name, subject)

    monkeypatch.setattr(faults, "point", interrupt)
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        with pytest.raises(KeyboardInterrupt):
            reprocess(pipe, Selection(night="2024-03-10"))
        done = reprocess(pipe, Selection(night="2024-03-10"))
    assert (done.masters, done.calibrated, done.stacks, done.skipped) == (0, 2, 1, 4)  # 3 masters + 1 light done
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        assert sorted((m.kind, m.version) for m in s.scalars(select(Master))) == [
            ("bias", 1), ("bias", 2), ("dark", 1), ("dark", 2), ("flat", 1), ("flat", 2)]
        assert sorted(c.version for c in s.scalars(select(Calibrated))) == [1, 1, 1, 2, 2, 2]
        assert [(x.version, x.current) for x in s.scalars(select(Stack).order_by(Stack.version))] == [
            (1, False), (2, True)]
        new = {("master", m.kind, m.filter): read_product(m.path)[1]
               for m in s.scalars(select(Master).where(Master.version == 2))}
        new[("stack", "M51", "V")] = read_product(s.scalar(select(Stack.path).where(Stack.current)))[1]
    for key, data in before.items():
        assert np.array_equal(data, new[key], equal_nan=True), key
    capsys.readouterr()
    assert main(["--db", cfg.paths.database, "--incoming", str(cfg.paths.incoming), "--products",
                 str(cfg.paths.products), "--site", "t1", "reprocess", "--night", "2024-03-10",
                 "--no-progress"]) == 0
    assert "3 masters, 3 calibrated lights, 1 stacks" in capsys.readouterr().out


def test_ctrl_c_while_jobs_run_on_the_cluster_stops_and_cancels_them(tmp_path):
    """A KeyboardInterrupt while the daemon waits for cluster jobs (Ctrl-C on `reprocess`) is not
    taken for a job's error: it goes up at once, and the scheduler drops the job. (Its own cluster:
    a task already running keeps its worker's thread until it returns, which Dask cannot cut.)"""
    import ctypes
    import threading

    # Ctrl-C, delivered to this test's thread: under pytest-xdist the test need not run in the
    # process's main thread, where _thread.interrupt_main (a real SIGINT) would land
    me = threading.get_ident()

    def ctrl_c() -> None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(me), ctypes.py_object(KeyboardInterrupt))

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        workers = jobs_cluster.ClusterWorkers(c.scheduler_address, local=Workers(processes=0), incoming=tmp_path,
                                              products=tmp_path / "products", retry=60)
        try:
            threading.Timer(1.5, ctrl_c).start()
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                workers.map(time.sleep, [120], timeout=600)
            assert time.monotonic() - t0 < 30
            with distributed.Client(c.scheduler_address, set_as_default=False) as client:
                deadline = time.monotonic() + 30
                while any(client.processing().values()) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert not any(client.processing().values())
        finally:
            workers.close()


def test_reprocess_interrupted_by_ctrl_c_says_how_to_continue(tmp_path, monkeypatch, capsys):
    from ccdwatch import faults
    from ccdwatch.cli import EXIT_INTERRUPTED, main

    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False}, site={"name": "t1"})
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=9, **NIGHT)
    _run_once(cfg)
    args = ["--db", cfg.paths.database, "--incoming", str(cfg.paths.incoming), "--products", str(cfg.paths.products),
            "--site", "t1", "reprocess", "--night", "2024-03-10", "--no-progress"]
    point = faults.point

    def ctrl_c(name: str, subject: object = "") -> None:
        if name == "calibrated-written":
            raise KeyboardInterrupt
        point(name, subject)

    monkeypatch.setattr(faults, "point", ctrl_c)
    capsys.readouterr()
    assert main(args) == EXIT_INTERRUPTED == 130
    assert "interrupted; the same command continues it" in capsys.readouterr().err
    monkeypatch.setattr(faults, "point", point)
    assert main(args) == 0
    assert "0 masters, 3 calibrated lights, 1 stacks" in capsys.readouterr().out  # the 3 masters were kept


def test_listings_and_the_report_filter_by_site_and_json_carries_it(tmp_path, capsys):
    """Two telescopes' nights in one catalogue (one after the other: SQLite has one writer)."""
    from ccdwatch.cli import main
    from ccdwatch.report.collect import collect

    db = str(tmp_path / "shared.db")
    for site, n_bias in (("t1", 3), ("t2", 4)):
        cfg = make_config(tmp_path / site, workers={"processes": 0}, report={"refresh": False},
                          site={"name": site}, paths={"database": db})
        synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=n_bias, n_bias=n_bias, n_dark=0, n_flat=0,
                         filters=("V",), n_light=0)  # other seeds: other bytes (identity is content)
        _run_once(cfg)
    capsys.readouterr()
    for site, n_bias in (("t1", 3), ("t2", 4)):
        assert main(["--db", db, "--site", site, "frames", "--format", "json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) == n_bias and {r["site"] for r in rows} == {site}
        for command in ("masters", "nights"):
            assert main(["--db", db, "--site", site, command, "--format", "json"]) == 0
            rows = json.loads(capsys.readouterr().out)
            assert len(rows) == 1 and rows[0]["site"] == site, command
        assert main(["--db", db, "--site", site, "nights", "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["bias"] == n_bias
        with Catalog(db) as cat, cat.reader() as s:
            data = collect(s, "2024-03-10", site=site)
            assert len(data.frames) == n_bias and len(data.masters) == 1
    assert main(["--db", db, "frames", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 7
    # a table of several sites says which row is whose (both have a bias_001.fits); one site's does not
    assert main(["--db", db, "frames", "--type", "bias"]) == 0
    header, _, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["id", "site"] and sorted(r.split()[1] for r in rows) == ["t1"] * 3 + ["t2"] * 4
    assert main(["--db", db, "--site", "t2", "masters"]) == 0
    assert "site" not in capsys.readouterr().out.splitlines()[0].split()
    assert main(["--db", db, "--site", "t3", "frames", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    for site, n in ((None, 7), ("t1", 3), ("t2", 4)):  # status counts the site's frames, or all
        assert main(["--db", db, *(("--site", site) if site else ()), "status"]) == 0
        assert f"frames: {n}  used={n}" in capsys.readouterr().out


def test_the_report_of_several_sites_keeps_their_groups_and_masters_apart(tmp_path):
    """Two telescopes of one camera model (same group and calibration keys) in one catalogue: the
    report of both shows a group and a stack per site; a newer master version of one site does not
    mark the other's as superseded; each page says whose frames it shows."""
    from ccdwatch.catalog.night import current_stacks
    from ccdwatch.pipeline.reprocess import Selection, reprocess
    from ccdwatch.report import build_report
    from ccdwatch.report.collect import collect
    from ccdwatch.report.text import group_label

    db = str(tmp_path / "shared.db")
    cfgs = {}
    for i, site in enumerate(("t1", "t2")):
        cfgs[site] = make_config(tmp_path / site, workers={"processes": 0}, report={"refresh": False},
                                 site={"name": site}, paths={"database": db})
        synth.make_night(cfgs[site].paths.incoming, camera=CAMERA, seed=60 + i, **NIGHT)
        _run_once(cfgs[site])
    with Catalog(db) as cat, Pipeline(cfgs["t1"], cat) as pipe:
        reprocess(pipe, Selection(night="2024-03-10"))  # t1's masters and stack: version 2
    with Catalog(db) as cat:
        with cat.reader() as s:
            both = collect(s, "2024-03-10")
            assert both.sites == ["t1", "t2"] and len(current_stacks(s, "2024-03-10")) == 2
            assert sorted((g.site, len(g.frame_ids), g.stack.site) for g in both.groups) == [("t1", 3, "t1"),
                                                                                             ("t2", 3, "t2")]
            assert {group_label(g).split(" · ")[0] for g in both.groups} == {"t1", "t2"}
            t2 = collect(s, "2024-03-10", site="t2")
            assert t2.sites == ["t2"] and [g.site for g in t2.groups] == [None]  # one site: labels as before
            assert sorted((m.kind, m.version, m.latest) for m in t2.masters) == [
                ("bias", 1, True), ("dark", 1, True), ("flat", 1, True)]
        page = build_report(cfgs["t2"], cat, "2024-03-10", tmp_path / "both").read_text()
        assert "sites t1, t2 · M51" in page and "<h3>t1 · M51 · V" in page and "<h3>t2 · M51 · V" in page
        page = build_report(cfgs["t2"], cat, "2024-03-10", tmp_path / "t2", site="t2").read_text()
        assert "site t2 · M51" in page


def test_masters_are_shared_between_sites_only_when_configured(tmp_path):
    """A camera moved from t1's PC to t2's: t2's lights wait for masters of their own, until t2 is
    configured to use t1's (same camera set-up), and are then calibrated with them."""
    db = str(tmp_path / "shared.db")
    staging = tmp_path / "staging"
    synth.make_night(staging, camera=CAMERA, seed=12, **NIGHT)
    t1 = make_config(tmp_path / "t1", workers={"processes": 0}, report={"refresh": False}, site={"name": "t1"},
                     paths={"database": db})
    t2 = make_config(tmp_path / "t2", workers={"processes": 0}, report={"refresh": False}, site={"name": "t2"},
                     paths={"database": db})
    for path in sorted(staging.iterdir()):
        dest = t2.paths.incoming if path.name.startswith("M51") else t1.paths.incoming
        path.rename(dest / path.name)
    _run_once(t1)
    _run_once(t2)
    with Catalog(db) as cat, cat.reader() as s:
        lights = s.scalars(select(Frame).where(Frame.site == "t2")).all()
        assert {f.state for f in lights} == {"waiting"} and "no master bias" in lights[0].state_reason
    shared = make_config(tmp_path / "t2", workers={"processes": 0}, report={"refresh": False},
                         site={"name": "t2", "share_masters_from": ("t1",)}, paths={"database": db})
    _run_once(shared)
    with Catalog(db) as cat, cat.reader() as s:
        from ccdwatch.models import Calibrated

        t1_masters = {m.id for m in s.scalars(select(Master).where(Master.site == "t1"))}
        assert len(t1_masters) == 3 and s.scalar(select(func.count()).select_from(Master)) == 3
        products = s.scalars(select(Calibrated)).all()
        assert len(products) == 3
        assert all({c.bias_id, c.dark_id, c.flat_id} <= t1_masters for c in products)
        assert {x.site for x in s.scalars(select(Stack))} == {"t2"}


@pytest.mark.slow
def test_a_job_over_its_time_limit_fails_and_its_worker_is_restarted(tmp_path, local_cluster):
    from ccdwatch.jobs.pool import WorkerFailure

    workers = jobs_cluster.ClusterWorkers(local_cluster.scheduler_address, local=Workers(processes=0),
                                          incoming=tmp_path, products=tmp_path / "products", retry=60)
    try:
        with distributed.Client(local_cluster.scheduler_address, set_as_default=False) as client:
            before = client.run(os.getpid)
            t0 = time.monotonic()
            hung, quick = workers.map(time.sleep, [600, 0], timeout=3)
            assert time.monotonic() - t0 < 30
            assert isinstance(hung.exception(), WorkerFailure) and "time limit" in str(hung.exception())
            assert quick.result() is None
            client.wait_for_workers(2, timeout=60)
            after = client.run(os.getpid)
        assert len(set(before.values()) - set(after.values())) == 1  # the hung job's worker was replaced
        assert [f.result() for f in workers.map(abs, [-4], timeout=10)] == [4]
    finally:
        workers.close()



def test_a_map_connects_to_the_scheduler_once_per_round_it_runs(tmp_path, local_cluster, monkeypatch):
    """A map connects (or tries to) before each round, not after its last one: with the scheduler
    gone, a wasted attempt after the last round blocked the map for up to 10 s more."""
    workers = jobs_cluster.ClusterWorkers(local_cluster.scheduler_address, local=Workers(processes=0),
                                          incoming=tmp_path, products=tmp_path / "products", retry=60)
    calls: list[int] = []
    real = workers._connect

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(workers, "_connect", counting)
    try:
        assert [f.result() for f in workers.map(abs, [-1, -2], timeout=30)] == [1, 2]
        assert len(calls) == 1  # one round
        calls.clear()
        futures = workers.map(abs, [-1], timeout=30, on_result=lambda i, fut: [(abs, -3)] if i == 0 else None)
        assert [f.result() for f in futures] == [1, 3]
        assert len(calls) == 2  # two rounds: the added job's round connects first
    finally:
        workers.close()

@pytest.mark.slow
def test_jobs_in_flight_when_the_scheduler_goes_run_again_locally(tmp_path, caplog):
    import threading

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        workers = jobs_cluster.ClusterWorkers(c.scheduler_address, local=Workers(processes=0), incoming=tmp_path,
                                              products=tmp_path / "products", retry=600)
        threading.Timer(1.0, c.close).start()  # the scheduler host goes down mid-batch (the first job's 3 s)
        with caplog.at_level(logging.WARNING, logger="ccdwatch.jobs.cluster"):
            futures = workers.map(time.sleep, [3, 3], timeout=60)
    try:
        assert [f.result() for f in futures] == [None, None]
        assert "was lost with 2 sleep job(s) in flight: running them locally" in caplog.text
        assert [f.result() for f in workers.map(abs, [-5], timeout=5)] == [5]  # local until retried
    finally:
        workers.close()


def test_site_and_scheduler_settings_are_checked_and_the_default_site_is_derived(tmp_path):
    import socket

    from ccdwatch.config import parse_config, site_name

    cfg = parse_config({"paths": {"incoming": "cam1/incoming"}}, base=tmp_path)
    assert site_name(cfg) == f"{socket.gethostname().split('.')[0]}/incoming"
    cfg = parse_config({"site": {"name": "t1", "share_masters_from": ["t0"]},
                        "workers": {"scheduler": "tcp://sched:8786"}}, base=tmp_path)
    assert (site_name(cfg), cfg.site.share_masters_from, cfg.workers.scheduler) == ("t1", ("t0",), "tcp://sched:8786")
    for data, key in (({"site": {"name": "bad name!"}}, "site.name"),
                      ({"site": {"share_masters_from": "t0"}}, "site.share_masters_from"),
                      ({"workers": {"scheduler": "sched:8786"}}, "workers.scheduler"),
                      ({"site": {"heartbeat_seconds": 0}}, "site.heartbeat_seconds")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config(data, base=tmp_path)
