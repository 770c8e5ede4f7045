"""The jobs, assembled in one place you can read top to bottom.

``handle(path)``  ingest one file: safe read, header normalisation, one catalogue row per
                  distinct content; a light is calibrated at once when its masters exist.
``tick()``        periodic work: build masters whose frames have settled, calibrate lights that
                  were waiting, recalibrate lights for which a better master appeared, stack
                  groups that have gone quiet.
``finish()``      what ``watch --once`` does at the end: everything ``tick`` does, as if the
                  night were over.

This is the one place where files, the catalogue and the numerics meet. Each job is one
transaction, written after its output files are safely in place (temp file, fsync, rename), and
each is safe to run twice: a job whose result already exists does nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from ccdwatch import __version__, calib, faults, jobs, qa
from ccdwatch.catalog import Catalog, log_event, utcnow
from ccdwatch.config import Config
from ccdwatch.fitsio import (
    DiskFull,
    RejectedFile,
    fits_suffix,
    is_temp_name,
    sweep_temp_files,
)
from ccdwatch.headers import ImageType, camera_key
from ccdwatch.models import Calibrated, Frame, Master, MasterInput, SourceFile, Stack, StackMember
from ccdwatch.products import (
    calibrated_path,
    master_path,
    preview_path,
    product_header,
    short_hash,
    stack_path,
)

logger = logging.getLogger(__name__)

CALIBRATION_TYPES = ("bias", "dark", "flat")
#: Reasons for which a file that is still being written is retried rather than quarantined.
INCOMPLETE_REASONS = {"truncated-data", "truncated-header", "empty"}
EXPTIME_TOLERANCE = 1e-3  # seconds: exposures closer than this are "the same exposure"


@dataclass
class Outcome:
    """What ``handle`` did with one path."""

    status: str  # ingested | duplicate | unchanged | quarantined | ignored | incomplete | gone | error
    frame_id: int | None = None
    detail: str = ""


@dataclass
class Selection:
    """The masters chosen for one light, and what is missing (with reasons)."""

    bias: Master | None = None
    dark: Master | None = None
    dark_scale: float | None = None
    flat: Master | None = None
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> tuple[int | None, int | None, int | None]:
        return (
            self.bias.id if self.bias else None,
            self.dark.id if self.dark else None,
            self.flat.id if self.flat else None,
        )

    def explain(self) -> str:
        parts = []
        for kind in ("bias", "dark", "flat"):
            m = getattr(self, kind)
            if m is not None:
                extra = f", scaled x{self.dark_scale:.4g}" if kind == "dark" and self.dark_scale not in (None, 1.0) else ""
                parts.append(f"{kind}: master #{m.id} (night {m.night} v{m.version}{extra})")
            elif kind in self.missing:
                parts.append(f"{kind}: MISSING - {self.missing[kind]}")
        return "; ".join(parts + self.notes)


def _as_utc_naive(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def temperature_ref(frame: Frame) -> float | None:
    """The temperature a frame was taken at for matching: set-point if present, else CCD-TEMP."""
    return frame.set_temp if frame.set_temp is not None else frame.ccd_temp


def calib_key(frame: Frame) -> str:
    """The calibration key of a bias/dark/flat frame: which frames may be combined together."""
    key = f"{frame.imagetyp}|{frame.camera_key}"
    if frame.imagetyp == "dark":
        key += f"|exp={frame.exptime or 0:.3f}"
        t = temperature_ref(frame)
        key += f"|T={round(t):d}" if t is not None else "|T=?"
    if frame.imagetyp == "flat":
        key += f"|filter={(frame.filter or '').lower()}"
    return key


#: Session.info key of the per-batch cache of current masters (see Pipeline._current_masters).
_MASTERS_CACHE = "ccdwatch.current_masters"


class Pipeline:
    """All processing for one incoming tree, one products root and one catalogue."""

    def __init__(self, config: Config, catalog: Catalog, *, clock=time.time) -> None:
        self.cfg = config
        self.catalog = catalog
        self.clock = clock
        self.incoming = Path(config.paths.incoming).absolute()
        self.products = Path(config.paths.products).absolute()
        self.products.mkdir(parents=True, exist_ok=True)
        self.workdir = self.products / ".work"
        self.memory_budget = int(config.masters.memory_budget_mb * 2**20)
        self.max_data_bytes = int(config.ingest.max_data_mb * 2**20)
        w = config.workers
        self.workers = jobs.Workers(processes=w.processes, memory_limit=int(w.memory_limit_mb * 2**20), nice=w.nice)
        self._errors: dict[str, int] = {}
        self.min_free = int(config.watch.min_free_mb * 2**20)
        self.paused: str | None = None
        self._paused_at = 0.0

    # ------------------------------------------------------------------ disk full
    def _pause(self, exc: BaseException) -> None:
        """A product could not be written for lack of space: stop writing, keep every state."""
        if self.paused is None:
            logger.error("pausing: %s; nothing is lost, processing resumes once space returns", exc)
        self.paused = f"disk full ({exc})"
        self._paused_at = self.clock()

    def maybe_resume(self) -> bool:
        """Clear a pause once the retry interval has passed and the space check passes again."""
        if self.paused is None:
            return True
        if self.clock() - self._paused_at < self.cfg.watch.pause_retry_seconds:
            return False
        if shutil.disk_usage(self.products).free < self.min_free:
            self._paused_at = self.clock()
            return False
        logger.info("resuming after the pause: %s", self.paused)
        self.paused = None
        return True

    def close(self) -> None:
        self.workers.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ start-up recovery
    def recover(self) -> dict[str, int]:
        """Converge after a crash: sweep temp files, forget outputs no row references."""
        removed = sweep_temp_files(self.products)
        if self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        orphans = 0
        with self.catalog.session() as s:
            known = set(s.scalars(select(Master.path)))
            known |= set(s.scalars(select(Calibrated.path)))
            known |= set(s.scalars(select(Stack.path)))
        for sub in ("masters", "calibrated", "stacks"):
            root = self.products / sub
            if not root.exists():
                continue
            for path in root.rglob("*.fits"):
                if str(path) not in known:
                    path.unlink(missing_ok=True)
                    preview_path(path).unlink(missing_ok=True)
                    orphans += 1
        if removed or orphans:
            logger.warning("recovery: removed %d temp files and %d orphan products", len(removed), orphans)
        return {"temp_files": len(removed), "orphans": orphans}

    # ------------------------------------------------------------------ ingest
    @staticmethod
    def wants(path: Path) -> bool:
        """Is this a name ccdwatch should look at (a FITS suffix, compressed ones included so that
        they are catalogued, not a temp name)? Whether .fz/.gz are read is ingest.allow_compressed."""
        return not is_temp_name(path.name) and fits_suffix(path.name) is not None

    def handle(self, path: str | os.PathLike, *, final: bool = False) -> Outcome:
        """Ingest one path (safe to call for any event, any number of times)."""
        return self.handle_many([path], final=final)[0]

    def handle_many(self, paths: Sequence[str | os.PathLike], *, final: bool = False) -> list[Outcome]:
        """Ingest a batch of paths: parsed in parallel by the workers, recorded in one transaction.

        ``final`` (``watch --once``): a file shorter than its header declares is quarantined at
        once instead of being given time to finish.
        """
        outcomes: list[Outcome | None] = [None] * len(paths)
        todo: list[tuple[int, Path, os.stat_result]] = []
        with self.catalog.session() as s:
            for i, p in enumerate(paths):
                path = Path(p).absolute()
                if not self.wants(path):
                    outcomes[i] = Outcome("ignored")
                    continue
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    outcomes[i] = Outcome("gone")
                    continue
                known = s.scalar(select(SourceFile).where(SourceFile.path == str(path)))
                if known is not None and known.frame_id is not None and (
                        known.size, known.mtime_ns, known.inode) == (st.st_size, st.st_mtime_ns, st.st_ino):
                    outcomes[i] = Outcome("unchanged", known.frame_id)
                    continue
                todo.append((i, path, st))
        specs = [jobs.IngestSpec(str(path), self.max_data_bytes, self.cfg.ingest.allow_compressed, self.cfg.classify,
                                 self.cfg.night.timezone, self.cfg.night.start_hour) for _, path, _ in todo]
        futures = self.workers.map(jobs.ingest, specs, timeout=self.cfg.workers.ingest_timeout)
        good: list[tuple[int, Path, jobs.IngestResult]] = []
        for (i, path, st), fut in zip(todo, futures, strict=True):
            try:
                good.append((i, path, fut.result()))
                self._errors.pop(str(path), None)
            except RejectedFile as exc:
                grace = 0.0 if final else max(30.0, 3 * self.cfg.watch.settle_seconds + 1.0)
                if exc.reason in INCOMPLETE_REASONS and (self.clock() - st.st_mtime) < grace:
                    outcomes[i] = Outcome("incomplete", detail=str(exc))
                else:
                    outcomes[i] = self._quarantine(path, st, f"{exc.reason}: {exc.message}")
            except FileNotFoundError:
                outcomes[i] = Outcome("gone")
            except Exception as exc:  # a worker that died or hung, or an unexpected error: bounded retries
                n = self._errors[str(path)] = self._errors.get(str(path), 0) + 1
                logger.error("error ingesting %r (try %d of %d): %s", str(path), n, self.cfg.ingest.max_tries, exc)
                if n >= self.cfg.ingest.max_tries:
                    self._errors.pop(str(path), None)
                    outcomes[i] = self._quarantine(path, st, f"ingest-error: {type(exc).__name__}: {exc} (after {n} tries)")
                else:
                    outcomes[i] = Outcome("error", detail=str(exc))
        lights = []
        if good:
            with self.catalog.session() as s:
                for i, path, result in good:
                    outcomes[i] = self._record(s, path, result)
                    if outcomes[i].status == "ingested" and result.info.imagetyp is ImageType.LIGHT:
                        lights.append(outcomes[i].frame_id)
        if lights:
            self.calibrate_many(lights)
        return [o if o is not None else Outcome("error") for o in outcomes]

    def _record(self, s: Session, path: Path, raw: jobs.IngestResult) -> Outcome:
        info = raw.info
        now = utcnow()
        sf = s.scalar(select(SourceFile).where(SourceFile.path == str(path)))
        old_frame = sf.frame if sf is not None else None
        frame = s.scalar(select(Frame).where(Frame.sha256 == raw.sha256))
        status = "duplicate"
        if frame is None:
            status = "ingested"
            state = {
                ImageType.LIGHT: "waiting",
                ImageType.UNKNOWN: "unclassified",
            }.get(info.imagetyp, "ingested")
            frame = Frame(
                sha256=raw.sha256,
                path=str(path),
                size=raw.size,
                mtime_ns=raw.mtime_ns,
                hdu_index=raw.hdu_index,
                imagetyp=info.imagetyp.value,
                type_source=info.type_source,
                exptime=info.exptime,
                filter=info.filter,
                object=info.object,
                date_obs=_as_utc_naive(info.date_obs),
                night=info.night,
                xbin=info.xbin,
                ybin=info.ybin,
                naxis1=info.naxis1,
                naxis2=info.naxis2,
                ccd_temp=info.ccd_temp,
                set_temp=info.set_temp,
                gain=info.gain,
                egain=info.egain,
                offset=info.offset,
                readout_mode=info.readout_mode,
                instrument=info.instrument,
                telescope=info.telescope,
                ra_deg=info.ra_deg,
                dec_deg=info.dec_deg,
                camera_key=camera_key(info),
                header=raw.header,
                header_warnings=list(info.warnings) or None,
                state=state,
                state_reason=info.type_source if state == "unclassified" else None,
                tries=0,
                created_at=now,
                updated_at=now,
            )
            s.add(frame)
            s.flush()
            log_event(s, frame, "ingested",
                      f"{info.imagetyp.value} exptime={info.exptime} filter={info.filter} "
                      f"from {path.name} ({info.type_source})")
        else:
            log_event(s, frame, "seen-again", f"same content as {path.name}")
        if sf is None:
            sf = SourceFile(path=str(path), first_seen=now)
            s.add(sf)
        sf.frame = frame
        sf.size, sf.mtime_ns, sf.inode, sf.last_seen = raw.size, raw.mtime_ns, raw.inode, now
        faults.point("ingest-commit", path)
        if old_frame is not None and old_frame is not frame:
            log_event(s, old_frame, "path-reused", f"{path.name} now holds other content")
            if old_frame.state == "quarantined" and old_frame.sha256 is None:
                s.flush()
                if not old_frame.files:  # a file caught mid-write, now complete: forget it
                    s.delete(old_frame)
        frame_id = frame.id
        logger.info("%s %s -> frame %d (%s)", status, path, frame_id, info.imagetyp.value)
        return Outcome(status, frame_id)

    def _quarantine(self, path: Path, st: os.stat_result, reason: str) -> Outcome:
        now = utcnow()
        with self.catalog.session() as s:
            sf = s.scalar(select(SourceFile).where(SourceFile.path == str(path)))
            if sf is not None and sf.frame is not None and sf.frame.state == "quarantined" and sf.frame.sha256 is None:
                frame = sf.frame
                frame.state_reason, frame.updated_at = reason, now
            else:
                frame = Frame(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, imagetyp="unknown",
                              state="quarantined", state_reason=reason, tries=0, created_at=now, updated_at=now)
                s.add(frame)
                if sf is None:
                    sf = SourceFile(path=str(path), first_seen=now)
                    s.add(sf)
                sf.frame = frame
            sf.size, sf.mtime_ns, sf.inode, sf.last_seen = st.st_size, st.st_mtime_ns, st.st_ino, now
            s.flush()
            log_event(s, frame, "quarantined", reason)
            frame_id = frame.id
        logger.warning("quarantined %r: %s", str(path), reason)
        return Outcome("quarantined", frame_id, reason)

    # ------------------------------------------------------------------ masters
    def _candidate_master_groups(self, s: Session) -> list[tuple[str, str]]:
        """(calib_key, night) of calibration frames not yet in any master."""
        fresh = s.scalars(
            select(Frame).where(Frame.imagetyp.in_(CALIBRATION_TYPES), Frame.state == "ingested")
        ).all()
        return sorted({(calib_key(f), f.night or "nonight") for f in fresh})

    def _frames_of(self, s: Session, key: str, night: str) -> list[Frame]:
        kind = key.split("|", 1)[0]
        frames = s.scalars(
            select(Frame).where(
                Frame.imagetyp == kind,
                Frame.night == (None if night == "nonight" else night),
                Frame.state.in_(("ingested", "used")),
            ).order_by(Frame.date_obs, Frame.id)
        ).all()
        return [f for f in frames if calib_key(f) == key]

    def build_due_masters(self, *, final: bool = False) -> list[int]:
        """Build (or rebuild as a new version) every master whose frames have settled.

        Bias first, then darks (built on the bias), then flats (on both): the masters of one
        rank are combined in parallel by the workers. Lights are calibrated once all are built.
        """
        built: list[int] = []
        order = {"bias": 0, "dark": 1, "flat": 2}
        with self.catalog.session() as s:
            groups = sorted(self._candidate_master_groups(s), key=lambda g: (order[g[0].split("|")[0]], g))
        for rank in range(3):
            plans = []
            for key, night in (g for g in groups if order[g[0].split("|")[0]] == rank):
                with self.catalog.session() as s:
                    frames = self._frames_of(s, key, night)
                    kind = key.split("|")[0]
                    if len(frames) < self.cfg.masters.min_frames[kind]:
                        continue
                    age = (utcnow() - max(f.created_at for f in frames)).total_seconds()
                    urgent = self._lights_waiting_for(s, kind, frames[0])
                    if not (final or urgent or age >= self.cfg.masters.settle_seconds):
                        continue
                plan = self._plan_master(key, night, final=final)
                if plan is not None:
                    plans.append(plan)
            if not plans:
                continue
            futures = self.workers.map(jobs.build_master, self._share_cores([p["spec"] for p in plans]),
                                       timeout=self.cfg.workers.job_timeout)
            for plan, fut in zip(plans, futures, strict=True):
                try:
                    result = fut.result()
                except DiskFull as exc:
                    self._pause(exc)
                    return built
                except Exception as exc:
                    logger.error("building master %s night %s failed: %s", plan["key"], plan["night"], exc)
                    self._record_failure([i for i, _ in plan["inputs"]], f"master build failed: {exc}")
                    continue
                faults.point("master-written", plan["spec"].out_path)
                built.append(self._commit_master(plan, result))
        if built:
            self.calibrate_pending(final=final, new_masters=built)
        return built

    def _run_on_workers(self, fn: Any, specs: list[Any]) -> list[Any]:
        """Run side jobs (the report's pictures) on the workers: each one's result, or the
        exception it raised, in order."""
        futures = self.workers.map(fn, specs, timeout=self.cfg.workers.job_timeout)
        return [f.exception() or f.result() for f in futures]

    def _share_cores(self, specs: list[Any]) -> list[Any]:
        """Fewer combinations than workers (one master of a rank, one group to stack): each gets
        the idle workers' share of cores as threads for its combination, never more cores in
        all than ``workers.processes``."""
        threads = max(1, self.cfg.workers.processes // max(1, len(specs)))
        return [dataclasses.replace(spec, threads=threads) for spec in specs] if threads > 1 else specs

    def _lights_waiting_for(self, s: Session, kind: str, sample: Frame) -> bool:
        stmt = select(func.count()).select_from(Frame).where(
            Frame.imagetyp == "light", Frame.state == "waiting", Frame.camera_key == sample.camera_key
        )
        if kind == "flat":
            stmt = stmt.where(func.lower(Frame.filter) == (sample.filter or "").lower())
        return bool(s.scalar(stmt))

    def _plan_master(self, key: str, night: str, *, final: bool = False) -> dict[str, Any] | None:
        """Everything a worker needs to combine one calibration key and night into a new
        master version (None when the current version already has exactly these inputs)."""
        kind = key.split("|", 1)[0]
        m = self.cfg.masters
        with self.catalog.session() as s:  # plan
            frames = self._frames_of(s, key, night)
            ids = sorted(f.id for f in frames)
            latest = s.scalar(
                select(Master).where(Master.calib_key == key, Master.night == night).order_by(Master.version.desc())
            )
            if latest is not None and sorted(i.frame_id for i in latest.inputs) == ids:
                for f in frames:
                    f.state = "used"
                return None
            sample = frames[0]
            dates = [f.date_obs for f in frames if f.date_obs is not None]
            mid = min(dates) + (max(dates) - min(dates)) / 2 if dates else None
            bias = dark = None
            if kind in ("dark", "flat"):
                bias = self._choose(s, "bias", sample, mid)[0]
                waited = (utcnow() - max(f.created_at for f in frames)).total_seconds()
                if bias is None and not final and waited < self.cfg.calibration.max_wait_hours * 3600:
                    logger.info("master %s night %s waits for a master bias", kind, night)
                    return None
            if kind == "flat":
                dark = self._select_dark(s, sample, mid, bias, exact_only=True)[0]
            version = (latest.version + 1) if latest else 1
            method = {"bias": m.bias_method, "dark": m.dark_method, "flat": m.flat_method}[kind]
            out = master_path(self.products, kind=kind, night=night, calib_key=key, instrument=sample.instrument,
                              exptime=sample.exptime, filter=sample.filter, version=version)
            dark_scale = calib.dark_scale(sample.exptime, dark.exptime) if dark is not None and dark.exptime else None
            inputs = tuple((f.id, f.sha256) for f in frames)
            header = product_header(
                None,
                IMAGETYP=f"Master {kind.capitalize()}", INSTRUME=sample.instrument, TELESCOP=sample.telescope,
                XBINNING=sample.xbin, YBINNING=sample.ybin, EXPTIME=sample.exptime if kind != "bias" else 0.0,
                FILTER=sample.filter if kind == "flat" else None, NIGHT=night,
                MASTERV=version, NCOMBINE=len(frames), COMBMETH=method,
                CLIPSIG=m.sigma if method == "sigma_clip" else None,
                BIASSUB=bias is not None, BIASID=bias.id if bias else None, BIASSHA=bias.sha256 if bias else None,
                DARKSUB=dark is not None, DARKID=dark.id if dark else None, DARKSHA=dark.sha256 if dark else None,
                DARKSCL=dark_scale,
                DATE_BEG=min(dates).isoformat() if dates else None, DATE_END=max(dates).isoformat() if dates else None,
                CALIBKEY=short_hash(key, 16),
            )
            spec = jobs.MasterSpec(
                kind=kind, frames=tuple((tuple(sf.path for sf in f.files) or (f.path,), f.sha256) for f in frames),
                bias_path=bias.path if bias else None, dark_path=dark.path if dark else None,
                dark_scale=dark_scale, method=method, sigma=m.sigma, memory_budget=self.memory_budget,
                hot_pixel_sigma=m.hot_pixel_sigma, out_path=str(out), header=header, inputs_table=inputs,
                workdir=str(self.workdir), max_data_bytes=self.max_data_bytes,
                allow_compressed=self.cfg.ingest.allow_compressed,
                preview_path=str(preview_path(out)) if self.cfg.report.previews else None,
                preview_title=f"master {kind} - night {night} - v{version} - {len(frames)} frames",
                min_free_bytes=self.min_free,
            )
            bias_id, dark_id = (bias.id if bias else None), (dark.id if dark else None)
            bias_sub, dark_sub = bias is not None, dark is not None
            camera, temp = sample.camera_key, temperature_ref(sample) if kind == "dark" else None
            exptime, filt = (sample.exptime if kind != "bias" else None), (sample.filter if kind == "flat" else None)
        return {"key": key, "night": night, "kind": kind, "spec": spec, "inputs": inputs, "out": out,
                "version": version, "method": method, "dark_scale": dark_scale, "dates": dates, "mid": mid,
                "bias_id": bias_id, "dark_id": dark_id, "bias_sub": bias_sub, "dark_sub": dark_sub,
                "camera": camera, "temp": temp, "exptime": exptime, "filter": filt}

    def _commit_master(self, plan: dict[str, Any], result: jobs.MasterResult) -> int:
        m = self.cfg.masters
        key, night, kind, inputs, out = plan["key"], plan["night"], plan["kind"], plan["inputs"], plan["out"]
        version, method, dark_scale, dates, mid = (plan["version"], plan["method"], plan["dark_scale"],
                                                   plan["dates"], plan["mid"])
        bias_id, dark_id, bias_sub, dark_sub = plan["bias_id"], plan["dark_id"], plan["bias_sub"], plan["dark_sub"]
        camera, temp, exptime, filt = plan["camera"], plan["temp"], plan["exptime"], plan["filter"]
        with self.catalog.session() as s:  # commit
            master = Master(
                kind=kind, calib_key=key, camera_key=camera, exptime=exptime, filter=filt, ccd_temp=temp,
                night=night, version=version, path=str(out), sha256=result.sha256,
                preview_path=result.preview_path, n_frames=len(inputs), method=method,
                params={"sigma": m.sigma, "memory_budget_mb": m.memory_budget_mb, "dark_scale": dark_scale,
                        "hot_pixel_sigma": m.hot_pixel_sigma},
                bias_subtracted=bias_sub, dark_subtracted=dark_sub, bias_id=bias_id, dark_id=dark_id,
                date_start=min(dates) if dates else None, date_end=max(dates) if dates else None,
                date_mid=mid, mean=result.mean, noise=result.noise, hot_pixels=result.hot_pixels,
                ccdwatch_version=__version__, created_at=utcnow(),
            )
            master.inputs = [MasterInput(frame_id=i, sha256=h) for i, h in inputs]
            s.add(master)
            s.flush()
            for f in s.scalars(select(Frame).where(Frame.id.in_([i for i, _ in inputs]))):
                f.state, f.updated_at = "used", utcnow()
                log_event(s, f, "used", f"in master {kind} #{master.id} v{version}")
            master_id = master.id
        logger.info("built master %s #%d (night %s, v%d, %d frames)", kind, master_id, night, version, len(inputs))
        return master_id

    # ------------------------------------------------------------------ choosing masters
    def _current_masters(self, s: Session, kind: str, cam: str) -> list[Master]:
        cache = s.info.get(_MASTERS_CACHE)  # set while a batch of lights is planned
        if cache is not None:
            if (kind, cam) not in cache:
                cache[(kind, cam)] = self._query_current_masters(s, kind, cam)
            return cache[(kind, cam)]
        return self._query_current_masters(s, kind, cam)

    @staticmethod
    def _query_current_masters(s: Session, kind: str, cam: str) -> list[Master]:
        newest = (
            select(Master.calib_key, Master.night, func.max(Master.version).label("v"))
            .where(Master.kind == kind, Master.camera_key == cam)
            .group_by(Master.calib_key, Master.night)
            .subquery()
        )
        return list(s.scalars(
            select(Master).join(newest, and_(Master.calib_key == newest.c.calib_key,
                                             Master.night == newest.c.night,
                                             Master.version == newest.c.v))
        ))

    @staticmethod
    def _nearest(masters: Iterable[Master], when: datetime | None, max_age_days: float) -> Master | None:
        """The master nearest in time among those within the maximum age (newest id on ties).

        A frame or master without a date cannot be judged by age and is accepted.
        """
        best, best_rank = None, None
        for m in masters:
            dt = timedelta(0) if when is None or m.date_mid is None else abs(m.date_mid - when)
            if dt > timedelta(days=max_age_days):
                continue
            rank = (dt, -m.id)
            if best_rank is None or rank < best_rank:
                best, best_rank = m, rank
        return best

    def _choose(self, s: Session, kind: str, frame: Frame, when: datetime | None) -> tuple[Master | None, str]:
        m = self.cfg.masters
        max_age = {"bias": m.bias_max_age_days, "dark": m.dark_max_age_days, "flat": m.flat_max_age_days}[kind]
        cands = self._current_masters(s, kind, frame.camera_key)
        if kind == "flat":
            cands = [c for c in cands if (c.filter or "").lower() == (frame.filter or "").lower()]
            if not cands:
                return None, f"no master flat for filter {frame.filter!r} with this camera set-up"
        if not cands:
            return None, f"no master {kind} for camera set-up {frame.camera_key}"
        best = self._nearest(cands, when, max_age)
        if best is None:
            return None, f"no master {kind} within {max_age:g} days of the frame"
        return best, ""

    def _temp_ok(self, master: Master, frame: Frame) -> bool:
        t = temperature_ref(frame)
        return t is None or master.ccd_temp is None or abs(master.ccd_temp - t) <= self.cfg.masters.temperature_tolerance

    def _select_dark(self, s: Session, frame: Frame, when: datetime | None, bias: Master | None,
                     *, exact_only: bool = False) -> tuple[Master | None, float | None, str]:
        max_age = self.cfg.masters.dark_max_age_days
        darks = [d for d in self._current_masters(s, "dark", frame.camera_key) if self._temp_ok(d, frame)]
        if not darks:
            return None, None, (f"no master dark for camera set-up {frame.camera_key} within "
                                f"{self.cfg.masters.temperature_tolerance:g} degC")
        t = frame.exptime or 0.0
        same = [d for d in darks if d.exptime is not None and abs(d.exptime - t) < EXPTIME_TOLERANCE]
        best = self._nearest(same, when, max_age)
        if best is not None:
            if not best.bias_subtracted or bias is not None:
                return best, 1.0, ""
            # A bias-subtracted dark of the same exposure still needs the bias.
            return None, None, "the master dark is bias-subtracted but no master bias is available"
        if exact_only:
            return None, None, f"no master dark of {t:g} s"
        scalable = [d for d in darks if d.bias_subtracted and d.exptime]
        if not scalable:
            return None, None, (f"no master dark of {t:g} s, and none that can be scaled "
                                "(scaling needs a bias-subtracted master dark)")
        if bias is None:
            return None, None, f"no master dark of {t:g} s; scaling another needs a master bias"
        in_time = [d for d in scalable if self._nearest([d], when, max_age) is not None]
        if not in_time:
            return None, None, f"no scalable master dark within {max_age:g} days"
        best = min(in_time, key=lambda d: (abs(d.exptime - t), abs((d.date_mid or when or datetime.min) - (when or datetime.min)), -d.id))
        return best, calib.dark_scale(t, best.exptime), ""

    def select_masters(self, s: Session, frame: Frame) -> Selection:
        """Choose bias, dark (with its scale) and flat for a light; explain what is missing."""
        sel = Selection()
        when = frame.date_obs
        sel.bias, why = self._choose(s, "bias", frame, when)
        if sel.bias is None:
            sel.missing["bias"] = why
        sel.dark, sel.dark_scale, why = self._select_dark(s, frame, when, sel.bias)
        if sel.dark is None:
            sel.missing["dark"] = why
        elif not sel.dark.bias_subtracted:
            # A raw (bias-including) dark of the same exposure removes the bias itself.
            sel.notes.append("the master dark includes the bias, so no separate bias is subtracted")
            sel.bias = None
            sel.missing.pop("bias", None)
        sel.flat, why = self._choose(s, "flat", frame, when)
        if sel.flat is None:
            sel.missing["flat"] = why
        return sel

    # ------------------------------------------------------------------ calibration
    def calibrate_pending(self, *, final: bool = False, new_masters: Sequence[int] = ()) -> int:
        """Calibrate waiting lights whose masters now exist.

        With ``new_masters``, also revisit the calibrated lights those masters could serve (same
        camera set-up, within its maximum age) and recalibrate those for which it is now the
        better choice. Only the waiting set is scanned otherwise, so a tick costs the same
        whether the catalogue holds a hundred frames or a hundred thousand.
        """
        with self.catalog.session() as s:
            stmt = select(Frame.id).where(Frame.imagetyp == "light", Frame.state == "waiting")
            ids = list(s.scalars(stmt.order_by(Frame.date_obs, Frame.id)))
            for master in (s.get(Master, mid) for mid in new_masters):
                if master is None or not self.cfg.calibration.recalibrate_on_better_master:
                    continue
                m = self.cfg.masters
                age = {"bias": m.bias_max_age_days, "dark": m.dark_max_age_days, "flat": m.flat_max_age_days}[master.kind]
                stmt = select(Frame.id).where(Frame.imagetyp == "light", Frame.camera_key == master.camera_key,
                                              Frame.state.in_(("calibrated", "stacked", "rejected")))
                if master.date_mid is not None:
                    span = timedelta(days=age)
                    stmt = stmt.where(or_(Frame.date_obs.is_(None),
                                          Frame.date_obs.between(master.date_mid - span, master.date_mid + span)))
                ids += [i for i in s.scalars(stmt.order_by(Frame.date_obs, Frame.id)) if i not in ids]
        return self.calibrate_many(ids, final=final)

    def _timed_out(self, frame: Frame) -> bool:
        age = utcnow() - frame.created_at
        return age.total_seconds() >= self.cfg.calibration.max_wait_hours * 3600

    def calibrate(self, frame_id: int, *, final: bool = False) -> bool:
        """Calibrate one light if its masters exist (or policy allows partial). True if a product was written."""
        return self.calibrate_many([frame_id], final=final) == 1

    def calibrate_many(self, frame_ids: Sequence[int], *, final: bool = False) -> int:
        """Plan every light (catalogue), calibrate them in the worker pool in parallel, commit each."""
        plans = []
        with self.catalog.session() as s:
            # the current masters of a camera are the same for every light of the batch: query
            # them once (a catch-up of 5,000 lights before any master spent most of its time here)
            s.info[_MASTERS_CACHE] = {}
            try:
                for fid in frame_ids:
                    plan = self._plan_calibration(s, fid, final=final)
                    if plan is not None:
                        plans.append(plan)
            finally:
                del s.info[_MASTERS_CACHE]
        if not plans:
            return 0
        futures = self.workers.map(jobs.calibrate_light, [p[0] for p in plans], timeout=self.cfg.workers.job_timeout)
        written = 0
        for (spec, sel_ids, partial, missing, version, explain), fut in zip(plans, futures, strict=True):
            try:
                result = fut.result()
            except DiskFull as exc:
                self._pause(exc)
                with self.catalog.session() as s:  # the frame keeps its state, with the error
                    frame = s.get(Frame, spec.frame_id)
                    frame.last_error, frame.updated_at = f"calibration paused: disk full ({exc})", utcnow()
                continue
            except Exception as exc:
                self._record_failure([spec.frame_id], f"calibration: {type(exc).__name__}: {exc}")
                continue
            faults.point("calibrated-written", spec.out_path)
            self._commit_calibration(spec, result, sel_ids, partial, missing, version, explain)
            written += 1
        return written

    def _plan_calibration(self, s: Session, frame_id: int, *, final: bool):
        frame = s.get(Frame, frame_id)
        if frame is None or frame.imagetyp != "light" or frame.state in ("quarantined", "failed"):
            return None
        sel = self.select_masters(s, frame)
        current = s.scalar(select(Calibrated).where(Calibrated.frame_id == frame.id, Calibrated.current))
        if current is not None and (current.bias_id, current.dark_id, current.flat_id) == sel.ids:
            return None
        partial = False
        if sel.missing:
            allow = self.cfg.calibration.on_timeout == "partial" and (final or self._timed_out(frame))
            if current is not None or not allow:
                reason = "waiting for " + "; ".join(f"{k}: {v}" for k, v in sel.missing.items())
                if current is None and frame.state_reason != reason:
                    frame.state, frame.state_reason, frame.updated_at = "waiting", reason, utcnow()
                    log_event(s, frame, "waiting", reason)
                return None
            partial = True
        if current is not None and not self.cfg.calibration.recalibrate_on_better_master:
            return None
        version = (s.scalar(select(func.max(Calibrated.version)).where(Calibrated.frame_id == frame.id)) or 0) + 1
        out = calibrated_path(self.products, night=frame.night, target=frame.object, filter=frame.filter,
                              frame_id=frame.id, stem=Path(frame.path).stem, version=version)
        missing = "; ".join(f"{k}: {v}" for k, v in sel.missing.items()) or None
        header = product_header(
            frame.header, BUNIT="adu", RAWID=frame.id, RAWSHA=frame.sha256,
            BIASID=sel.bias.id if sel.bias else None, BIASSHA=sel.bias.sha256 if sel.bias else None,
            DARKID=sel.dark.id if sel.dark else None, DARKSHA=sel.dark.sha256 if sel.dark else None,
            DARKSCL=sel.dark_scale if sel.dark else None,
            FLATID=sel.flat.id if sel.flat else None, FLATSHA=sel.flat.sha256 if sel.flat else None,
            PARTIAL=partial, CALVER=version,
        )
        spec = jobs.CalibrateSpec(
            frame_id=frame.id, raw_paths=tuple(f.path for f in frame.files) or (frame.path,), raw_sha256=frame.sha256,
            bias_path=sel.bias.path if sel.bias else None, dark_path=sel.dark.path if sel.dark else None,
            dark_scale=sel.dark_scale or 1.0, flat_path=sel.flat.path if sel.flat else None, out_path=str(out),
            header=header, saturation=self._saturation(frame), detect_sigma=self.cfg.stack.detect_sigma,
            max_data_bytes=self.max_data_bytes, allow_compressed=self.cfg.ingest.allow_compressed,
            preview_path=str(preview_path(out)) if self.cfg.report.light_previews else None,
            min_free_bytes=self.min_free,
        )
        sel_ids = (*sel.ids, sel.dark_scale if sel.dark else None)
        return spec, sel_ids, partial, missing, version, sel.explain()

    def _commit_calibration(self, spec: jobs.CalibrateSpec, result: jobs.CalibrateResult, sel_ids: tuple,
                            partial: bool, missing: str | None, version: int, explain: str) -> None:
        bias_id, dark_id, flat_id, dark_scale = sel_ids
        quality = result.quality
        with self.catalog.session() as s:
            frame = s.get(Frame, spec.frame_id)
            current = s.scalar(select(Calibrated).where(Calibrated.frame_id == frame.id, Calibrated.current))
            now = utcnow()
            if current is not None:
                current.current = False
            s.add(Calibrated(
                frame_id=frame.id, version=version, current=True, path=spec.out_path, sha256=result.sha256,
                bias_id=bias_id, dark_id=dark_id, flat_id=flat_id, dark_scale=dark_scale, partial=partial,
                missing=missing, ccdwatch_version=__version__, created_at=now,
            ))
            frame.state = "calibrated"
            frame.state_reason = ("PARTIAL: " + missing) if partial else None
            frame.n_stars, frame.fwhm, frame.elongation = quality.n_stars, _finite(quality.fwhm), _finite(quality.elongation)
            frame.sky, frame.sky_noise = _finite(quality.sky), _finite(quality.sky_noise)
            frame.saturated_fraction = result.saturated_fraction
            frame.updated_at = now
            verb = "recalibrated" if current is not None else "calibrated"
            log_event(s, frame, verb, explain + (f" (v{version}, supersedes v{current.version})" if current else f" (v{version})"))
        logger.info("%s frame %d: %s", verb, spec.frame_id, explain)

    def _saturation(self, frame: Frame) -> float | None:
        """Configured or header saturation level; None lets the worker find the pile-up ceiling."""
        header = frame.header or {}
        for key in ("SATURATE", "SATLEVEL"):
            v = header.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                return float(v)
        return self.cfg.stack.saturation or None

    # ------------------------------------------------------------------ failures
    def _record_failure(self, frame_ids: Sequence[int], message: str) -> None:
        with self.catalog.session() as s:
            for fid in frame_ids:
                f = s.get(Frame, fid)
                if f is None:
                    continue
                f.tries += 1
                f.last_error = message
                if f.tries >= self.cfg.ingest.max_tries:
                    f.state, f.state_reason = "failed", message
                log_event(s, f, "error", message)

    # ------------------------------------------------------------------ stacking
    def assign_groups(self, s: Session, night: str | None) -> dict[int, str]:
        """Give every light of a night its stack group: night, target, filter, exposure, camera."""
        lights = s.scalars(
            select(Frame).where(Frame.imagetyp == "light", Frame.night == night,
                                Frame.state.notin_(("quarantined", "failed")))
            .order_by(Frame.date_obs, Frame.id)
        ).all()
        targets = assign_targets(
            [(f.id, f.object, f.ra_deg, f.dec_deg, f.date_obs, f.filter, f.exptime, f.camera_key) for f in lights],
            radius_arcmin=self.cfg.stack.pointing_radius_arcmin,
            gap_minutes=self.cfg.stack.sequence_gap_minutes,
        )
        groups = {}
        for f in lights:
            target = targets[f.id].replace("|", "/")
            key = f"{night}|{target}|{f.filter or '-'}|{f.exptime or 0:g}s|{f.camera_key}"
            if f.group_key != key:
                f.group_key = key
            groups[f.id] = key
        return groups

    def stack_due_groups(self, *, final: bool = False) -> list[int]:
        """Stack every group that is complete (quiet for long enough, or ``final``)."""
        with self.catalog.session() as s:
            nights = sorted(set(s.scalars(
                select(Frame.night).where(Frame.imagetyp == "light", Frame.state == "calibrated"))), key=str)
            due: list[str] = []
            quiet = timedelta(minutes=self.cfg.stack.quiet_minutes)
            for night in nights:
                groups = self.assign_groups(s, night)
                members: dict[str, list[Frame]] = {}
                for f in s.scalars(select(Frame).where(Frame.id.in_(groups))):
                    members.setdefault(groups[f.id], []).append(f)
                for key, frames in members.items():
                    if not any(f.state == "calibrated" for f in frames):
                        continue
                    waiting = [f for f in frames if f.state == "waiting" and not self._timed_out(f)]
                    newest = max(f.created_at for f in frames)
                    if final or (not waiting and utcnow() - newest >= quiet):
                        due.append(key)
        built = self.stack_groups(due)
        nights = {key.split("|", 1)[0] for key in due}
        if built:
            from ccdwatch import report

            for night in sorted(nights):
                report.refresh(self.cfg, self.catalog, night, run=self._run_on_workers)  # never raises
        return built

    def stack_group(self, group_key: str) -> int | None:
        """Reject outliers, align to the best frame and combine one group into a new stack version."""
        built = self.stack_groups([group_key])
        return built[0] if built else None

    def stack_groups(self, group_keys: Sequence[str]) -> list[int]:
        """Stack several groups: planned in the catalogue, combined in parallel by the workers."""
        plans = [p for p in (self._plan_stack(key) for key in group_keys) if p is not None]
        if not plans:
            return []
        futures = self.workers.map(jobs.stack_group, self._share_cores([p["spec"] for p in plans]),
                                   timeout=self.cfg.workers.job_timeout)
        built = []
        for plan, fut in zip(plans, futures, strict=True):
            try:
                result = fut.result()
            except DiskFull as exc:
                self._pause(exc)
                continue
            except Exception:
                logger.exception("stacking group %s failed", plan["group_key"])
                continue
            faults.point("stack-written", plan["spec"].out_path)
            built.append(self._commit_stack(plan, result))
        return built

    def _plan_stack(self, group_key: str) -> dict[str, Any] | None:
        st = self.cfg.stack
        with self.catalog.session() as s:
            frames = s.scalars(select(Frame).where(Frame.group_key == group_key,
                                                   Frame.state.in_(("calibrated", "stacked", "rejected")))
                               .order_by(Frame.date_obs, Frame.id)).all()
            products = {f.id: s.scalar(select(Calibrated).where(Calibrated.frame_id == f.id, Calibrated.current))
                        for f in frames}
            frames = [f for f in frames if products[f.id] is not None]
            if len(frames) < st.min_frames:
                for f in frames:
                    if f.state == "calibrated":
                        f.state_reason = f"group has {len(frames)} frame(s), fewer than stack.min_frames={st.min_frames}"
                return None
            latest = s.scalar(select(Stack).where(Stack.group_key == group_key).order_by(Stack.version.desc()))
            signature = sorted((f.id, products[f.id].sha256) for f in frames)
            if latest is not None and sorted((m.frame_id, m.sha256) for m in latest.members) == signature:
                for f in frames:
                    if f.state == "calibrated":
                        f.state = "stacked"
                return None
            quality = {f.id: qa.FrameQuality(
                n_stars=f.n_stars or 0, fwhm=_nan(f.fwhm), elongation=_nan(f.elongation), sky=_nan(f.sky),
                sky_noise=_nan(f.sky_noise), saturated_fraction=f.saturated_fraction or 0.0) for f in frames}
            rejected = qa.reject_outliers(quality, fwhm_mad=st.fwhm_mad, sky_mad=st.sky_mad,
                                          stars_fraction=st.stars_fraction, min_stars=st.min_stars,
                                          elongation_max=st.elongation_max)
            usable = [f.id for f in frames if f.id not in rejected]
            if not usable:
                return None
            reference = qa.choose_reference(quality, exclude=rejected)
            ref_frame = next(f for f in frames if f.id == reference)
            version = (latest.version + 1) if latest else 1
            target = group_key.split("|")[1]
            night = ref_frame.night or "nonight"
            out = stack_path(self.products, night=night, target=target, filter=ref_frame.filter,
                             exptime=ref_frame.exptime, group_key=group_key, version=version)
            header = product_header(
                None, IMAGETYP="Stack", OBJECT=target, FILTER=ref_frame.filter, EXPTIME=ref_frame.exptime,
                INSTRUME=ref_frame.instrument, TELESCOP=ref_frame.telescope, NIGHT=night,
                COMBMETH=st.method, CLIPSIG=st.sigma if st.method == "sigma_clip" else None,
                STACKV=version, BUNIT="adu",
            )
            spec = jobs.StackSpec(
                products={fid: products[fid].path for fid in usable}, reference=reference, method=st.method,
                sigma=st.sigma, memory_budget=self.memory_budget, workdir=str(self.workdir), out_path=str(out),
                header=header,
                members=tuple((f.id, products[f.id].sha256, f.exptime or 0.0) for f in frames),
                rejected=tuple(rejected.items()),
                preview_path=str(preview_path(out)) if self.cfg.report.previews else None,
                preview_title=(f"{target} {ref_frame.filter or ''} - {len(usable)} x {ref_frame.exptime or 0:g} s"
                               f" - night {night}"),
                min_free_bytes=self.min_free,
            )
            member_info = {f.id: (products[f.id].id, products[f.id].sha256, f.exptime or 0.0) for f in frames}
            meta = dict(night=night, target=target, filter=ref_frame.filter, exptime=ref_frame.exptime,
                        camera_key=ref_frame.camera_key)
            latest_id = latest.id if latest is not None else None
        return {"group_key": group_key, "spec": spec, "rejected": rejected, "member_info": member_info,
                "meta": meta, "latest_id": latest_id, "version": version, "out": out}

    def _commit_stack(self, plan: dict[str, Any], result: jobs.StackJobResult) -> int:
        st = self.cfg.stack
        group_key, rejected, member_info = plan["group_key"], dict(plan["rejected"]), plan["member_info"]
        meta, latest_id, version, out = plan["meta"], plan["latest_id"], plan["version"], plan["out"]
        rejected.update({fid: f"alignment failed: {why}" for fid, why in result.failed.items()})
        used = [fid for fid in member_info if fid not in rejected]
        total = float(sum(member_info[fid][2] for fid in used))
        with self.catalog.session() as s:
            if latest_id is not None:
                s.get(Stack, latest_id).current = False
            row = Stack(group_key=group_key, version=version, current=True, path=str(out), sha256=result.sha256,
                        preview_path=result.preview_path, n_used=len(used), n_rejected=len(rejected),
                        total_exposure=total, reference_frame_id=result.reference, method=st.method,
                        params={"sigma": st.sigma, "fwhm_mad": st.fwhm_mad, "sky_mad": st.sky_mad,
                                "min_stars": st.min_stars, "stars_fraction": st.stars_fraction,
                                "elongation_max": st.elongation_max},
                        ccdwatch_version=__version__, created_at=utcnow(), **meta)
            for fid, (cal_id, sha, _) in member_info.items():
                row.members.append(StackMember(frame_id=fid, calibrated_id=cal_id, sha256=sha,
                                               used=fid not in rejected, reason=rejected.get(fid),
                                               transform=result.transforms.get(fid)))
            s.add(row)
            s.flush()
            for f in s.scalars(select(Frame).where(Frame.id.in_(list(member_info)))):
                if f.id in rejected:
                    f.state, f.state_reason = "rejected", rejected[f.id]
                    log_event(s, f, "rejected", rejected[f.id])
                else:
                    f.state, f.state_reason = "stacked", None
                    log_event(s, f, "stacked", f"in stack #{row.id} v{version} of {meta['target']}")
                f.updated_at = utcnow()
            sid = row.id
        logger.info("stacked %s: %d used, %d rejected -> %s", group_key, len(used), len(rejected), out)
        return sid

    # ------------------------------------------------------------------ periodic
    def tick(self, *, final: bool = False) -> None:
        if not self.maybe_resume():
            return
        self.build_due_masters(final=final)
        if self.paused is None:
            self.calibrate_pending(final=final)
        if self.paused is None:
            self.stack_due_groups(final=final)

    def finish(self) -> None:
        """End of ``watch --once``: build, calibrate and stack everything as if the night were over."""
        self.tick(final=True)


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _sep_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r1 - r2)
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def assign_targets(
    lights: Sequence[tuple[int, str | None, float | None, float | None, datetime | None, str | None, float | None, str | None]],
    *,
    radius_arcmin: float,
    gap_minutes: float,
) -> dict[int, str]:
    """Target name per light: OBJECT; else a pointing cluster; else a time sequence.

    ``lights`` are (id, object, ra, dec, date_obs, filter, exptime, camera_key) sorted by time.
    Lights with neither OBJECT nor pointing form one target per run of the same filter, exposure
    and camera with no gap longer than ``gap_minutes`` (so V, R, V, R... gives one target each).
    """
    targets: dict[int, str] = {}
    centres: list[tuple[float, float, str]] = []
    runs: dict[tuple, tuple[datetime | None, str]] = {}
    gap = timedelta(minutes=gap_minutes)
    for fid, obj, ra, dec, when, filt, exp, cam in lights:
        if obj:
            targets[fid] = obj
            continue
        if ra is not None and dec is not None:
            for cra, cdec, name in centres:
                if _sep_deg(ra, dec, cra, cdec) * 60 <= radius_arcmin:
                    targets[fid] = name
                    break
            else:
                name = f"RA{ra:07.3f}{dec:+07.3f}"
                centres.append((ra, dec, name))
                targets[fid] = name
            continue
        run_key = (filt, exp, cam)
        prev = runs.get(run_key)
        if prev is not None and (when is None or prev[0] is None or when - prev[0] <= gap):
            name = prev[1]
        else:
            name = f"field-{when:%H%M}" if when is not None else f"field-{fid}"
        runs[run_key] = (when, name)
        targets[fid] = name
    return targets
