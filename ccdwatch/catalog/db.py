"""The catalogue's database: engine and session set-up, schema checks, migrations, backups.

The catalogue package is the only code that talks SQL. Two backends: SQLite (the embedded
default, one telescope) and PostgreSQL through psycopg 3 (several daemons sharing one catalogue;
``pip install 'ccdwatch[cluster]'``). On PostgreSQL every connection is checked before use
(``pool_pre_ping``), so a restarted server costs nothing; a transaction cut by a lost connection
raises an error :func:`connection_lost` recognises, and the pipeline pauses until :meth:`Catalog.ping`
succeeds again. Migrations on PostgreSQL run under an advisory lock, so daemons starting together
on an empty database create it once.

SQLite is used the way a long-running single-writer
service needs it: WAL (readers never block the writer), ``synchronous=FULL``, foreign keys on, a
busy timeout, exactly one writing connection, and write transactions opened with
``BEGIN IMMEDIATE`` so that they take the write lock up front instead of failing half-way with
"database is locked". Python's sqlite3 legacy transaction handling is switched off so that
SQLAlchemy's ``begin`` really is where the transaction starts.

Another process may hold that write lock for minutes (a user's ``sqlite3`` shell with a transaction
left open, a VACUUM, a backup tool). A writer waits for it up to ``BUSY_TIMEOUT_MS`` in tries of
a second (`LockWait`): between two tries the daemon tells systemd's watchdog that it is only
waiting, and gives up at once when asked to stop. Past that, the "database is locked" error
(:func:`catalogue_locked`) pauses the pipeline until the lock is free again (:meth:`Catalog.lock_free`);
at start-up it is a refusal to start with its own exit code (:func:`start_refusal`).
``CCDWATCH_BUSY_TIMEOUT_MS`` shortens the wait (the tests' live daemons).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ccdwatch.config import ConfigError, database_url
from ccdwatch.models import Event, Frame

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# alembic (slow to import) is imported where the schema is checked or migrated, so the
# workers, which read the catalogue's models but never migrate it, do not load it.

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = int(os.environ.get("CCDWATCH_BUSY_TIMEOUT_MS") or 60_000)
#: Key of the PostgreSQL advisory lock held while the schema is created or migrated.
MIGRATION_LOCK = 0x63636477  # "ccdw"
#: Seconds a PostgreSQL connection attempt may take before the catalogue counts as unreachable.
CONNECT_TIMEOUT_S = 10


@dataclass
class LockWait:
    """How a writing connection waits for SQLite's write lock held by another process: up to
    ``timeout`` s in tries of ``step`` s, asking ``still_waiting`` between two tries (the daemon
    pings systemd's watchdog there: a daemon waiting for a lock is not hung; False when asked to
    stop: the wait ends at once). Then "database is locked" is raised (:func:`catalogue_locked`)."""

    timeout: float = BUSY_TIMEOUT_MS / 1000
    step: float = 1.0
    still_waiting: Callable[[], bool] | None = None


class SchemaError(RuntimeError):
    """The catalogue's schema does not match this version of ccdwatch; the message says what to run."""


def utcnow() -> datetime:
    """Naive UTC 'now', the form every timestamp takes in the catalogue."""
    return datetime.now(UTC).replace(tzinfo=None)


def migrations_dir() -> Path:
    """Alembic's script directory: inside the installed wheel, else the checkout's top level."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError("ccdwatch's migrations directory is missing from this installation")


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


#: ``revision = "..."`` and ``down_revision = "..." | None`` of a migration script, as alembic writes them.
_REVISION_LINE = re.compile(r'^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:"([^"]*)"|None)\s*$', re.M)


def _head_from_scripts() -> str | None:
    """The head revision read from the migration scripts' ``revision`` and ``down_revision`` lines
    (no import of alembic, ~0.1-0.2 s of start-up); None when any script is not of that plain
    form or the revisions do not make one chain (then alembic decides)."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in sorted((migrations_dir() / "versions").glob("*.py")):
        found = dict((k, v) for k, v in _REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" not in found or "down_revision" not in found or not found["revision"]:
            return None
        revisions.add(found["revision"])
        if found["down_revision"]:
            downs.add(found["down_revision"])
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 and downs <= revisions else None


def _stamped_revision(engine: Engine) -> str | None:
    """The catalogue's ``alembic_version`` read with one query (None if not one plain row)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).fetchall()
    except SQLAlchemyError as exc:
        if catalogue_locked(exc):  # not a schema question: waiting again for it would only double the wait
            raise
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for in-memory or other backends)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def engine_url(database: str) -> str:
    """The SQLAlchemy URL ccdwatch connects with: a plain path is a SQLite file, and a PostgreSQL
    URL without a driver (``postgresql://``, ``postgres://``) uses psycopg 3."""
    url = database_url(database)
    for bare in ("postgres://", "postgresql://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    return url


def _server_engine(url: str) -> Engine:
    """PostgreSQL (or another server): connections checked before use, a bounded connect time."""
    backend = make_url(url)
    args: dict[str, Any] = {}
    if backend.get_backend_name() == "postgresql":
        args = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "ccdwatch"}
    try:
        return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args=args)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"the catalogue {backend.render_as_string(hide_password=True)} needs the "
                          f"{exc.name} driver: pip install 'ccdwatch[cluster]'") from None


def make_engine(database: str, *, writer: bool = True, wait: LockWait | None = None) -> Engine:
    """Create the engine for ``database`` (a SQLAlchemy URL or a SQLite file path).

    ``writer=True`` gives the daemon's single writing connection (``BEGIN IMMEDIATE``, waiting
    for the write lock as ``wait`` says); ``writer=False`` gives readers whose transactions are
    deferred and never take the write lock.
    """
    url = engine_url(database)
    if not is_sqlite(url):
        return _server_engine(url)
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    wait = wait or LockWait()
    engine = create_engine(
        url,
        connect_args={"timeout": wait.timeout, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
        pool_timeout=BUSY_TIMEOUT_MS / 1000,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(wait.timeout * 1000)}")
        if writer:
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if writer:
            _begin_immediate(conn, wait)
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def _begin_immediate(conn: Any, wait: LockWait) -> None:
    """``BEGIN IMMEDIATE`` on ``conn``, waiting for another process's write lock as ``wait`` says
    (SQLite's busy timeout is shortened to one try meanwhile, then set back)."""
    raw = conn.connection.dbapi_connection
    deadline = time.monotonic() + wait.timeout
    try:
        while True:
            left = max(0.0, min(wait.step, deadline - time.monotonic()))
            raw.execute(f"PRAGMA busy_timeout = {int(left * 1000)}")
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if (not catalogue_locked(exc) or time.monotonic() >= deadline
                        or (wait.still_waiting is not None and not wait.still_waiting())):
                    raise
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(wait.timeout * 1000)}")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _has_tables(engine: Engine) -> bool:
    return bool(inspect(engine).get_table_names())


def _upgrade_to_head(engine: Engine) -> None:
    """Run the migrations up to head in one transaction on ``engine``.

    On SQLite, a migration that changes a constraint rebuilds the table (copy, drop, rename);
    with foreign keys on, dropping ``masters`` would cascade into ``master_inputs``. Foreign keys
    are therefore off while the migrations run (the pragma only takes effect outside a
    transaction), and ``PRAGMA foreign_key_check`` must find nothing before the commit.
    """
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection if conn.dialect.name == "sqlite" else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":  # one migrator at a time; the others then find head
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if raw is not None and (bad := conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                    raise SchemaError(f"the migration would leave rows without their parents: {bad[:5]}")
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys = ON")


def create_at_head(engine: Engine) -> None:
    """Create a new, empty catalogue at the head revision (by running the migrations)."""
    _upgrade_to_head(engine)
    logger.info("created a new catalogue at revision %s", head_revision())


def check_schema(engine: Engine, *, create: bool = True) -> str:
    """Make sure the catalogue is at the head revision; create it if empty (and ``create``).

    Raises :class:`SchemaError`, naming ``ccdwatch db upgrade``, for a catalogue behind head, and
    refusing to touch one that is ahead of this version of ccdwatch.
    """
    fast_head = _head_from_scripts()
    if fast_head is not None and _stamped_revision(engine) == fast_head:
        return fast_head  # at head: the usual start-up, without importing alembic
    head = head_revision()
    if not _has_tables(engine):
        if not create:
            raise SchemaError(f"the catalogue at {engine.url} is empty; start `ccdwatch watch` to create it")
        create_at_head(engine)
        return head
    rev = current_revision(engine)
    if rev == head:
        return head
    if not known_revision(engine, rev):
        raise SchemaError(unknown_revision_message(engine, rev))
    raise SchemaError(
        f"the catalogue at {engine.url} is at schema revision {rev}, behind this ccdwatch's {head}; "
        f"run `ccdwatch db upgrade --db {engine.url}` (it backs the file up first)"
    )


def known_revision(engine: Engine, rev: str | None) -> bool:
    """Is ``rev`` a schema revision this ccdwatch's migrations know (at or behind its head)?"""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(str(engine.url)))
    return rev is not None and rev in {r.revision for r in script.walk_revisions()}


def unknown_revision_message(engine: Engine, rev: str | None) -> str:
    return (f"the catalogue at {engine.url} has schema revision {rev!r}, which this ccdwatch "
            f"(head {head_revision()}) does not know; it was made by another program or a newer ccdwatch: "
            "use that ccdwatch (or upgrade this one), never downgrade the catalogue")


def connection_lost(exc: BaseException) -> bool:
    """Is this the catalogue's server gone (restarted, unreachable, our connection terminated),
    rather than a fault of the statement? Such work is paused and done again once it is back."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03"):  # connection / shutdown
        return True
    text = str(exc.orig).lower()
    return any(t in text for t in ("server closed the connection", "connection refused", "terminating connection",
                                   "connection is closed", "could not connect", "the connection is lost"))


def catalogue_locked(exc: BaseException) -> bool:
    """Is this SQLite's write lock held by another process for longer than a writer waits
    (SQLITE_BUSY "database is locked", SQLITE_LOCKED)? The work is paused and done again once
    the lock is free."""
    orig = getattr(exc, "orig", None) if isinstance(exc, OperationalError) else exc
    if not isinstance(orig, sqlite3.OperationalError):
        return False
    if (getattr(orig, "sqlite_errorname", None) or "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database table is locked" in text or "database is busy" in text


def catalogue_full(exc: BaseException) -> bool:
    """Is this the catalogue refusing a write for lack of space (SQLite: 'database or disk is
    full' at commit; PostgreSQL: SQLSTATE 53100 disk_full)?"""
    from sqlalchemy.exc import OperationalError

    if not isinstance(exc, OperationalError):
        return False
    text = str(exc.orig).lower()
    return ("database or disk is full" in text or "no space left" in text
            or getattr(exc.orig, "sqlstate", None) == "53100")


#: Exit codes of a catalogue that cannot be used at start-up, for now: systemd starts the daemon
#: again (none is in the unit's RestartPreventExitStatus=).
EXIT_UNREACHABLE = 6  # the catalogue's server does not answer
EXIT_DISK_FULL = 7  # the catalogue's disk is full
EXIT_LOCKED = 8  # another process holds the SQLite catalogue's write lock


def start_refusal(exc: BaseException, database: str, min_free: int) -> tuple[int, str] | None:
    """(exit code, reason in words) when ``exc`` says that the catalogue cannot be used for now:
    its server gone, its write lock held by another process, or its disk full - also where SQLite
    says only 'disk I/O error' (opening a catalogue in WAL mode on a full disk), judged by the
    free space beside the file. None for any other error."""
    first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if connection_lost(exc):
        return EXIT_UNREACHABLE, f"the catalogue does not answer: {first}"
    path = sqlite_path(engine_url(database))
    if catalogue_locked(exc):
        return EXIT_LOCKED, (f"the catalogue {path} is locked by another process (a sqlite3 shell with a "
                             f"transaction open, a VACUUM, a backup tool?): {first} after waiting "
                             f"{BUSY_TIMEOUT_MS / 1000:.0f} s; nothing is lost - the service starts it again by itself")
    try:
        free = shutil.disk_usage(path.parent).free if path is not None else None
    except OSError:
        free = None
    if catalogue_full(exc) or (free is not None and free < min_free):
        where = f" ({free / 2**20:.1f} MiB free in {path.parent})" if path is not None and free is not None else ""
        return EXIT_DISK_FULL, (f"the catalogue's disk is full{where}: {first}; nothing is lost - free some space "
                                "(watch.min_free_mb), the service starts it again by itself")
    return None


def backup_sqlite(source: Path, dest: Path) -> Path:
    """Consistent copy of a (possibly live) SQLite file with the backup API, never a file copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise RuntimeError(f"backup of {source} failed its integrity check: {ok}")
        finally:
            dst.close()
    finally:
        src.close()
    tmp.replace(dest)
    return dest


def publish_snapshot(database: str, dest: Path) -> Path | None:
    """Publish a consistent, read-only copy of a SQLite catalogue at ``dest`` (atomically
    replaced, so a reader of the previous snapshot keeps a coherent file). None if not SQLite."""
    src = sqlite_path(database_url(database))
    if src is None:
        return None
    tmp = dest.with_name(f".{dest.name}.new")
    backup_sqlite(src, tmp)
    con = sqlite3.connect(tmp)
    try:  # a self-contained file: readers need no -wal/-shm and no write access
        con.execute("PRAGMA journal_mode = DELETE")
    finally:
        con.close()
    tmp.chmod(0o444)
    tmp.replace(dest)
    return dest


def upgrade(database: str) -> tuple[str | None, str, Path | None]:
    """Back the catalogue up (SQLite) and upgrade it to head. Returns (old, new, backup path)."""
    engine = make_engine(database)
    try:
        old = current_revision(engine) if _has_tables(engine) else None
        head = head_revision()
        if old is not None and not known_revision(engine, old):
            raise SchemaError(unknown_revision_message(engine, old))
        backup = None
        path = sqlite_path(str(engine.url))
        if path is not None and path.exists() and old != head:
            stamp = utcnow().strftime("%Y%m%dT%H%M%S")
            backup = backup_sqlite(path, path.with_name(f"{path.name}.bak-{old}-{stamp}"))
            logger.info("backed up %s to %s", path, backup)
        _upgrade_to_head(engine)
        return old, head, backup
    finally:
        engine.dispose()


def integrity(engine: Engine) -> str:
    """``PRAGMA integrity_check`` result for SQLite ('ok' when healthy); 'n/a' elsewhere."""
    if engine.dialect.name != "sqlite":
        return "n/a"
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("PRAGMA integrity_check").fetchall()
    return "; ".join(r[0] for r in rows)


class Catalog:
    """Engine + session factory for one catalogue, and the named queries the pipeline uses."""

    def __init__(self, database: str, *, writer: bool = True, create: bool = True) -> None:
        self.url = engine_url(database)
        path = sqlite_path(self.url)
        if path is not None and not writer and not path.exists():
            raise SchemaError(f"there is no catalogue at {path} yet; `ccdwatch watch` creates it")
        #: how the writer waits for another process's write lock (the daemon sets ``still_waiting``)
        self.lock_wait = LockWait()
        self.engine = make_engine(database, writer=writer, wait=self.lock_wait)
        self.writer = writer
        try:
            self.revision = check_schema(self.engine, create=create and writer)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def shared(self) -> bool:
        """Can several daemons write this catalogue at once (a server, not a SQLite file)?"""
        return self.engine.dialect.name != "sqlite"

    def ping(self) -> bool:
        """Does the catalogue answer (after a lost connection: is the server back)?"""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - any failure means 'not yet'
            return False

    def lock_free(self) -> bool:
        """Could a write transaction begin now (after a lock held by another process)? Does
        not wait: on its own connection, SQLite's write lock taken and given back at once."""
        path = sqlite_path(self.url)
        if path is None:
            return self.ping()
        try:
            con = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
            finally:
                con.close()
        except sqlite3.Error:
            return False
        return True

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reader(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session
            session.rollback()


def log_event(session: Session, frame: Frame | None, kind: str, detail: str | None = None) -> None:
    session.add(Event(frame=frame, at=utcnow(), kind=kind, detail=detail))
