"""PostgreSQL as a first-class catalogue, and several daemons sharing it.

Every test here runs against the machine's PostgreSQL server (127.0.0.1:5432, trust auth; CI
starts it) in a throwaway database, and is skipped with the reason only when no server answers.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, func, select

from ccdwatch import faults, synth
from ccdwatch.catalog import Catalog, alembic_config, current_revision, head_revision, utcnow
from ccdwatch.catalog.sites import OwnershipError, claim, register
from ccdwatch.daemon.watch import Watcher
from ccdwatch.fitsio import read_product
from ccdwatch.models import Base, Calibrated, Frame, Master, Stack
from ccdwatch.pipeline import Pipeline

from .conftest import make_config, need, terminate_backends

CAMERA = synth.Camera(shape=(96, 128))
NIGHT = {"n_bias": 3, "n_dark": 3, "n_flat": 3, "filters": ("V",), "n_light": 3, "n_stars": 40}


def test_migrations_from_empty_to_head_and_back_match_the_models(pg_url):
    with Catalog(pg_url) as cat:
        assert current_revision(cat.engine) == head_revision() == "0007"
        with cat.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        cfg = alembic_config(cat.engine.url.render_as_string(hide_password=False))
        with cat.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
            command.upgrade(cfg, "head")
        with cat.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_two_daemons_creating_one_empty_catalogue_at_once(pg_url):
    """The migration runs under an advisory lock: the second daemon finds head, not a half-made schema."""
    errors: list[BaseException] = []
    revisions: list[str] = []

    def start() -> None:
        try:
            with Catalog(pg_url) as cat:
                revisions.append(cat.revision)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and revisions == ["0007"] * 3


def _products(cat: Catalog) -> dict[tuple, np.ndarray]:
    """Pixel data of every master and stack, by what it is."""
    out = {}
    with cat.reader() as s:
        for m in s.scalars(select(Master)):
            out[("master", m.kind, m.filter, m.exptime, m.version)] = read_product(m.path)[1]
        for st in s.scalars(select(Stack)):
            out[("stack", st.target, st.filter, st.version)] = read_product(st.path)[1]
    return out


def _file_hashes(products: Path) -> dict[str, str]:
    """sha256 of every file under a products root but the reports, by path below it."""
    return {str(p.relative_to(products)): hashlib.sha256(p.read_bytes()).hexdigest() for p in products.rglob("*")
            if p.is_file() and "reports" not in p.parts and p.name != "status.json"}


def _run_once(cfg) -> None:
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()


@pytest.mark.slow
def test_a_night_on_postgres_gives_the_products_of_sqlite(tmp_path, pg_url):
    synth.make_night(tmp_path / "incoming", camera=CAMERA, seed=5, **NIGHT)
    lite = make_config(tmp_path, workers={"processes": 0})
    pg = make_config(tmp_path / "pg", incoming=tmp_path / "incoming", workers={"processes": 0},
                     paths={"database": pg_url})
    _run_once(lite)
    _run_once(pg)
    with Catalog(lite.paths.database) as a, Catalog(pg_url) as b:
        with a.reader() as s, b.reader() as t:
            states = [dict(x.execute(select(Frame.state, func.count()).group_by(Frame.state)).all()) for x in (s, t)]
        assert states[0] == states[1] == {"used": 9, "stacked": 3}
        pa, pb = _products(a), _products(b)
    assert pa.keys() == pb.keys() and len(pa) == 4
    for key in pa:
        assert np.array_equal(pa[key], pb[key], equal_nan=True), key
    # the queries that look rows up through a join (rows with JSON columns: no DISTINCT over them)
    from ccdwatch.catalog import queries

    with Catalog(pg_url) as b, b.reader() as t:
        light = t.scalars(select(Frame).where(Frame.imagetyp == "light").order_by(Frame.id)).first()
        assert queries.current_stacks_with_members(t, [light.id])
        assert queries.masters_with_inputs(t, [f.id for f in t.scalars(select(Frame).where(Frame.imagetyp == "bias"))])
        assert queries.frame_by_path_or_id(t, Path(light.path).name).id == light.id


def test_a_commit_cut_by_a_lost_connection_pauses_then_resumes(tmp_path, pg_url, monkeypatch):
    """The server drops the connection as a master's row is committed: the pipeline pauses, says
    why, reconnects once the server answers, and the night ends with each master built once."""
    cfg = make_config(tmp_path, workers={"processes": 0}, paths={"database": pg_url},
                      watch={"pause_retry_seconds": 0.0})
    synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=6, **NIGHT)
    armed = {"at": None}
    point = faults.point

    def arm(name: str, subject: object = "") -> None:
        if name == "master-written" and armed["at"] is None:
            armed["at"] = "armed"
        point(name, subject)

    monkeypatch.setattr(faults, "point", arm)
    with Catalog(pg_url) as cat, Pipeline(cfg, cat) as pipe:

        @event.listens_for(cat.engine, "commit")
        def cut(conn) -> None:  # the server goes away between the row's INSERT and its COMMIT
            if armed["at"] == "armed":
                armed["at"] = "fired"
                terminate_backends(pg_url)

        watcher = Watcher(cfg, pipe, progress=False)
        watcher.scan()
        watcher.promote_settled(now=time.time() + 60)  # files younger than settle_seconds count too
        watcher.process_ready(final=True)
        for _ in range(5):  # the first master's commit is cut (the tick that builds it)
            pipe.tick(final=True)
            if armed["at"] == "fired":
                break
        assert armed["at"] == "fired"
        assert pipe.paused is not None and "catalogue unreachable" in pipe.paused
        assert "paused" in watcher.status_text()
        # every pooled connection the server dropped is found and replaced as it is next used: a
        # few more pauses may follow before the night goes on; it must end, each master built once
        for _ in range(30):
            pipe.tick(final=True)
            with cat.reader() as s:
                if pipe.paused is None and s.scalar(select(func.count()).select_from(Master)) == 3:
                    break
        assert pipe.paused is None
        with cat.reader() as s:
            masters = s.scalars(select(Master)).all()
            assert sorted((m.kind, m.version) for m in masters) == [("bias", 1), ("dark", 1), ("flat", 1)]
            assert {f.state for f in s.scalars(select(Frame).where(Frame.imagetyp == "light"))} == {"stacked"}
            assert s.scalar(select(func.count()).select_from(Calibrated)) == 3


def test_claims_let_one_planner_of_concurrent_ones_build(pg_url):
    with Catalog(pg_url) as cat:
        results: list[bool] = []
        barrier = threading.Barrier(4)

        def plan(owner: str) -> None:
            barrier.wait()
            with cat.session() as s:
                results.append(claim(s, "master|t1|2024-03-10|bias|cam", owner=owner, site="t1", ttl=60))
                time.sleep(0.2)  # hold the transaction while the others try

        threads = [threading.Thread(target=plan, args=(f"h:{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [False, False, False, True]
        with cat.session() as s:  # an expired claim is taken over; a live one is not
            assert not claim(s, "master|t1|2024-03-10|bias|cam", owner="h:9", site="t1", ttl=60)
            assert claim(s, "stack|t1|g", owner="h:1", site="t1", ttl=-1)
        with cat.session() as s:
            assert claim(s, "stack|t1|g", owner="h:2", site="t1", ttl=60)


def test_a_live_daemon_owns_its_site_incoming_and_products(tmp_path, pg_url):
    with Catalog(pg_url) as cat:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with cat.session() as s:  # a row left by a daemon that died: taken over at once
            from ccdwatch.models import Daemon

            s.add(Daemon(site="t1", incoming="/srv/t1", products="/p/t1", host=os.uname().nodename, pid=dead.pid,
                         started_at=utcnow(), heartbeat_at=utcnow()))
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            register(cat, site="t1", incoming="/srv/t1", products="/p/t1", heartbeat_seconds=15)
            with cat.session() as s:  # a live process holds t2
                s.add(Daemon(site="t2", incoming="/srv/t2", products="/p/t2", host=os.uname().nodename,
                             pid=other.pid, started_at=utcnow(), heartbeat_at=utcnow()))
            for kwargs, what in (({"site": "t3", "incoming": "/srv/t2", "products": "/p/t3"}, "incoming directory"),
                                 ({"site": "t2", "incoming": "/srv/t3", "products": "/p/t3"}, "site 't2'"),
                                 ({"site": "t3", "incoming": "/srv/t3", "products": "/p/t2"}, "products root")):
                with pytest.raises(OwnershipError, match=f"{what}.*daemon pid {other.pid}"):
                    register(cat, heartbeat_seconds=15, **kwargs)
        finally:
            other.kill()
            other.wait()


def test_registering_at_the_same_instant_is_decided_without_an_error(pg_url):
    """Two registrations race on the insert; the loser sees the winner's row (here: of this very
    process, so it takes it over) instead of failing on the unique constraint."""
    from ccdwatch.models import Daemon

    with Catalog(pg_url) as cat:
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def start() -> None:
            barrier.wait()
            try:
                register(cat, site="t1", incoming="/srv/t1", products="/p/t1", heartbeat_seconds=15)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        with cat.reader() as s:
            assert s.scalar(select(func.count()).select_from(Daemon)) == 1


def _ccdwatch(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ccdwatch.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _write_night(directory: Path, camera: synth.Camera, seed: int) -> None:
    synth.make_night(directory, camera=camera, seed=seed, **NIGHT)


@pytest.mark.slow
def test_two_daemons_one_catalogue_each_plans_only_its_camera(tmp_path, pg_url):
    """Two cameras of the same model (so the same calibration and group keys) on two telescopes,
    reduced at the same time by two daemons into one catalogue, their jobs on one Dask cluster:
    each frame once, masters and stacks per telescope, pixels equal to each telescope's
    single-machine SQLite run."""
    distributed = need("distributed")
    cams = {"t1": synth.Camera(shape=(96, 128), seed=11), "t2": synth.Camera(shape=(96, 128), seed=22)}
    for i, (site, cam) in enumerate(cams.items()):
        _write_night(tmp_path / site / "incoming", cam, seed=30 + i)
    env = dict(os.environ, CCDWATCH_CONFIG=_daemon_config(tmp_path))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        procs = {site: _ccdwatch("--db", pg_url, "--incoming", str(tmp_path / site / "incoming"), "--products",
                                 str(tmp_path / site / "products"), "--site", site, "--scheduler",
                                 c.scheduler_address, "watch", "--once", env=env)
                 for site in cams}
        for site, p in procs.items():
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
            assert f"site {site}" in out and "jobs run on the Dask cluster" in err
            # its summary is of its own site: the other camera's frames are not its, nor waiting
            assert "catalogue: 12 frames (stacked 3, used 9)" in out and "WAITING" not in out, out
    refs = {}
    for site in cams:  # the single-machine reference: SQLite, one camera
        cfg = make_config(tmp_path / "ref" / site, incoming=tmp_path / site / "incoming", workers={"processes": 0},
                          report={"refresh": False, "previews": False})  # as _daemon_config
        _run_once(cfg)
        with Catalog(cfg.paths.database) as cat:
            refs[site] = _products(cat)
        # not only the pixels: every file the two runs wrote (products, previews) has the same bytes
        assert _file_hashes(tmp_path / site / "products") == _file_hashes(tmp_path / "ref" / site / "products")
    with Catalog(pg_url) as cat:
        with cat.reader() as s:
            rows = s.execute(select(Frame.site, Frame.imagetyp, func.count()).group_by(Frame.site, Frame.imagetyp))
            assert {(site, t): n for site, t, n in rows} == {
                (site, t): n for site in cams for t, n in (("bias", 3), ("dark", 3), ("flat", 3), ("light", 3))}
            assert {f.state for f in s.scalars(select(Frame))} == {"used", "stacked"}
            for site in cams:
                masters = s.scalars(select(Master).where(Master.site == site)).all()
                assert sorted(m.kind for m in masters) == ["bias", "dark", "flat"]
                for m in masters:  # built from its own camera's frames only
                    assert {s.get(Frame, i.frame_id).site for i in m.inputs} == {site}
        for site in cams:
            with cat.reader() as s:
                ms = {("master", m.kind, m.filter, m.exptime, m.version): read_product(m.path)[1]
                      for m in s.scalars(select(Master).where(Master.site == site))}
                ms |= {("stack", x.target, x.filter, x.version): read_product(x.path)[1]
                       for x in s.scalars(select(Stack).where(Stack.site == site))}
            assert ms.keys() == refs[site].keys()
            for key, data in ms.items():
                assert np.array_equal(data, refs[site][key], equal_nan=True), (site, key)


@pytest.mark.slow
def test_live_daemons_survive_the_server_dropping_them_and_refuse_a_second_owner(tmp_path, pg_url):
    """Two live `watch` daemons; the camera writes into both; the server cuts every connection
    mid-night: both carry on and finish the night; a third on an owned directory is refused."""
    env = dict(os.environ, CCDWATCH_CONFIG=_daemon_config(tmp_path))
    sites = ("t1", "t2")
    daemons = {}
    for site in sites:
        (tmp_path / site / "incoming").mkdir(parents=True)
        daemons[site] = _ccdwatch("--db", pg_url, "--incoming", str(tmp_path / site / "incoming"), "--products",
                                  str(tmp_path / site / "products"), "--site", site, "watch", env=env)
    try:
        _wait_for_schema(pg_url)
        with Catalog(pg_url, writer=False, create=False) as cat:
            refused = _ccdwatch("--db", pg_url, "--incoming", str(tmp_path / "t1" / "incoming"), "--products",
                                str(tmp_path / "t3"), "--site", "t3", "watch", "--once", env=env)
            _, err = refused.communicate(timeout=60)
            assert refused.returncode == 5 and "incoming directory" in err and "site 't1'" in err
            for i, site in enumerate(sites):  # the camera writes, then the server restarts
                _write_night(tmp_path / site / "incoming", synth.Camera(shape=(96, 128), seed=40 + i), seed=50 + i)
            _until(lambda: _count(cat, Frame.state == "used") >= 6, 90)
            status = subprocess.run([sys.executable, "-m", "ccdwatch.cli", "--db", pg_url, "status"], env=env,
                                    capture_output=True, text=True, timeout=60)
            for site in sites:
                assert f"site {site}: daemon pid {daemons[site].pid}" in status.stdout
            assert terminate_backends(pg_url) >= 2
            _until(lambda: _count(cat, Frame.state == "stacked") == 6, 120)
            with cat.reader() as s:
                assert s.scalar(select(func.count()).select_from(Master)) == 6
                assert {(x.site, x.n_used) for x in s.scalars(select(Stack))} == {("t1", 3), ("t2", 3)}
    finally:
        for p in daemons.values():
            p.send_signal(signal.SIGTERM)
        for p in daemons.values():
            p.communicate(timeout=60)
    assert [p.returncode for p in daemons.values()] == [0, 0]


def _daemon_config(tmp_path: Path) -> str:
    """A configuration for test daemons: short settle and quiet times, one worker, no report."""
    path = tmp_path / "ccdwatch.toml"
    path.write_text("[watch]\nsettle_seconds = 0.3\ntick_interval = 0.5\npause_retry_seconds = 0.5\n"
                    "rescan_interval = 0\n[masters]\nsettle_seconds = 0\n[stack]\nquiet_minutes = 0.02\n"
                    "[workers]\nprocesses = 1\n[report]\nrefresh = false\npreviews = false\n")
    return str(path)


def _wait_for_schema(url: str) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with Catalog(url, writer=False, create=False):
                return True
        except Exception:  # noqa: BLE001 - not created yet
            time.sleep(0.3)
    raise AssertionError("the daemons never created the catalogue")


def _count(cat: Catalog, where) -> int:
    with cat.reader() as s:
        return s.scalar(select(func.count()).select_from(Frame).where(where)) or 0


def _until(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception:  # noqa: BLE001 - the reader's connection was cut too: ask again
            pass
        time.sleep(0.3)
    raise AssertionError("timed out waiting for the daemons")


def _legacy_rows(conn, incoming: str) -> None:
    """A frame under ``incoming`` with a master and a stack of it, and a frame elsewhere, as 0003 stored them."""
    now = "2024-03-10 20:00:00"
    for i, path in ((1, f"{incoming}/bias_001.fits"), (2, "/elsewhere/x.fits")):
        conn.exec_driver_sql(
            "INSERT INTO frames (id, path, imagetyp, state, tries, created_at, updated_at) "
            f"VALUES ({i}, '{path}', 'bias', 'used', 0, '{now}', '{now}')")
    conn.exec_driver_sql(
        "INSERT INTO masters (id, kind, calib_key, camera_key, night, version, path, sha256, n_frames, method, "
        "params, bias_subtracted, dark_subtracted, ccdwatch_version, created_at) VALUES (1, 'bias', 'bias|cam', "
        f"'cam', '2024-03-10', 1, '/p/m.fits', 'x', 1, 'median', '{{}}', false, false, '0', '{now}')")
    conn.exec_driver_sql("INSERT INTO master_inputs (master_id, frame_id, sha256) VALUES (1, 1, 'x')")
    conn.exec_driver_sql(
        "INSERT INTO stacks (id, group_key, night, target, camera_key, version, current, path, sha256, n_used, "
        "n_rejected, total_exposure, method, params, ccdwatch_version, created_at) VALUES (1, 'g', '2024-03-10', "
        f"'M51', 'cam', 1, true, '/p/s.fits', 'y', 1, 0, 1.0, 'mean', '{{}}', '0', '{now}')")
    conn.exec_driver_sql("INSERT INTO stack_members (stack_id, frame_id, used) VALUES (1, 1, true)")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_to_sites_keeps_the_rows_and_the_daemon_adopts_its_own(tmp_path, request, backend):
    from ccdwatch.catalog import make_engine, upgrade
    from ccdwatch.catalog.sites import unregister

    url = str(tmp_path / "c.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        _legacy_rows(conn, "/srv/t1")
    engine.dispose()
    assert upgrade(url)[:2] == ("0003", head_revision())
    with Catalog(url) as cat:
        reg = register(cat, site="t1", incoming="/srv/t1", products="/p", heartbeat_seconds=15)
        with cat.reader() as s:  # nothing lost: table rebuilds on SQLite must not cascade
            assert {f.id: f.site for f in s.scalars(select(Frame))} == {1: "t1", 2: None}
            assert [(m.site, [i.frame_id for i in m.inputs]) for m in s.scalars(select(Master))] == [("t1", [1])]
            assert [(x.site, [m.frame_id for m in x.members]) for x in s.scalars(select(Stack))] == [("t1", [1])]
        unregister(cat, reg)
        with cat.reader() as s:
            from ccdwatch.models import Daemon

            assert s.scalar(select(func.count()).select_from(Daemon)) == 0
