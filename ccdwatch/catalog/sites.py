"""Several daemons, one catalogue: who owns which incoming directory, and who builds what.

``register``  a daemon takes its site, incoming directory and products root, or is refused with
              the name of the live daemon that holds them (a heartbeat says who is alive)
``Heartbeat`` a thread that keeps the daemon's row fresh, on a connection of its own
``claim``     take a piece of work (a master or a stack to build) until its result is committed:
              concurrent planners of one site never build the same thing twice
``adopt``     rows catalogued before sites existed (site NULL) become this site's

The same code runs on SQLite (one writer at a time: every claim trivially succeeds in order)
and on PostgreSQL (the claim's row is locked ``FOR UPDATE``; an insert race is decided by the
primary key, and the loser sees the winner's claim).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccdwatch.catalog.db import Catalog, make_engine, utcnow
from ccdwatch.models import Claim, Daemon, Frame, Master, MasterInput, Stack, StackMember

logger = logging.getLogger(__name__)

__all__ = ["Heartbeat", "OwnershipError", "Registration", "adopt", "claim", "daemons", "held", "holder", "register",
           "release", "unregister"]

#: A daemon whose heartbeat is older than this many heartbeat intervals is taken as gone.
STALE_BEATS = 4


class OwnershipError(RuntimeError):
    """Another live daemon owns this site, incoming directory or products root; says which."""


@dataclass(frozen=True)
class Registration:
    """What this daemon holds in the ``daemons`` table."""

    site: str
    incoming: str
    products: str
    host: str
    pid: int

    @property
    def owner(self) -> str:
        """``host:pid``, the holder name of this daemon's claims."""
        return f"{self.host}:{self.pid}"


def this_owner() -> str:
    """``host:pid`` of this process (the holder of its claims)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(row: Daemon, host: str, now: datetime, stale: timedelta) -> bool:
    """Is the daemon of ``row`` still running? On this host its pid says; elsewhere its heartbeat."""
    if row.host == host:
        if row.pid == os.getpid():
            return False  # our own row from an earlier run in this process
        try:
            os.kill(row.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # a process of another user: alive
    return now - row.heartbeat_at < stale


def _describe(row: Daemon, now: datetime) -> str:
    age = (now - row.heartbeat_at).total_seconds()
    return (f"daemon pid {row.pid} on host {row.host} (site {row.site!r}, incoming {row.incoming}, "
            f"products {row.products}; last heartbeat {age:.0f} s ago)")


def register(catalog: Catalog, *, site: str, incoming: str, products: str, heartbeat_seconds: float,
             scheduler: str | None = None) -> Registration:
    """Record this daemon as the owner of ``site``, ``incoming`` and ``products``.

    Raises
    ------
    OwnershipError
        A live daemon (fresh heartbeat, or a running pid on this host) holds one of the three;
        the message names it. Rows of daemons that are gone are taken over.
    """
    host, pid = socket.gethostname(), os.getpid()
    stale = timedelta(seconds=STALE_BEATS * heartbeat_seconds)
    for attempt in (1, 2):  # a daemon registering at the same instant wins the insert; then we see it
        try:
            with catalog.session() as s:
                _take(s, site=site, incoming=incoming, products=products, host=host, stale=stale)
                s.add(Daemon(site=site, incoming=incoming, products=products, host=host, pid=pid,
                             scheduler=scheduler, started_at=utcnow(), heartbeat_at=utcnow()))
                _drop_dead_claims(s, site, host)
            break
        except IntegrityError:
            if attempt == 2:
                raise
    reg = Registration(site, incoming, products, host, pid)
    adopted = adopt(catalog, site, incoming)
    if adopted:
        logger.info("site %s: adopted %d frames catalogued before sites existed", site, adopted)
    return reg


def _take(s: Session, *, site: str, incoming: str, products: str, host: str, stale: timedelta) -> None:
    """Remove the rows of gone daemons that hold ``site``, ``incoming`` or ``products``; raise
    :class:`OwnershipError` for a live one."""
    now = utcnow()
    rows = [row for row in s.scalars(select(Daemon).with_for_update())
            if _clash(row, site=site, incoming=incoming, products=products, host=host)]
    for row in rows:
        if _alive(row, host, now, stale):
            what = _clash(row, site=site, incoming=incoming, products=products, host=host)
            raise OwnershipError(f"{what} is owned by {_describe(row, now)}; stop that daemon, or give this "
                                 "one its own [site] name, incoming directory and products root")
        logger.warning("taking over from %s: it is gone", _describe(row, now))
        s.delete(row)
    s.flush()


def _clash(row: Daemon, *, site: str, incoming: str, products: str, host: str) -> str | None:
    """What of ``row``'s a daemon of ``site``, ``incoming`` and ``products`` would share: the site,
    the incoming directory or the products root; None for nothing. On one host the directories are
    compared as they are on the disk, a symlink or a root inside the other's included (two sites'
    masters of one camera model have the same names: the second overwrote the first's, and its
    start-up recovery swept the other's files in progress); across hosts, as written."""
    if row.site == site:
        return f"the site {site!r}"
    if row.incoming == incoming or (row.host == host and _overlap(row.incoming, incoming)):
        return f"the incoming directory {incoming}"
    if row.products == products or (row.host == host and _overlap(row.products, products)):
        return f"the products root {products}"
    return None


def _overlap(a: str, b: str) -> bool:
    """The same directory on this host, or one inside the other (symlinks resolved)."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    return ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep) or rb.startswith(ra.rstrip(os.sep) + os.sep)


def _drop_dead_claims(s: Session, site: str, host: str) -> None:
    """Claims of this site left by processes of this host that are gone (a crash, a kill)."""
    for what, owner in s.execute(select(Claim.what, Claim.owner).where(Claim.site == site)).all():
        where, _, pid = owner.rpartition(":")
        if where != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            s.execute(delete(Claim).where(Claim.what == what, Claim.owner == owner))
        except PermissionError:
            pass


def daemons(s: Session) -> list[Daemon]:
    """The daemons registered in the catalogue (live or stale), by site."""
    return list(s.scalars(select(Daemon).order_by(Daemon.site)))


def unregister(catalog: Catalog, reg: Registration) -> None:
    """Give up ownership (a clean stop) and drop this daemon's claims."""
    try:
        with catalog.session() as s:
            s.execute(delete(Daemon).where(Daemon.site == reg.site, Daemon.pid == reg.pid, Daemon.host == reg.host))
            s.execute(delete(Claim).where(Claim.owner == reg.owner))
    except Exception as exc:  # noqa: BLE001 - the catalogue may be gone; the row then goes stale
        logger.warning("could not release site %s in the catalogue: %s", reg.site, exc)


def beat(engine: Engine, reg: Registration) -> bool:
    """Refresh this daemon's heartbeat; False if its row was taken over by another daemon."""
    with engine.begin() as conn:
        n = conn.execute(update(Daemon).where(Daemon.site == reg.site, Daemon.pid == reg.pid,
                                              Daemon.host == reg.host).values(heartbeat_at=utcnow())).rowcount
    return bool(n)


class Heartbeat:
    """A thread that refreshes the daemon's row every ``interval`` s on its own connection, so that
    a daemon busy with a long job still counts as alive; catalogue outages are logged, not fatal."""

    def __init__(self, database: str, reg: Registration, interval: float) -> None:
        self.database, self.reg, self.interval = database, reg, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ccdwatch-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        engine = make_engine(self.database)
        try:
            while not self._stop.wait(self.interval):
                try:
                    if not beat(engine, self.reg):
                        logger.error("site %s: another daemon took over this daemon's row", self.reg.site)
                except Exception as exc:  # noqa: BLE001 - a lost catalogue: try again next beat
                    logger.warning("heartbeat not recorded: %s", str(exc).splitlines()[0] if str(exc) else exc)
        finally:
            engine.dispose()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------- claims
def claim(s: Session, what: str, *, owner: str, site: str | None, ttl: float) -> bool:
    """Take ``what`` for ``ttl`` seconds (renewed if ``owner`` already holds it); False if another
    holder's unexpired claim stands. Runs inside the caller's transaction (the planner's)."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl)
    row = s.scalar(select(Claim).where(Claim.what == what).with_for_update())
    if row is not None:
        if row.owner != owner and row.expires_at > now:
            return False
        row.owner, row.site, row.claimed_at, row.expires_at = owner, site, now, expires
        return True
    try:
        with s.begin_nested():  # a savepoint: losing the insert race leaves the planner's transaction usable
            s.add(Claim(what=what, owner=owner, site=site, claimed_at=now, expires_at=expires))
    except IntegrityError:
        return False
    return True


def release_all(catalog: Catalog, owner: str) -> None:
    """Drop every claim ``owner`` still holds (a pipeline closing: jobs that failed or were cut
    short left theirs); a catalogue that cannot be reached keeps them until they expire."""
    try:
        with catalog.session() as s:
            s.execute(delete(Claim).where(Claim.owner == owner))
    except Exception as exc:  # noqa: BLE001 - closing must not fail for this
        logger.debug("claims of %s not released: %s", owner, exc)


def holder(s: Session, what: str) -> str | None:
    """Who holds an unexpired claim on ``what``, if anyone."""
    return s.scalar(select(Claim.owner).where(Claim.what == what, Claim.expires_at > utcnow()))


def release(s: Session, what: str, *, owner: str) -> None:
    """Drop ``owner``'s claim on ``what`` (in the transaction that commits the result)."""
    s.execute(delete(Claim).where(Claim.what == what, Claim.owner == owner))


# ---------------------------------------------------------------------------------- legacy rows
def adopt(catalog: Catalog, site: str, incoming: str) -> int:
    """Give this site the frames catalogued before sites existed (site NULL) under its incoming
    directory, and the masters and stacks made of them. Returns the number of frames adopted."""
    prefix = incoming.rstrip("/") + "/"
    with catalog.session() as s:
        result = s.execute(update(Frame).where(Frame.site.is_(None), Frame.path.startswith(prefix, autoescape=True))
                           .values(site=site))
        n = cast("CursorResult[Any]", result).rowcount
        if not n:
            return 0
        mine = select(Frame.id).where(Frame.site == site)
        s.execute(update(Master).where(Master.site.is_(None), exists().where(
            MasterInput.master_id == Master.id, MasterInput.frame_id.in_(mine))).values(site=site))
        s.execute(update(Stack).where(Stack.site.is_(None), exists().where(
            StackMember.stack_id == Stack.id, StackMember.frame_id.in_(mine))).values(site=site))
    return int(n)


@contextmanager
def held(catalog: Catalog, *, site: str, incoming: str, products: str, heartbeat_seconds: float,
         scheduler: str | None = None) -> Iterator[Registration]:
    """Own ``site``, ``incoming`` and ``products`` while the block runs (registered, heartbeat
    kept by a thread, released at the end). Raises :class:`OwnershipError` as :func:`register`."""
    reg = register(catalog, site=site, incoming=incoming, products=products, heartbeat_seconds=heartbeat_seconds,
                   scheduler=scheduler)
    beat_thread = Heartbeat(catalog.url, reg, heartbeat_seconds).start()
    try:
        yield reg
    finally:
        beat_thread.stop()
        unregister(catalog, reg)
