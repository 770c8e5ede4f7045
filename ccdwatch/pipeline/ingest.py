"""Ingest: a path on disk -> one catalogue row per distinct content, or a quarantine with a reason.

Parsing runs on the workers (a hostile file can kill a worker, never the daemon); the rows are
written here, in one transaction per batch.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ccdwatch import faults
from ccdwatch.catalog import log_event, utcnow
from ccdwatch.catalog.queries import frame_by_sha256, source_file
from ccdwatch.fitsio import RejectedFile, fits_suffix, is_temp_name
from ccdwatch.headers import FrameInfo, ImageType, camera_key, fingerprint
from ccdwatch.jobs import pool, specs
from ccdwatch.models import Frame, FrameState, SourceFile
from ccdwatch.pipeline.context import Context
from ccdwatch.pipeline.lifecycle import dedupe_exposure, path_rewritten, restore
from ccdwatch.pipeline.runner import Runner

logger = logging.getLogger(__name__)

#: Reasons for which a file that is still being written is retried rather than quarantined.
#: ``incomplete-tail`` (preallocated, not filled yet) is only given within its own grace
#: (``watch.fallback_settle_seconds`` after the last modification), so it is always retried.
INCOMPLETE_REASONS = {"truncated-data", "truncated-header", "empty", "incomplete-tail"}


@dataclass
class Outcome:
    """What ``handle`` did with one path."""

    status: str  # ingested | duplicate | unchanged | quarantined | ignored | incomplete | gone | error | paused
    frame_id: int | None = None
    detail: str = ""


def wants(path: Path, root: Path | None = None) -> bool:
    """Is this a name ccdwatch should look at (a FITS suffix, compressed ones included so that
    they are catalogued, not a temp name)? Whether .fz/.gz are read is ingest.allow_compressed.
    Below ``root`` (the incoming directory), nothing in a hidden folder: a desktop's trash
    (``.Trash-1000/files/``), Syncthing's ``.stversions/``, as the scans skip them."""
    if is_temp_name(path.name) or fits_suffix(path.name) is None:
        return False
    if root is not None:
        try:
            folders = path.relative_to(root).parts[:-1]
        except ValueError:
            return True
        return not any(part.startswith(".") for part in folders)
    return True


def _as_utc_naive(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


class Ingester:
    """Ingests batches of paths; remembers how often each path's parsing crashed or hung."""

    def __init__(self, ctx: Context, runner: Runner) -> None:
        self.ctx = ctx
        self.runner = runner
        self._errors: dict[str, int] = {}

    def ingest(self, paths: Sequence[str | os.PathLike[str]], *,
               final: bool = False) -> tuple[list[Outcome], list[int]]:
        """Ingest a batch of paths: parsed in parallel by the workers, recorded in one transaction.

        ``final`` (``watch --once``): a file shorter than its header declares is quarantined at
        once instead of being given time to finish. A preallocated file whose tail is still
        zero is given its time even then (``incomplete``): quarantining it would hold a complete
        frame with a zero last block for ever, cataloguing it would record a half-written one.

        Returns
        -------
        outcomes, new_lights
            What happened to each path, in order; the ids of lights catalogued for the first time.
        """
        outcomes: list[Outcome | None] = [None] * len(paths)
        todo = self._changed(paths, outcomes)
        cfg = self.ctx.cfg
        now = self.ctx.clock()
        planned = [specs.IngestSpec(str(path), self.ctx.max_data_bytes, cfg.ingest.allow_compressed, cfg.classify,
                                 cfg.night.timezone, cfg.night.start_hour, relpath=self.relpath(path),
                                 unwritten_grace=cfg.watch.fallback_settle_seconds, now=now,
                                 bayer_pattern=cfg.colour.bayer_pattern,
                                 bayer_instruments=tuple(cfg.colour.instruments.items()),
                                 overscan=cfg.overscan.rules(),
                                 setpoint_tolerance=cfg.masters.temperature_tolerance)
                 for _, path, _ in todo]
        if len(planned) > 2:  # a catch-up: the files the workers parse next are read from disk meanwhile
            from ccdwatch.fitsio.descriptor import MAX_HEADER_BYTES, read_ahead  # no numpy, no astropy

            limit = self.ctx.max_data_bytes + MAX_HEADER_BYTES
            threading.Thread(target=read_ahead, args=([s.path for s in planned], limit), name="read-ahead",
                             daemon=True).start()
        lights, failed = self._parse_and_record(todo, planned, outcomes) if todo else ([], [])
        for i, path, st, error in sorted(failed, key=lambda f: f[0]):
            if isinstance(error, RejectedFile):
                outcomes[i] = self._rejected(path, st, error, final=final)
            elif isinstance(error, FileNotFoundError):
                outcomes[i] = Outcome("gone")
            elif isinstance(error, Exception):  # a worker that died or hung, or an unexpected error: bounded retries
                outcomes[i] = self._errored(path, st, error)
            else:
                raise error
        return [o if o is not None else Outcome("error") for o in outcomes], lights

    def _parse_and_record(self, todo: list[tuple[int, Path, os.stat_result]], planned: list[specs.IngestSpec],
                          outcomes: list[Outcome | None]) -> tuple[list[int], list[tuple[int, Path, os.stat_result,
                                                                                       BaseException]]]:
        """Parse ``planned`` on the workers and catalogue each good file as its job ends, in one
        transaction (`_Recording`); the new lights' ids, and the files whose parsing failed (with
        the error) for the caller to deal with once the transaction is over (a quarantine has its own)."""
        good: list[tuple[int, Path, specs.IngestResult]] = []
        failed: list[tuple[int, Path, os.stat_result, BaseException]] = []
        try:
            with self.ctx.catalog.session() as s:
                stream = _Recording(self, outcomes, s)

                def take(k: int, fut: Future) -> None:  # as each file is parsed: recorded while the rest are
                    i, path, st = todo[k]
                    exc = fut.exception()
                    if exc is not None:
                        failed.append((i, path, st, exc))
                        return
                    self._errors.pop(str(path), None)
                    good.append((i, path, fut.result()))
                    stream.add(*good[-1])

                self.runner.workers.map(specs.INGEST, planned, timeout=self.ctx.cfg.workers.ingest_timeout,
                                        on_result=take)
                stream.raise_stored()  # what recording raised: the transaction is rolled back
            return stream.lights, failed
        except IntegrityError as exc:  # another writer catalogued one of these files first
            logger.info("another writer catalogued one of these files first (%s); recording again",
                        str(exc.orig).splitlines()[0])
            return self._record(good, outcomes), failed

    def _record(self, good: list[tuple[int, Path, specs.IngestResult]], outcomes: list[Outcome | None]) -> list[int]:
        """Catalogue the parsed files in one transaction; the new lights' ids. Another daemon that
        catalogued the same content a moment earlier (a unique sha256) costs one more try, no error."""
        for attempt in range(2, 4):  # the first of the three tries was `ingest`'s, as the files were parsed
            try:
                with self.ctx.catalog.session() as s:
                    stream = _Recording(self, outcomes, s)
                    for item in sorted(good, key=lambda g: g[0]):
                        stream.add(*item)
                    stream.raise_stored()
                return stream.lights
            except IntegrityError as exc:
                if attempt == 3:
                    raise
                logger.info("another writer catalogued one of these files first (%s); recording again",
                            str(exc.orig).splitlines()[0])
        return []

    def relpath(self, path: Path) -> str:
        """The path below the incoming directory ('/'-separated), else the file name."""
        try:
            return path.relative_to(self.ctx.incoming).as_posix()
        except ValueError:
            return path.name

    def _changed(self, paths: Sequence[str | os.PathLike[str]],
                 outcomes: list[Outcome | None]) -> list[tuple[int, Path, os.stat_result]]:
        """The paths to parse: wanted names whose size, mtime or inode differ from the catalogue's."""
        todo: list[tuple[int, Path, os.stat_result]] = []
        with self.ctx.catalog.session() as s:
            for i, p in enumerate(paths):
                path = Path(p).absolute()
                if not wants(path, self.ctx.incoming):
                    outcomes[i] = Outcome("ignored")
                    continue
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    outcomes[i] = Outcome("gone")
                    continue
                known = source_file(s, str(path))
                if known is not None and known.frame is not None and known.frame.state != FrameState.MISSING and (
                        known.size, known.mtime_ns, known.inode) == (st.st_size, st.st_mtime_ns, st.st_ino):
                    outcomes[i] = Outcome("unchanged", known.frame_id)
                    continue
                todo.append((i, path, st))
        return todo

    def _rejected(self, path: Path, st: os.stat_result, exc: RejectedFile, *, final: bool) -> Outcome:
        grace = 0.0 if final else max(30.0, 3 * self.ctx.cfg.watch.settle_seconds + 1.0)
        if exc.reason in INCOMPLETE_REASONS and (exc.reason == "incomplete-tail"
                                                 or (self.ctx.clock() - st.st_mtime) < grace):
            return Outcome("incomplete", detail=str(exc))
        if exc.reason == "unreadable":
            return self._unreadable(path, st, exc, final=final)
        return self.quarantine(path, st, f"{exc.reason}: {exc.message}")

    def _unreadable(self, path: Path, st: os.stat_result, exc: RejectedFile, *, final: bool) -> Outcome:
        """A file the system would not let us read (a writer's lock on a Windows share, permissions
        set a moment later, an I/O error of a disk that dropped out): the system's answer, not the
        file's content. Tried again (up to ``ingest.max_tries``), then quarantined without its
        signature: a lock released or permissions fixed change neither its size, its time nor its
        inode, and it is read again whenever it is next seen (an event, a rescan, a restart)."""
        n = self._errors[str(path)] = self._errors.get(str(path), 0) + 1
        if not final and n < self.ctx.cfg.ingest.max_tries:
            logger.warning("cannot read %r yet (try %d of %d): %s", str(path), n, self.ctx.cfg.ingest.max_tries,
                           exc.message)
            return Outcome("error", detail=str(exc))
        # its count is kept (until it is read): each later look is one try, then quarantined again
        return self.quarantine(path, st, f"{exc.reason}: {exc.message} (read again when next seen)", recheck=True)

    def _errored(self, path: Path, st: os.stat_result, exc: Exception) -> Outcome:
        """A worker that crashed or hung is tried again (up to ``ingest.max_tries``); an error the
        same bytes will always raise again is quarantined at once."""
        if not isinstance(exc, pool.WorkerFailure | MemoryError):
            logger.error("error ingesting %r: %s: %s", str(path), type(exc).__name__, exc)
            return self.quarantine(path, st, f"ingest-error: {type(exc).__name__}: {exc}")
        max_tries = self.ctx.cfg.ingest.max_tries
        n = self._errors[str(path)] = self._errors.get(str(path), 0) + 1
        logger.error("error ingesting %r (try %d of %d): %s", str(path), n, max_tries, exc)
        if n >= max_tries:
            self._errors.pop(str(path), None)
            return self.quarantine(path, st, f"ingest-error: {type(exc).__name__}: {exc} (after {n} tries)")
        return Outcome("error", detail=str(exc))

    def quarantine(self, path: Path, st: os.stat_result, reason: str, *, recheck: bool = False) -> Outcome:
        """Catalogue a file that cannot be used, with the reason (one row per path until it changes;
        ``recheck``: its signature is not kept, so that it is parsed again whenever it is seen)."""
        now = utcnow()
        with self.ctx.catalog.session() as s:
            sf = source_file(s, str(path))
            if sf is not None and sf.frame is not None and sf.frame.state == FrameState.QUARANTINED \
                    and sf.frame.sha256 is None:
                frame = sf.frame
                frame.state_reason, frame.updated_at = reason, now
            else:
                frame = Frame(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, imagetyp="unknown",
                              state=FrameState.QUARANTINED, state_reason=reason, tries=0, created_at=now,
                              updated_at=now, site=self.ctx.site)
                s.add(frame)
                if sf is None:
                    sf = SourceFile(path=str(path), first_seen=now)
                    s.add(sf)
                sf.frame = frame
            sf.size, sf.mtime_ns, sf.inode, sf.last_seen = st.st_size, st.st_mtime_ns, st.st_ino, now
            if recheck:
                sf.size = sf.mtime_ns = sf.inode = None
            s.flush()
            log_event(s, frame, "quarantined", reason)
            frame_id = frame.id
        logger.warning("quarantined %r: %s", str(path), reason)
        return Outcome("quarantined", frame_id, reason)


class _Recording:
    """Catalogues parsed files one at a time in one transaction (``session``), as the workers
    parse the next ones: the daemon's ~10 ms a file (2026-12-01) overlaps their parsing instead of
    following it (a batch of 32 left the workers idle 0.33 s). The first error stops the recording
    and is kept for `raise_stored` (the workers' callback must not raise); the new lights' ids
    in ``lights``."""

    def __init__(self, ingester: Ingester, outcomes: list[Outcome | None], session: Session) -> None:
        self.ingester = ingester
        self.outcomes = outcomes
        self.session = session
        self.lights: list[int] = []
        self.error: Exception | None = None

    def add(self, i: int, path: Path, result: specs.IngestResult) -> None:
        if self.error is not None:
            return
        ctx = self.ingester.ctx
        try:
            outcome = self.outcomes[i] = record(self.session, path, result, self.ingester.relpath(path),
                                                fingerprint(ctx.cfg.classify), site=ctx.site)
        except Exception as exc:  # noqa: BLE001 - raised again by `raise_stored` (an interrupt goes at once)
            self.error = exc
            return
        if outcome.status == "ingested" and result.info.imagetyp is ImageType.LIGHT and outcome.frame_id is not None:
            self.lights.append(outcome.frame_id)

    def raise_stored(self) -> None:
        if self.error is not None:
            raise self.error


def initial_state(imagetyp: ImageType, ignored: bool) -> FrameState:
    """Where a frame of this type enters the pipeline."""
    if ignored:
        return FrameState.IGNORED
    return {ImageType.LIGHT: FrameState.WAITING, ImageType.UNKNOWN: FrameState.UNCLASSIFIED}.get(
        imagetyp, FrameState.INGESTED)


def classification_record(info: FrameInfo, pixels: dict[str, Any] | None, fingerprint: str) -> dict[str, Any]:
    """How the type was decided, with the evidence, for the catalogue (``show`` prints it)."""
    return {"by": info.classified_by, "why": info.type_source, "rule": info.rule, "ignored": info.ignored,
            "pixels": pixels, "fingerprint": fingerprint}


def new_frame(path: Path, raw: specs.IngestResult, now: datetime, relpath: str, fingerprint: str, *,
              site: str | None = None) -> Frame:
    """The catalogue row of a frame never seen before (catalogued by the daemon of ``site``)."""
    info = raw.info
    state = initial_state(info.imagetyp, info.ignored)
    return Frame(
        sha256=raw.sha256, path=str(path), size=raw.size, mtime_ns=raw.mtime_ns, hdu_index=raw.hdu_index,
        imagetyp=info.imagetyp.value, type_source=info.type_source, exptime=info.exptime, filter=info.filter,
        object=info.object, date_obs=_as_utc_naive(info.date_obs), night=info.night, xbin=info.xbin,
        ybin=info.ybin, naxis1=info.naxis1, naxis2=info.naxis2, ccd_temp=info.ccd_temp, set_temp=info.set_temp,
        gain=info.gain, egain=info.egain, offset=info.offset, readout_mode=info.readout_mode,
        instrument=info.instrument, telescope=info.telescope, ra_deg=info.ra_deg, dec_deg=info.dec_deg,
        camera_key=camera_key(info), header=raw.header, header_warnings=list(info.warnings) or None,
        state=state,
        state_reason=info.type_source if state in (FrameState.UNCLASSIFIED, FrameState.IGNORED) else None,
        tries=0, created_at=now, updated_at=now, relpath=relpath,
        classification=classification_record(info, raw.pixels, fingerprint), bayer_pattern=info.bayer_pattern,
        site=site, overscan=info.overscan.to_json() if info.overscan is not None else None,
    )


def record(s: Session, path: Path, raw: specs.IngestResult, relpath: str, fingerprint: str, *,
           site: str | None = None) -> Outcome:
    """Catalogue one parsed file: a new frame (of ``site``), or another path of a known content."""
    info = raw.info
    now = utcnow()
    sf = source_file(s, str(path))
    old_frame = sf.frame if sf is not None else None
    frame = frame_by_sha256(s, raw.sha256)
    status = "duplicate"
    if frame is None:
        status = "ingested"
        frame = new_frame(path, raw, now, relpath, fingerprint, site=site)
        s.add(frame)
        s.flush()
        log_event(s, frame, "ingested",
                  f"{info.imagetyp.value} exptime={info.exptime} filter={info.filter} "
                  f"from {path.name} ({info.type_source})")
        dedupe_exposure(s, frame)
    else:
        log_event(s, frame, "seen-again", f"same content as {path.name}")
        restore(s, frame, str(path), replaced=old_frame)
    if sf is None:
        sf = SourceFile(path=str(path), first_seen=now)
        s.add(sf)
    sf.frame = frame
    sf.size, sf.mtime_ns, sf.inode, sf.last_seen = raw.size, raw.mtime_ns, raw.inode, now
    faults.point("ingest-commit", path)
    if old_frame is not None and old_frame is not frame:
        log_event(s, old_frame, "path-reused", f"{path.name} now holds other content")
        path_rewritten(s, old_frame, frame, str(path))
        if old_frame.state == FrameState.QUARANTINED and old_frame.sha256 is None:
            s.flush()
            if not old_frame.files:  # a file caught mid-write, now complete: forget it
                s.delete(old_frame)
    frame_id = frame.id
    logger.info("%s %s -> frame %d (%s)", status, path, frame_id, info.imagetyp.value)
    return Outcome(status, frame_id)
