"""The catalogue: created at head, models match migrations, refuses old schemas, SQLite done right."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from ccdwatch.catalog import (
    Catalog,
    SchemaError,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    upgrade,
    utcnow,
)
from ccdwatch.models import Base, Daemon, Frame


def test_new_catalogue_is_created_at_head(tmp_path):
    db = str(tmp_path / "new" / "c.db")
    with Catalog(db) as cat:
        assert current_revision(cat.engine) == head_revision()
        with cat.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == [], f"models and migrations disagree: {diffs}"


def test_sqlite_pragmas(tmp_path):
    with Catalog(str(tmp_path / "c.db")) as cat, cat.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def _make_old(db: str) -> None:
    engine = make_engine(db)
    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    engine.dispose()


def test_refuses_database_behind_head_and_upgrade_backs_up(tmp_path):
    db = tmp_path / "old.db"
    _make_old(str(db))
    with pytest.raises(SchemaError, match="ccdwatch db upgrade"):
        Catalog(str(db))
    old, new, backup = upgrade(str(db))
    assert (old, new) == ("0001", head_revision())
    assert backup is not None and backup.exists()
    bak = sqlite3.connect(backup)
    assert bak.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0001"
    assert bak.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    bak.close()
    with Catalog(str(db)) as cat:
        assert cat.revision == head_revision()


def test_refuses_unknown_revision(tmp_path):
    db = tmp_path / "alien.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    con.execute("INSERT INTO alembic_version VALUES ('ffff')")
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match="does not know"):
        Catalog(str(db))


def test_reader_does_not_create_a_catalogue(tmp_path):
    with pytest.raises(SchemaError, match="no catalogue"):
        Catalog(str(tmp_path / "missing.db"), writer=False)
    assert not (tmp_path / "missing.db").exists()


def _frame(i: int) -> Frame:
    now = utcnow()
    return Frame(path=f"/x/{i}.fits", sha256=f"{i:064x}", imagetyp="light", state="waiting", tries=0,
                 created_at=now, updated_at=now)


def test_long_reader_never_blocks_the_writer(tmp_path):
    db = str(tmp_path / "c.db")
    with Catalog(db) as writer, Catalog(db, writer=False) as reader:
        with writer.session() as s:
            s.add(_frame(0))
        started, release = threading.Event(), threading.Event()

        def long_read() -> None:
            with reader.engine.connect() as conn:  # autobegins a deferred (read) transaction
                conn.execute(text("SELECT count(*) FROM frames")).scalar()
                started.set()
                release.wait(10)
                # A reader inside its transaction keeps seeing its snapshot.
                assert conn.execute(text("SELECT count(*) FROM frames")).scalar() == 1
                conn.commit()

        t = threading.Thread(target=long_read)
        t.start()
        assert started.wait(5)
        t0 = time.perf_counter()
        for i in range(1, 51):
            with writer.session() as s:
                s.add(_frame(i))
        elapsed = time.perf_counter() - t0
        release.set()
        t.join(5)
        with reader.reader() as s:
            assert s.query(Frame).count() == 51
    assert elapsed < 5.0, f"50 small commits took {elapsed:.1f}s while a reader held a transaction"


def test_foreign_keys_are_enforced(tmp_path):
    from sqlalchemy.exc import IntegrityError

    from ccdwatch.models import SourceFile

    with Catalog(str(tmp_path / "c.db")) as cat, pytest.raises(IntegrityError), cat.session() as s:
        now = utcnow()
        s.add(SourceFile(path="/a.fits", frame_id=999, first_seen=now, last_seen=now))


def test_snapshot_is_consistent_read_only_and_needs_no_write_access(tmp_path):
    from ccdwatch.catalog import publish_snapshot

    db = str(tmp_path / "state" / "c.db")
    with Catalog(db) as cat:
        with cat.session() as s:
            for i in range(5):
                s.add(_frame(i))
        (tmp_path / "pub").mkdir()
        dest = publish_snapshot(db, tmp_path / "pub" / "snap.db")
        with cat.session() as s:
            s.add(_frame(99))  # later writes do not reach the published copy
    assert oct(dest.stat().st_mode & 0o777) == "0o444"
    (tmp_path / "pub").chmod(0o555)  # a reader who cannot write beside the file
    try:
        con = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
        assert con.execute("SELECT count(*) FROM frames").fetchone()[0] == 5
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    finally:
        (tmp_path / "pub").chmod(0o755)


def test_start_up_reads_the_head_from_the_scripts_as_alembic_does(tmp_path, monkeypatch) -> None:
    # the start-up's check at head reads the migration scripts' revision lines instead of importing
    # alembic: it must name alembic's head, and a catalogue behind head must still be refused
    from ccdwatch.catalog import db

    assert db._head_from_scripts() == head_revision()
    with Catalog(f"sqlite:///{tmp_path / 'c.db'}") as cat:
        assert db._stamped_revision(cat.engine) == head_revision()
        with cat.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        assert db._stamped_revision(cat.engine) == "0001"
        with pytest.raises(db.SchemaError, match="db upgrade"):
            db.check_schema(cat.engine)
    monkeypatch.setattr(db, "_REVISION_LINE", db.re.compile("nothing matches this"))
    assert db._head_from_scripts() is None  # then alembic decides


def test_a_products_root_through_a_symlink_or_inside_anothers_is_owned_too(tmp_path):
    """A live daemon's products root given another way on the same host (a symlink to it, a folder
    inside it, or a folder it lies in) is its own: the second site's masters of the same camera
    model overwrote the first's, and its start-up recovery swept the other's files in progress."""
    import os
    import subprocess
    import sys

    from ccdwatch.catalog import utcnow
    from ccdwatch.catalog.sites import OwnershipError, register

    root = tmp_path / "products"
    (root / "t3").mkdir(parents=True)
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Catalog(str(tmp_path / "c.db")) as cat:
            with cat.session() as s:
                s.add(Daemon(site="t1", incoming=str(tmp_path / "in1"), products=str(root), host=os.uname().nodename,
                             pid=other.pid, started_at=utcnow(), heartbeat_at=utcnow()))
            for products in (tmp_path / "link", root / "t3", tmp_path):
                with pytest.raises(OwnershipError, match=f"products root .*daemon pid {other.pid}"):
                    register(cat, site="t2", incoming=str(tmp_path / "in2"), products=str(products),
                             heartbeat_seconds=15)
            (tmp_path / "elsewhere").mkdir()
            register(cat, site="t2", incoming=str(tmp_path / "in2"), products=str(tmp_path / "elsewhere"),
                     heartbeat_seconds=15)  # a root of its own is fine
    finally:
        other.kill()
        other.wait()
