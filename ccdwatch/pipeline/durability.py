"""Calibrated lights written without waiting for the disk, and what a crash of the machine costs.

Every product used to be fsynced before its row was committed: ~60 ms of disk per 36 MB light at
2k, paid inside the job (1.4 GB on a 40-light night). The daemon now lets the kernel write the
calibrated lights back in its own time (``write_product(..., sync=False)``) and keeps the rule a
catalogue must keep in another way: **after a crash of the machine, no row points at a product
that did not reach the disk.**

Dirty pages are lost only when the kernel itself dies (power cut, panic, reset), and then the
machine boots again with a new boot id. So before the first such row is committed, the daemon
writes a small marker into the products root (fsynced): the boot id and the highest calibrated
row id at that moment (``after_id``): the rows that may name unsynced products are those with a
higher id. Ids, not times: row ids only grow (SQLite's rowid of a table whose rows are never
deleted, PostgreSQL's sequence), while the wall clock may be stepped back (NTP) between the marker
and the rows - by more than any margin, which hid every later row from the check. The marker's
wall time (``since``) is still written, for people and for a marker of an earlier version, which
has no ``after_id``: then the rows are chosen by time, as that version did. At start-up (`settle`):

* no marker: every product is on the disk;
* a marker of this boot: the kernel still holds (or has written) those pages. Once they are old
  enough to have been written back (`SETTLED_AFTER`), the products are fsynced (cheap by then)
  and the marker removed; a younger marker is kept (a run right after another pays nothing);
* a marker of another boot: the machine went down meanwhile. Every calibrated light committed
  after the marker (a higher row id) is checked against its row (size and SHA-256); one that did not
  survive is no longer current and its light waits to be calibrated again (the same bytes: the
  calibration is deterministic), with an event saying why.

The live daemon settles again once the marker is old enough, between jobs (`Unsynced.maybe_settle`).
Masters and stacks are still fsynced one by one: few, and more is built on them. Only the
``watch`` daemon defers, and only on Linux (a boot id) without a Dask cluster (only a writer's own
fsync flushes a network file system's cache); the CLI's commands sync every product as before.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, func, select

from ccdwatch.catalog import Catalog, log_event, utcnow
from ccdwatch.models import Calibrated, Frame, FrameState

if TYPE_CHECKING:
    from ccdwatch.pipeline.context import Context

logger = logging.getLogger(__name__)

#: The marker, in the products root.
MARKER = ".ccdwatch-unsynced.json"
#: Seconds after which the kernel has written dirty pages back by itself (``vm.dirty_expire_centisecs``,
#: 30 s by default, plus its 5 s writeback period and a margin): a marker that old costs little to settle.
SETTLED_AFTER = 60.0
#: Where Linux says which boot this is.
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This boot's id (Linux), or None where there is none: products are then fsynced one by one."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def for_daemon(ctx: Context) -> Unsynced | None:
    """The daemon's marker for ``ctx``'s products root, or None where deferring cannot be made
    safe: no boot id to tell a crash of the machine by, or a Dask cluster (on a network file
    system only the writer's own fsync flushes its cache)."""
    boot = boot_id()
    if boot is None or ctx.cfg.workers.scheduler:
        return None
    return Unsynced(ctx.products, boot, ctx.clock)


def last_calibrated_id(catalog: Catalog) -> int:
    """The highest calibrated row id so far (0: none): rows committed later have higher ids."""
    with catalog.reader() as s:
        return int(s.scalar(select(func.max(Calibrated.id))) or 0)


@dataclass
class Unsynced:
    """The marker of one products root: written before the first row of an unsynced product."""

    products: Path
    boot: str
    clock: Callable[[], float] = field(default=time.time)  # seconds since the epoch (the pipeline's)
    #: the marker this process knows is in place (None: none known)
    _marker: dict | None = field(default=None, init=False)

    @property
    def path(self) -> Path:
        return self.products / MARKER

    def note(self, catalog: Catalog) -> None:
        """Called before a row naming an unsynced product is committed: the marker exists (a
        marker of this boot already there covers the rows after its own, older, row id)."""
        if self._marker is not None:
            return
        marker = self._read()
        if marker is not None and marker.get("boot") == self.boot:
            self._marker = marker
            return
        marker = {"boot": self.boot, "since": self._now().isoformat(), "after_id": last_calibrated_id(catalog)}
        self._write(marker)
        self._marker = marker

    def maybe_settle(self, catalog: Catalog) -> None:
        """Between jobs: once the marker this process wrote is old enough, fsync its products
        (written back by the kernel by then) and remove it."""
        if self._marker is not None and (self._now() - _since(self._marker)).total_seconds() >= SETTLED_AFTER:
            self._sync_since(catalog, self._marker)

    def settle(self, catalog: Catalog) -> list[int]:
        """At start-up: deal with the marker left by the last run (see the module). Returns the
        ids of lights whose calibrated product was lost, now waiting to be calibrated again."""
        marker = self._read()
        if marker is None:
            return []
        if marker.get("boot") == self.boot:
            self._marker = marker  # rows of this run are covered by the marker as it is
            self.maybe_settle(catalog)
            return []
        lost = lost_products(catalog, marker, products=self.products)
        self._sync_since(catalog, marker)  # what did survive, now for good; the marker goes
        return lost

    # ------------------------------------------------------------------ the marker
    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC).replace(tzinfo=None)

    def _sync_since(self, catalog: Catalog, marker: dict) -> None:
        paths = _products_since(catalog, marker, self.products)
        for path in paths:
            _fsync(Path(path))
        for directory in {Path(p).parent for p in paths}:
            _fsync(directory)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        _fsync(self.products)
        self._marker = None

    def _read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # unreadable: treat it as a marker of another boot
            logger.warning("the unsynced-products marker %s cannot be read (%s): checking the calibrated products",
                           self.path, exc)
            return {"boot": None, "since": None}
        return data if isinstance(data, dict) else {"boot": None, "since": None}

    def _write(self, data: dict) -> None:
        from ccdwatch.fitsio import write_bytes_atomic

        self.products.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, json.dumps(data).encode())


def _since(marker: dict) -> datetime:
    """The marker's time (a marker that cannot be read: the beginning of time)."""
    try:
        return datetime.fromisoformat(str(marker["since"]))
    except (KeyError, TypeError, ValueError):
        return datetime(1970, 1, 1)


#: A marker of an earlier version (no ``after_id``): rows are looked for from a little before its
#: time, as the marker's clock (the pipeline's) and the rows' (`utcnow`) are read at different moments.
MARGIN = timedelta(seconds=5)


def _after(marker: dict) -> ColumnElement[bool]:
    """The rows a marker covers: a higher id than its ``after_id``, or, in a marker of an earlier
    version (or one that cannot be read), a time from a little before its ``since``."""
    after = marker.get("after_id")
    if isinstance(after, int) and not isinstance(after, bool):
        return Calibrated.id > after
    return Calibrated.created_at >= _since(marker) - MARGIN


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # gone: `lost_products` is what deals with that
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.warning("cannot flush %s to the disk: %s", path, exc)
    finally:
        os.close(fd)


def _under(path: str, root: Path) -> bool:
    return Path(path).is_relative_to(root)


def _products_since(catalog: Catalog, marker: dict, products: Path) -> list[str]:
    """The calibrated products under ``products`` committed after ``marker`` was written."""
    with catalog.reader() as s:
        paths = s.scalars(select(Calibrated.path).where(_after(marker)))
        return [p for p in paths if _under(p, products)]


def lost_products(catalog: Catalog, marker: dict, *, products: Path) -> list[int]:
    """After the machine went down: the current calibrated lights (under ``products``) committed
    after ``marker`` was written whose product is not what its row says (missing, short, other
    bytes) are no longer current, the damaged file is removed and their lights wait to be
    calibrated again. Their frame ids."""
    lost: list[int] = []
    with catalog.session() as s:
        rows = s.execute(select(Calibrated, Frame).join(Frame, Frame.id == Calibrated.frame_id)
                         .where(Calibrated.current, _after(marker))).all()
        for cal, frame in rows:
            if not _under(cal.path, products):
                continue
            why = _damage(Path(cal.path), cal.sha256)
            if why is None:
                continue
            Path(cal.path).unlink(missing_ok=True)
            cal.current = False
            if frame.state in (FrameState.CALIBRATED, FrameState.STACKED, FrameState.REJECTED):
                frame.state, frame.state_reason = FrameState.WAITING, None
            frame.updated_at = utcnow()
            log_event(s, frame, "lost", f"calibrated product v{cal.version} {why} after the machine went down "
                                        "before it reached the disk: calibrated again")
            lost.append(frame.id)
    if lost:
        logger.warning("the machine went down with %d calibrated light(s) not yet on the disk: calibrating them "
                       "again", len(lost))
    return lost


def _damage(path: Path, sha256: str) -> str | None:
    """Why the product at ``path`` is not the one its row names, or None."""
    from ccdwatch.fitsio import sha256_file

    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        return "was missing"
    except OSError as exc:
        return f"could not be read ({exc})"
    return None if actual == sha256 else "did not match its checksum"
