"""Shared fixtures: configs in temporary directories, the real night when present.

Helpers that tests import live in :mod:`tests.helpers`."""

from __future__ import annotations

import hashlib
import importlib
import os
import secrets
from pathlib import Path

import pytest

from ccdwatch.config import Config

from .helpers import REAL_NIGHT, make_config


@pytest.fixture
def real_night() -> Path:
    if not (REAL_NIGHT.is_dir() and any(REAL_NIGHT.glob("*.fit"))):
        pytest.skip("the real PHY241 night (../shared/data/phy241_m51) is not present")
    return REAL_NIGHT


@pytest.fixture(scope="session")
def real_night_reduced(tmp_path_factory):
    """The real night reduced by one ``watch --once`` for all the tests that read its products
    (mark them ``xdist_group("real-night")``); yields (config, the CLI's path arguments). Its raw
    files are checked unmodified at the end."""
    from ccdwatch.cli import main

    if not REAL_NIGHT.is_dir():
        pytest.skip("the real PHY241 night (../shared/data/phy241_m51) is not present")
    before = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
              for p in REAL_NIGHT.iterdir()}
    cfg = make_config(tmp_path_factory.mktemp("phy241"), incoming=REAL_NIGHT)
    args = ["--incoming", str(REAL_NIGHT), "--products", str(cfg.paths.products), "--db", cfg.paths.database]
    assert main([*args, "-q", "watch", "--once"]) == 0
    yield cfg, args
    after = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
             for p in REAL_NIGHT.iterdir()}
    assert after == before, "a raw file of the real night was modified"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


#: The PostgreSQL server the tests use (trust auth); CI starts it (see .ci/run).
PG_SERVER = os.environ.get("CCDWATCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Under CI (``CI=true``, as CI runs .ci/run) the PostgreSQL and Dask tests must run, not skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot_run(reason: str) -> None:
    """Skip a test whose server or package cannot be had here, saying why; under CI fail instead."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must run this test)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need(module: str):
    """Import ``module`` (an extra of '.[test]'), or :func:`cannot_run` without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        cannot_run(f"this test needs {module}: pip install -e '.[test]'")


def _pg_admin():
    """An AUTOCOMMIT engine on the server's maintenance database, or a skip saying why there is none."""
    need("psycopg")
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    engine = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except OperationalError as exc:
        engine.dispose()
        cannot_run(f"no PostgreSQL server answers at {PG_SERVER} ({str(exc.orig).splitlines()[0]}); "
                   "set CCDWATCH_TEST_PG or start one (.ci/run does)")
    return engine


@pytest.fixture
def pg_url():
    """A throwaway PostgreSQL database (ccdwatch_test_<random>), dropped afterwards; its URL."""
    admin = _pg_admin()
    name = f"ccdwatch_test_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = PG_SERVER.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def terminate_backends(url: str) -> int:
    """Cut every connection to the database of ``url`` (a server restart as the clients see it)."""
    admin = _pg_admin()
    database = url.rsplit("/", 1)[1]
    try:
        with admin.connect() as conn:
            return len(conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %(d)s AND pid <> pg_backend_pid()",
                {"d": database}).all())
    finally:
        admin.dispose()
