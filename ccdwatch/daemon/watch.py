"""The daemon: a watchdog observer feeding one worker loop, with scans as the safety net.

Events are hints only. The observer's handler does nothing but put ``(kind, path)`` on a queue
(an exception in a handler would silently kill the observer thread). The worker loop, on the
main thread, decides when a file is ready (:meth:`Watcher.changed`, :meth:`Watcher.promote_settled`):

* a ``closed`` event after writing, or a move into place (the *destination* path), makes it
  ready at once;
* inotify ``created``/``modified`` events make it pending until one of those comes; only a
  writer that never closes it is given up on, after ``watch.fallback_settle_seconds`` (size,
  mtime and inode stable for ``watch.settle_seconds`` and the file unmodified that long).
  Windows/Samba copies and ``rsync --preallocate`` give the file its final size first and
  fill it later, so stability over a few seconds proves nothing on inotify;
* on the polling observer (network mounts: no close events), and for files found by a scan
  (start-up, a new directory, an overflow: their events may never come), a file is ready once
  stable for ``watch.settle_seconds``; a file whose mtime is already that old is ready at once;
* links, FIFOs and directories are not written to: they are handed over at once (and refused);
* the reader in :mod:`ccdwatch.fitsio` is the last word: a file shorter than its header
  declares and still recent, or preallocated with its last block still zero bytes and modified
  within ``watch.fallback_settle_seconds`` (``incomplete-tail``), is put back to pending
  instead of being quarantined or catalogued.

Start-up: catalogue check (done by :class:`~ccdwatch.catalog.Catalog`), crash recovery, observer,
then a reconciliation scan of the whole tree; READY is sent once that scan is queued. Rescans run
periodically and after an inotify queue overflow. If the observer thread dies the daemon exits
non-zero so that systemd restarts it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ccdwatch.catalog import publish_snapshot, utcnow
from ccdwatch.config import Config, ConfigError
from ccdwatch.daemon.inbox import Inbox
from ccdwatch.daemon.notify import Notifier
from ccdwatch.jobs import pool
from ccdwatch.jobs.pool import Stopping
from ccdwatch.pipeline import Pipeline

logger = logging.getLogger(__name__)

EXIT_OBSERVER_DIED = 3
WATCHED_EVENTS = [DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileModifiedEvent,
                  FileMovedEvent]


class _Enqueue(FileSystemEventHandler):
    """Turns filesystem events into queue items; never raises.

    The observer watches the incoming directory's real path (``watched``: a symlink resolved, as
    inotify does not follow one); the items carry the configured one (``shown``), under which
    the scans find and the catalogue records the files."""

    def __init__(self, q: Inbox, watched: str = "", shown: str = "") -> None:
        self.q = q
        self.watched, self.shown = watched, shown

    def _path(self, raw: bytes | str) -> str:
        path = os.fsdecode(raw)
        if self.watched != self.shown and (path == self.watched or path.startswith(self.watched + os.sep)):
            return self.shown + path[len(self.watched):]
        return path

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            kind = event.event_type
            if event.is_directory:
                if kind in ("created", "moved"):
                    self.q.put(("scan", self._path(event.dest_path or event.src_path)))
                return
            if kind == "closed":
                self.q.put(("ready", self._path(event.src_path)))
            elif kind == "moved":
                if event.dest_path:  # "" when moved out of the tree (full events)
                    self.q.put(("ready", self._path(event.dest_path)))
            elif kind in ("created", "modified"):
                self.q.put((kind, self._path(event.src_path)))
        except Exception:  # noqa: BLE001 - the observer thread must survive anything
            pass


#: The loggers on which watchdog reports a kernel queue overflow: its inotify reader's always, its
#: watch group's only when it rebuilds recursive watches (watchdog 7).
OVERFLOW_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


class _OverflowWatch(logging.Filter):
    """watchdog rebuilds its inotify watches after a kernel queue overflow but tells handlers
    nothing; it logs a warning (`OVERFLOW_LOGGERS`), which this filter turns into a rescan request."""

    def __init__(self, q: Inbox) -> None:
        super().__init__()
        self.q = q

    def filter(self, record: logging.LogRecord) -> bool:
        if "overflow" in record.getMessage().lower():
            self.q.put(("overflow", ""))
        return True


Signature = tuple[int, int, int]  # size (bytes), mtime (ns), inode


@dataclass
class Pending:
    """A file waiting to be ready: its last signature, since when (s) it was seen unchanged, and
    whether stability alone will do (``quick``) or a close/move event is awaited (the fallback)."""

    sig: Signature
    since: float
    quick: bool


@dataclass
class Stats:
    ingested: int = 0
    duplicate: int = 0
    unchanged: int = 0
    quarantined: int = 0
    incomplete: int = 0
    errors: int = 0
    started: float = field(default_factory=time.time)
    last_ingest: float | None = None


class Watcher:
    """The worker loop around a :class:`Pipeline`."""

    def __init__(self, config: Config, pipeline: Pipeline, *, notifier: Notifier | None = None,
                 progress: bool | None = None) -> None:
        self.cfg = config
        self.pipeline = pipeline
        self.root = Path(config.paths.incoming).absolute()
        self.notifier = notifier or Notifier()
        self.q = Inbox()
        self.pending: dict[str, Pending] = {}
        # True while an inotify observer runs: writers' close events are then to be expected.
        self.closes_expected = False
        self.ready: OrderedDict[str, None] = OrderedDict()
        self.waiting: set[str] = set()  # files found incomplete (logged once each)
        self.stats = Stats()
        self.stop_event = threading.Event()
        self.stop_signal: str | None = None
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.observer: BaseObserver | None = None
        self._watched: tuple[int, int, str] | None = None  # the watched directory: (device, inode, real path)
        self._root_gone = False
        # While a worker makes progress on a long job, the loop that waits for it stays healthy;
        # SIGTERM abandons the job rather than waiting for it (systemd's stop timeout).
        pipeline.workers.heartbeat = self.notifier.watchdog
        pipeline.workers.should_stop = self.stop_event.is_set
        # Likewise while it waits for the catalogue's write lock held by another process (a minute
        # at most, then the pipeline pauses): several such waits in a row are no hang either.
        pipeline.catalog.lock_wait.still_waiting = self._still_waiting

    def _still_waiting(self) -> bool:
        """Between two tries for the catalogue's write lock: alive; go on unless asked to stop."""
        self.notifier.watchdog()
        return not self.stop_event.is_set()

    # ------------------------------------------------------------------ readiness
    def _stat(self, path: str) -> Signature | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def changed(self, path: str, *, now: float | None = None, from_scan: bool = False,
                writing: bool = False) -> None:
        """A file appeared (a ``created`` event or a scan) or was written to (``writing``: a
        ``modified`` event): make it pending, or ready when there is nothing to wait for.

        A ``created`` event leaves a file already queued as it is: watchdog also reports files
        found in a new directory that way, whose close events may never come.
        """
        if not self.pipeline.wants(Path(path)) or path in self.ready:
            return
        now = time.time() if now is None else now
        try:
            st = os.lstat(path)
        except OSError:
            self.pending.pop(path, None)
            return
        if not stat.S_ISREG(st.st_mode):  # nothing writes into a link, a FIFO or a directory
            self.mark_ready(path)
            return
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        old = self.pending.get(path)
        if old is not None and not (from_scan or writing):
            return
        if from_scan:
            if old is not None and not old.quick:
                return  # its writer is being watched: its close event decides
            if now - st.st_mtime >= self.cfg.watch.settle_seconds:
                self.mark_ready(path)
                return
        quick = from_scan or not self.closes_expected or self.cfg.watch.fallback_settle_seconds <= 0
        if old is None or old.sig != sig or old.quick != quick:
            self.pending[path] = Pending(sig, now, quick)

    def mark_ready(self, path: str) -> None:
        if self.pipeline.wants(Path(path)):
            self.pending.pop(path, None)
            self.ready[path] = None

    def retry_later(self, path: str, *, quick: bool = True) -> None:
        """Look at ``path`` again once it has settled anew (``quick=False`` on inotify: at its
        next close or move, or after the fallback)."""
        sig = self._stat(path) or (0, 0, 0)
        self.pending[path] = Pending(sig, time.time(), quick or not self.closes_expected)

    def settled(self, entry: Pending, now: float) -> bool:
        """Has a pending file (unchanged since ``entry.since``) waited long enough?"""
        stable = now - entry.since
        if stable < self.cfg.watch.settle_seconds:
            return False
        if entry.quick:
            return True
        fallback = self.cfg.watch.fallback_settle_seconds
        return stable >= fallback or now - entry.sig[1] / 1e9 >= fallback

    def promote_settled(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for path, entry in list(self.pending.items()):
            current = self._stat(path)
            if current is None:
                del self.pending[path]
                self.waiting.discard(path)
            elif current != entry.sig:
                entry.sig, entry.since = current, now
            elif self.settled(entry, now):
                del self.pending[path]
                self.ready[path] = None

    # ------------------------------------------------------------------ scans
    def _walk(self, root: Path) -> Iterator[str]:
        stack = [root]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                logger.warning("cannot list %s: %s", d, exc)
                continue
            for e in entries:
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    if self.cfg.watch.recursive and not e.name.startswith("."):
                        stack.append(Path(e.path))
                    if not self.pipeline.wants(Path(e.path)):
                        continue  # a directory named like a FITS file is yielded: it gets quarantined
                yield e.path

    def scan(self, root: Path | None = None) -> int:
        """Queue every candidate file below ``root`` (default: the incoming tree)."""
        n = 0
        now = time.time()
        for path in self._walk(root or self.root):
            self.changed(path, now=now, from_scan=True)
            n += 1
        logger.info("scanned %s: %d candidate files, %d ready, %d settling", root or self.root, n,
                    len(self.ready), len(self.pending))
        return n

    # ------------------------------------------------------------------ work
    def drain_events(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for events (or a stop request), then handle all that came."""
        self.q.wait(timeout)
        for kind, path in self.q.take():
            if kind == "ready":
                self.mark_ready(path)
            elif kind in ("created", "modified"):
                self.changed(path, writing=kind == "modified")
            elif kind == "scan":  # a directory appeared: it may be named like a FITS file
                self.changed(path)
                self.scan(Path(path))
            elif kind == "overflow":
                logger.warning("inotify queue overflowed: rescanning %s", self.root)
                self.scan()

    def process_ready(self, *, limit: int | None = None, final: bool = False, bar: Any = None,
                      batch: int = 32) -> int:
        """Ingest ready files in batches (parsed in parallel, recorded in one transaction each)."""
        done = 0
        if not self.pipeline.maybe_resume():
            return 0  # disk full: files stay queued until space returns
        while self.ready and (limit is None or done < limit) and not self.stop_event.is_set():
            n = min(batch, len(self.ready), (limit - done) if limit is not None else batch)
            paths = [self.ready.popitem(last=False)[0] for _ in range(n)]
            for path, outcome in zip(paths, self.pipeline.handle_many(paths, final=final), strict=True):
                status = outcome.status
                if status == "incomplete" and path not in self.waiting:
                    logger.info("not complete yet, waiting: %s", outcome.detail)  # once per path
                    self.waiting.add(path)
                elif status != "incomplete":
                    self.waiting.discard(path)
                if status in ("incomplete", "error", "paused"):  # try again once it has settled anew
                    if status == "incomplete":
                        self.stats.incomplete += 1
                    elif status == "error":
                        self.stats.errors += 1
                    self.retry_later(path, quick=status != "incomplete")
                elif hasattr(self.stats, status):
                    setattr(self.stats, status, getattr(self.stats, status) + 1)
                    if status == "ingested":
                        self.stats.last_ingest = time.time()
            if bar is not None:
                bar.update(n)
            done += n
            self.notifier.watchdog()
            if self.pipeline.paused:
                break
        return done

    def status_text(self) -> str:
        n = len(self.ready) + len(self.pending)
        if self.pipeline.paused:
            return f"paused: {self.pipeline.paused}; {n} queued"
        return f"{n} queued" if n else "idle"

    def publish_snapshot(self) -> None:
        try:
            publish_snapshot(self.cfg.paths.database, Path(self.cfg.paths.snapshot))
        except Exception as exc:  # a snapshot must never stop the night's work
            logger.error("could not publish the catalogue snapshot %s: %s", self.cfg.paths.snapshot, exc)

    def write_status(self) -> None:
        """Publish the daemon's state for ``ccdwatch status`` (readers never query the daemon)."""
        path = Path(self.cfg.paths.products) / "status.json"
        state = {
            "pid": os.getpid(),
            "status": self.status_text(),
            "queue": len(self.ready) + len(self.pending),
            "ingested": self.stats.ingested,
            "quarantined": self.stats.quarantined,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        tmp = path.with_name(".ccdwatch-tmp-status.json")
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)
        except OSError as exc:
            logger.debug("cannot write %s: %s", path, exc)

    # ------------------------------------------------------------------ modes
    def run_once(self) -> Stats:
        """Start-up scan, drain all work as the daemon would, then finish the night and return."""
        self.pipeline.recover()
        self.scan()
        if self.pending:  # files still being written: the workers' server imports while they settle
            pool.warm_up(self.cfg.workers)  # (ready ones start it with their first job: none if all are unchanged)
        bar = None
        if self.progress and len(self.ready) > 20:
            from tqdm import tqdm

            bar = tqdm(total=len(self.ready) + len(self.pending), unit="file", desc="ingest")
        try:
            while (self.ready or self.pending) and not self.stop_event.is_set():
                self.process_ready(bar=bar, final=True)
                if self.pending:
                    self.promote_settled()
                    if not self.ready:
                        time.sleep(min(0.2, self.cfg.watch.settle_seconds))
            if bar is not None:
                bar.close()
                bar = None
            if not self.stop_event.is_set():
                self.pipeline.finish()
        except Stopping:
            logger.warning("stopped before the night was finished; the next run picks up from here")
        finally:
            if bar is not None:
                bar.close()
        return self.stats

    def _make_observer(self) -> BaseObserver:
        if self.cfg.watch.observer == "polling":
            return PollingObserver(timeout=self.cfg.watch.poll_interval)
        if sys.platform.startswith("linux"):
            from watchdog.observers.inotify import InotifyObserver

            # full events: a file moved in from outside the tree is a move (ready), not a creation
            return InotifyObserver(generate_full_events=True)
        return Observer()

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: object) -> None:
            # Only flags and a byte on the self-pipe here: the loop wakes and stops at once.
            if self.stop_event.is_set():  # a second request: the first one is stuck, so go now
                os.write(2, b"ccdwatch: second stop request, exiting at once\n")
                os._exit(128 + signum)
            self.stop_signal = signal.Signals(signum).name
            self.stop_event.set()
            self.q.wake()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self) -> int:
        """The daemon loop; returns the process exit code."""
        try:  # the embedded default (./data/incoming) may not exist yet on a first run
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"config key 'paths.incoming': {self.root} does not exist and cannot be "
                              f"created ({exc.strerror}); point it at the camera's output directory") from None
        self.pipeline.load_jobs()  # while the fork server loads on the other core
        self.pipeline.recover()
        overflow = _OverflowWatch(self.q)
        for name in OVERFLOW_LOGGERS:
            logging.getLogger(name).addFilter(overflow)
        self.observer = observer = self._make_observer()
        self._watch_root(observer)
        observer.start()
        # only Linux's inotify reports closes; other platforms' native observers do not
        self.closes_expected = self.cfg.watch.observer == "inotify" and sys.platform.startswith("linux")
        try:
            self.scan()
            self.notifier.ready(self.status_text())
            logger.info("watching %s (%s observer)", self.root, self.cfg.watch.observer)
            now = time.monotonic()
            due = {"tick": now, "status": now, "snapshot": now,
                   "rescan": now + (self.cfg.watch.rescan_interval or float("inf"))}
            while not self.stop_event.is_set():
                if not observer.is_alive():
                    logger.critical("the filesystem observer thread died; exiting so that the service restarts")
                    return EXIT_OBSERVER_DIED
                try:
                    self._iteration(due)
                except Stopping:
                    break
            logger.info("received %s: stopping", self.stop_signal or "a stop request")
            return 0
        finally:
            self.closes_expected = False
            self.notifier.stopping()
            observer.stop()
            observer.join(timeout=5)
            for name in OVERFLOW_LOGGERS:
                logging.getLogger(name).removeFilter(overflow)

    def _watch_root(self, observer: BaseObserver) -> None:
        """Watch the incoming directory where it really is now (a symlink resolved: inotify does
        not follow one, and watched as a link it never reports a file), remembering its identity."""
        real = self.root.resolve()
        st = os.stat(real)
        observer.schedule(_Enqueue(self.q, str(real), str(self.root)), str(real),
                          recursive=self.cfg.watch.recursive, event_filter=WATCHED_EVENTS)
        self._watched = (st.st_dev, st.st_ino, str(real))

    def check_root(self) -> None:
        """Watch the incoming directory anew when it is not the one watched any more: removed and
        made again, a disk unplugged and plugged in again, a share mounted again, a symlink pointed
        elsewhere (the observer's watch died with the old one, and no event would come again);
        then rescan it for what arrived in between. While it is gone, say so once and wait."""
        observer = self.observer
        if observer is None:
            return
        try:
            real = self.root.resolve(strict=True)
            st = os.stat(real)
        except OSError:
            if not self._root_gone:
                logger.warning("the incoming directory %s is gone (a disk unplugged, a share unmounted?): "
                               "waiting for it to come back", self.root)
            self._root_gone = True
            return
        alive = all(emitter.is_alive() for emitter in observer.emitters)
        if self._watched == (st.st_dev, st.st_ino, str(real)) and alive and observer.emitters:
            return
        logger.warning("the incoming directory %s %s: watching it anew and rescanning", self.root,
                       "is back" if self._root_gone else "is not the one watched any more")
        observer.unschedule_all()
        try:
            self._watch_root(observer)
        except OSError:  # gone again in between: the next check sees to it
            self._watched, self._root_gone = None, True
            return
        self._root_gone = False
        self.scan()

    def _iteration(self, due: dict[str, float]) -> None:
        """One pass of the worker loop: events, ingest, periodic work, health signals."""
        wait = 0.0 if self.ready else min(0.5, self.cfg.watch.settle_seconds / 2 or 0.5)
        # not past a due tick: a group closing in 0.1 s is stacked then, not after the whole wait
        self.drain_events(min(wait, max(0.0, due["tick"] - time.monotonic())))
        self.promote_settled()
        self.process_ready(limit=50)
        now = time.monotonic()
        if now >= due["tick"]:
            self.pipeline.tick()
            due["tick"] = now + self.cfg.watch.tick_interval
            closes = self.pipeline.next_group_close
            if closes is not None:  # a group closes before the next tick: stack it then
                due["tick"] = min(due["tick"], now + max(0.0, (closes - utcnow()).total_seconds()) + 0.05)
        if now >= due["rescan"]:
            self.scan()
            due["rescan"] = now + self.cfg.watch.rescan_interval
        self.notifier.status(self.status_text())
        self.notifier.watchdog()
        if now >= due["status"]:
            self.check_root()
            self.write_status()
            due["status"] = now + 5.0
        backlog = len(self.ready) + len(self.pending)
        if backlog > 100 and now >= due.get("progress", 0.0):  # a long catch-up: plain progress lines
            logger.info("catching up: %d files ingested so far, %d queued", self.stats.ingested, backlog)
            due["progress"] = now + 10.0
        if self.cfg.paths.snapshot and now >= due["snapshot"]:
            self.publish_snapshot()
            due["snapshot"] = now + self.cfg.watch.snapshot_minutes * 60
