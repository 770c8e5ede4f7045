"""Masters: calibration frames that have settled -> a new master version per key and night.

Bias first, then darks (built on the bias), then flats (on both); the caller orders the ranks.
A master is immutable: more frames of the same key and night make a new version.

Only this site's frames are planned (several daemons may share the catalogue), and a plan first
claims its (site, key, night): a second planner of the same site skips it until the first has
committed (or its claim has expired), so no master version is built twice.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from ccdwatch import __version__
from ccdwatch.catalog import log_event, utcnow
from ccdwatch.catalog.queries import (
    calibration_frames,
    current_masters,
    frames_by_id,
    fresh_calibration_frames,
    latest_master,
    lights_waiting_for,
    masters_of_key,
    masters_with_inputs,
)
from ccdwatch.catalog.sites import claim, holder, release
from ccdwatch.detector import DetectorValues, detector_values, gain_check
from ccdwatch.headers.sections import OverscanPlan
from ccdwatch.jobs import memory, specs
from ccdwatch.keys import CalibKey, calib_keys, temperature_ref
from ccdwatch.models import Frame, FrameState, Master, MasterInput
from ccdwatch.pipeline.calibrate import saturation
from ccdwatch.pipeline.context import Context
from ccdwatch.pipeline.lifecycle import content_hash, mark_missing, raw_name, raw_paths, raw_present
from ccdwatch.pipeline.selection import EXPTIME_TOLERANCE, Masters, dark_factor
from ccdwatch.products import master_cards, master_path, preview_path, product_header, short_hash

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MasterPlan:
    """Everything needed to combine one calibration key and night, and to record the result."""

    key: CalibKey
    night: str
    spec: specs.MasterSpec
    inputs: tuple[tuple[int, str], ...]
    out: Path
    version: int
    method: str
    dark_scale: float | None
    dates: tuple[datetime, ...]
    mid: datetime | None
    bias_id: int | None
    dark_id: int | None
    camera: str | None
    temp: float | None
    exptime: float | None
    filter: str | None
    instrument: str | None = None
    detector: DetectorValues | None = None
    """A flat's: the gain its lights would use, checked against the one measured from its inputs."""

    @property
    def kind(self) -> str:
        return self.key.kind

    @property
    def subject(self) -> str:
        return f"building master {self.kind} for night {self.night} ({self.key})"

    @property
    def charged(self) -> tuple[int, ...]:
        return tuple(i for i, _ in self.inputs)


def claim_name(site: str, key: CalibKey, night: str) -> str:
    """What a planner claims while it builds the master of one site, key and night."""
    return f"master|{site}|{night}|{key}"


def candidates(ctx: Context) -> list[tuple[CalibKey, str]]:
    """(key, night) of this site's calibration frames not yet in any master, in build order (a
    dark's key depends on the other darks of its night: `ccdwatch.keys.calib_keys`)."""
    with ctx.catalog.session() as s:
        fresh = fresh_calibration_frames(s, site=ctx.site)
        nights = sorted({f.night for f in fresh if f.imagetyp == "dark"}, key=str)
        frames = [f for f in fresh if f.imagetyp != "dark"] + [
            f for night in nights for f in calibration_frames(s, "dark", night, site=ctx.site)]
        keys = calib_keys(frames, ctx.cfg.masters.temperature_tolerance)
        return sorted({(k, f.night or "nonight") for f, k in zip(frames, keys, strict=True)
                       if f.state == FrameState.INGESTED})


def build_ranks(ctx: Context, groups: list[tuple[CalibKey, str]]) -> list[list[tuple[CalibKey, str]]]:
    """``groups`` (candidates) in the order their masters can be built: biases, then darks (on the
    bias), then flats (on both); a flat that no dark of ``groups`` could serve (none of its
    camera set-up at one of its exposures: a flat uses only a dark of its own exposure, see
    `plan_master`) goes with the darks, so that the two combine side by side rather than one
    after the other (the usual night: darks of the lights' exposure, flats of a few seconds)."""
    ranks: list[list[tuple[CalibKey, str]]] = [[] for _ in range(3)]
    for key, night in groups:
        ranks[key.rank].append((key, night))
    if not ranks[2]:
        return ranks
    with ctx.catalog.session() as s:
        tolerance = ctx.cfg.masters.temperature_tolerance
        darks = [(f.camera_key, f.exptime or 0.0)
                 for key, night in ranks[1] for f in frames_of(s, key, night, site=ctx.site, tolerance=tolerance)]
        early = []
        for key, night in ranks[2]:
            frames = frames_of(s, key, night, site=ctx.site, tolerance=tolerance)
            if not any(camera == f.camera_key and abs(exptime - (f.exptime or 0.0)) < EXPTIME_TOLERANCE
                       for f in frames for camera, exptime in darks):
                early.append((key, night))
    ranks[1] += early
    ranks[2] = [g for g in ranks[2] if g not in early]
    return ranks


def frames_of(s: Session, key: CalibKey, night: str, *, site: str | None, tolerance: float) -> list[Frame]:
    """The frames of one key, night and site that a master of them would combine: those whose raw
    file is still on disk (a vanished one is marked ``missing``, never charged to the others).
    ``tolerance``: ``masters.temperature_tolerance`` (see `ccdwatch.keys.temperature_ref`)."""
    night_frames = calibration_frames(s, key.kind, None if night == "nonight" else night, site=site)
    frames = [f for f, k in zip(night_frames, calib_keys(night_frames, tolerance), strict=True) if k == key]
    # Time, then content: the order the inputs are combined in (and listed in the INPUTS
    # table) must not depend on the order they were catalogued in.
    frames.sort(key=lambda f: (f.date_obs is None, f.date_obs or datetime.min, f.sha256 or ""))
    present = []
    for f in frames:
        if raw_present(f):
            present.append(f)
        else:
            mark_missing(s, f, f"raw file gone before master {key.kind} of night {night} was built")
    return present


def plan_due(ctx: Context, groups: list[tuple[CalibKey, str]], *, final: bool = False) -> list[MasterPlan]:
    """Plans for the groups with enough frames that have settled (or that lights wait for)."""
    m = ctx.cfg.masters
    plans = []
    for key, night in groups:
        with ctx.catalog.session() as s:
            frames = frames_of(s, key, night, site=ctx.site, tolerance=m.temperature_tolerance)
            if too_few(ctx, key, frames):
                continue
            age = (utcnow() - max(f.created_at for f in frames)).total_seconds()
            sample = frames[0]
            flat_filter = (sample.filter or "").lower() if key.kind == "flat" else None
            urgent = lights_waiting_for(s, sample.camera_key, flat_filter, site=ctx.site)
            if not (final or urgent or age >= m.settle_seconds):
                continue
        plan = plan_master(ctx, key, night, final=final)
        if plan is not None:
            plans.append(plan)
    return plans


def too_few(ctx: Context, key: CalibKey, frames: list[Frame]) -> bool:
    """Fewer frames than ``masters.min_frames`` of their kind: not enough for a master, whoever
    plans it (the daemon's ticks, `watch --once`, `reprocess`)."""
    return len(frames) < ctx.cfg.masters.min_frames[key.kind]


def plan_master(ctx: Context, key: CalibKey, night: str, *, final: bool = False,
                redo_before: datetime | None = None) -> MasterPlan | None:
    """Everything a worker needs to combine one calibration key and night into a new master
    version (None when the current version already has exactly these inputs - and, with
    ``redo_before``, was made after that time - or another planner has claimed the work)."""
    kind = key.kind
    m = ctx.cfg.masters
    with ctx.catalog.session() as s:
        frames = frames_of(s, key, night, site=ctx.site, tolerance=m.temperature_tolerance)
        if not frames:
            return None
        if too_few(ctx, key, frames):  # `reprocess` plans every key: a stray frame is no master
            logger.info("master %s of night %s not built: %d frame(s), masters.min_frames = %d", kind, night,
                        len(frames), m.min_frames[kind])
            return None
        ids = sorted(f.id for f in frames)
        sample = frames[0]
        dates = tuple(f.date_obs for f in frames if f.date_obs is not None)
        mid = min(dates) + (max(dates) - min(dates)) / 2 if dates else None
        choose = Masters(s, m, sites=ctx.master_sites)
        bias, dark = calibrators(choose, kind, sample, mid)
        latest = latest_master(s, str(key), night, site=ctx.site)
        if latest is not None and latest.retired is None and sorted(i.frame_id for i in latest.inputs) == ids and (
                redo_before is None or latest.created_at >= redo_before) and not (
                made_without_bias(latest) and (bias is not None or dark is not None)):
            for f in frames:
                f.state = FrameState.USED
            return None
        what = claim_name(ctx.site, key, night)
        if not claim(s, what, owner=ctx.owner, site=ctx.site, ttl=ctx.claim_ttl):
            logger.info("master %s of night %s is being built by %s", kind, night, holder(s, what))
            return None
        if kind != "bias" and bias is None and dark is None:
            awaited = awaits(choose, kind, sample)
            waited = (utcnow() - max(f.created_at for f in frames)).total_seconds()
            if awaited and not final and waited < ctx.cfg.calibration.max_wait_hours * 3600:
                logger.debug("master %s night %s waits for %s", kind, night, awaited)
                release(s, what, owner=ctx.owner)
                return None
        version = (latest.version + 1) if latest else 1
        method = {"bias": m.bias_method, "dark": m.dark_method, "flat": m.flat_method}[kind]
        out = master_path(ctx.products, kind=kind, night=night, calib_key=str(key), instrument=sample.instrument,
                          exptime=sample.exptime, filter=sample.filter, version=version)
        dark_scale = (dark_factor(sample.exptime or 0.0, dark.exptime)
                      if dark is not None and dark.exptime else None)
        inputs = tuple((f.id, content_hash(f)) for f in frames)
        spec = specs.MasterSpec(
            kind=kind, frames=tuple((raw_paths(f), content_hash(f)) for f in frames),
            bias_path=bias.path if bias else None, dark_path=dark.path if dark else None,
            dark_scale=dark_scale, method=method, sigma=m.sigma, memory_budget=ctx.memory_budget,
            hot_pixel_sigma=m.hot_pixel_sigma, out_path=str(out),
            header=_header(kind, sample, night, version, len(frames), method, m.sigma, bias, dark, dark_scale,
                           dates, key),
            inputs_table=tuple((raw_name(f), content_hash(f)) for f in frames), workdir=str(ctx.workdir),
            max_data_bytes=ctx.max_data_bytes,
            allow_compressed=ctx.cfg.ingest.allow_compressed,
            preview_path=str(preview_path(out)) if ctx.cfg.report.previews else None,
            preview_title=f"master {kind} - night {night} - v{version} - {len(frames)} frames",
            min_free_bytes=ctx.min_free, bayer_pattern=sample.bayer_pattern,
            shape=memory.raw_shape(sample.naxis1, sample.naxis2, (sample.header or {}).get("BITPIX")),
            overscan=OverscanPlan.from_json(sample.overscan),
            compression=ctx.compression, measure_gain=ctx.cfg.detector.gain_from_flats != "off",
            saturation=saturation(ctx, sample) if kind == "flat" else None,
            flat_limits=specs.FlatLimits(m.flat_max_level, m.flat_max_saturated, m.flat_min_signal)
            if kind == "flat" else None,
            min_frames=m.min_frames[kind], flat_floor=m.flat_min_response if kind == "flat" else 0.0,
            checksums={c.path: c.sha256 for c in (bias, dark) if c is not None},
        )
        return MasterPlan(
            key=key, night=night, spec=spec, inputs=inputs, out=out, version=version, method=method,
            dark_scale=dark_scale, dates=dates, mid=mid, bias_id=bias.id if bias else None,
            dark_id=dark.id if dark else None, camera=sample.camera_key,
            temp=master_temperature(frames, m.temperature_tolerance) if kind == "dark" else None,
            exptime=sample.exptime if kind != "bias" else None, filter=sample.filter if kind == "flat" else None,
            instrument=sample.instrument,
            detector=detector_values(sample.header or {}, sample.instrument, ctx.cfg.detector) if kind == "flat"
            else None,
        )


def calibrators(choose: Masters, kind: str, sample: Frame, mid: datetime | None) -> tuple[Master | None, Master | None]:
    """The master bias and (a flat's) dark a master of ``kind`` would be made on now: darks on
    the bias, flats on the bias and a dark-flat of their exposure if there is one (one that
    includes the bias removes it itself, and replaces it)."""
    if kind == "bias":
        return None, None
    bias = choose.choose("bias", sample, mid)[0]
    dark = choose.dark(sample, mid, bias, exact_only=True)[0] if kind == "flat" else None
    if dark is not None and not dark.bias_subtracted:
        bias = None
    return bias, dark


def awaits(choose: Masters, kind: str, sample: Frame) -> str:
    """What a dark or flat with nothing to remove its bias waits for: the biases of its camera
    set-up that have arrived (their master is to come), or a flat's dark-flats; "" when none has
    (a CMOS night without biases: darks matched to the lights, flats with or without dark-flats),
    and it is made at once, without (`recombine_unbiased` makes it again if its night's biases
    come later)."""
    camera = sample.camera_key
    if choose.arrived("bias", camera):
        return f"a master bias ({choose.progress('bias', camera)})"
    if kind == "flat" and choose.arrived("dark", camera, exptime=sample.exptime or 0.0):
        return f"a master dark of {sample.exptime or 0.0:g} s (darks of the flats' exposure have arrived)"
    return ""


def made_without_bias(master: Master) -> bool:
    """A dark or flat made with neither a master bias nor a bias-including dark subtracted."""
    return master.kind != "bias" and master.bias_id is None and master.dark_id is None


def recombine_unbiased(s: Session, bias: Master) -> None:
    """A master bias has been made: the darks and flats of its camera set-up, night and site that
    were made without a bias (none had arrived) go back to the planner, to be made again on it as
    new versions (darks then scale, flats lose the bias pedestal; the lights they serve are
    calibrated again under ``calibration.recalibrate_on_better_master``)."""
    for kind in ("dark", "flat"):
        for old in current_masters(s, kind, bias.camera_key, sites=[bias.site]):
            if old.night != bias.night or not made_without_bias(old):
                continue
            for f in frames_by_id(s, [i.frame_id for i in old.inputs]):
                if f.state == FrameState.USED:
                    f.state, f.updated_at = FrameState.INGESTED, utcnow()
                    log_event(s, f, "recombine", f"master {kind} #{old.id} was made without a bias; master bias "
                                                 f"#{bias.id} of its night now exists")


def master_temperature(frames: list[Frame], tolerance: float) -> float | None:
    """A master dark's temperature (degC): the median of its inputs' (`ccdwatch.keys.temperature_ref`:
    the set-point where the sensor reached it, else the measured CCD-TEMP); None if none says."""
    temps = [t for t in (temperature_ref(f, tolerance) for f in frames) if t is not None]
    return statistics.median(temps) if temps else None


def _header(kind: str, sample: Frame, night: str, version: int, n: int, method: str, sigma: float,
            bias: Master | None, dark: Master | None, dark_scale: float | None, dates: tuple[datetime, ...],
            key: CalibKey) -> dict[str, object]:
    """The master's FITS cards: what it is, what it was made from and how (masters it was made
    on by night, key, version and sha256, never by catalogue id)."""
    return product_header(
        None,
        IMAGETYP=f"Master {kind.capitalize()}", INSTRUME=sample.instrument, TELESCOP=sample.telescope,
        XBINNING=sample.xbin, YBINNING=sample.ybin, EXPTIME=sample.exptime if kind != "bias" else 0.0,
        FILTER=sample.filter if kind == "flat" else None, NIGHT=night,
        MASTERV=version, NCOMBINE=n, COMBMETH=method,
        CLIPSIG=sigma if method == "sigma_clip" else None,
        BIASSUB=bias is not None, **master_cards("BIAS", bias),
        DARKSUB=dark is not None, **master_cards("DARK", dark), DARKSCL=dark_scale,
        DATE_BEG=min(dates).isoformat() if dates else None, DATE_END=max(dates).isoformat() if dates else None,
        CALIBKEY=short_hash(str(key), 16), BUNIT="adu" if kind != "flat" else None,
        # a mosaic master: its pattern as stored (the key holds it too: only frames of this pattern)
        BAYERPAT=sample.bayer_pattern, XBAYROFF=0 if sample.bayer_pattern else None,
        YBAYROFF=0 if sample.bayer_pattern else None, ROWORDER="TOP-DOWN" if sample.bayer_pattern else None,
    )


def commit(ctx: Context, plan: MasterPlan, result: specs.MasterResult) -> int | None:
    """Record a new master version and mark its inputs used, those left out for their level
    ``rejected`` with the reason; None when too few were left to build it (the lights wait, and
    say why: `ccdwatch.pipeline.selection.Masters.progress`)."""
    rejected = {plan.inputs[i][0]: why for i, why in result.rejected}
    if rejected:
        _reject_inputs(ctx, plan, rejected, built=result.sha256 is not None)
    if result.sha256 is None:
        return None
    plan = dataclasses.replace(plan, inputs=tuple(x for x in plan.inputs if x[0] not in rejected))
    m = ctx.cfg.masters
    gain = _gain_params(ctx, plan, result)
    with ctx.catalog.session() as s:
        master = Master(
            kind=plan.kind, calib_key=str(plan.key), camera_key=plan.camera, exptime=plan.exptime,
            filter=plan.filter, ccd_temp=plan.temp, night=plan.night, version=plan.version, path=str(plan.out),
            sha256=result.sha256, preview_path=result.preview_path, n_frames=len(plan.inputs), method=plan.method,
            params={"sigma": m.sigma, "memory_budget_mb": m.memory_budget_mb, "dark_scale": plan.dark_scale,
                    "hot_pixel_sigma": m.hot_pixel_sigma, **gain},
            bias_subtracted=plan.bias_id is not None, dark_subtracted=plan.dark_id is not None,
            bias_id=plan.bias_id, dark_id=plan.dark_id,
            date_start=min(plan.dates) if plan.dates else None, date_end=max(plan.dates) if plan.dates else None,
            date_mid=plan.mid, mean=result.mean, noise=result.noise, hot_pixels=result.hot_pixels,
            ccdwatch_version=__version__, created_at=utcnow(), site=ctx.site,
        )
        master.inputs = [MasterInput(frame_id=i, sha256=h) for i, h in plan.inputs]
        release(s, claim_name(ctx.site, plan.key, plan.night), owner=ctx.owner)
        s.add(master)
        s.flush()
        if plan.kind == "bias":
            recombine_unbiased(s, master)
        _supersede(s, master)
        levels = dict(zip((i for i, _ in plan.inputs), result.overscan_levels, strict=False))
        for f in frames_by_id(s, [i for i, _ in plan.inputs]):
            if levels.get(f.id) is not None:
                f.overscan_level = levels[f.id]
        for f in frames_by_id(s, plan.charged):
            f.state, f.updated_at = FrameState.USED, utcnow()
            log_event(s, f, "used", f"in master {plan.kind} #{master.id} v{plan.version}")
        master_id = master.id
    logger.info("built master %s #%d (night %s, v%d, %d frames)", plan.kind, master_id, plan.night, plan.version,
                len(plan.inputs))
    check = gain.get("gain_check")
    if isinstance(check, dict):  # once per master: it is built once
        logger.log(logging.WARNING if check["level"] == "warning" else logging.INFO, "master flat #%d: %s",
                   master_id, check["message"])
    return master_id


def _reject_inputs(ctx: Context, plan: MasterPlan, rejected: dict[int, str], *, built: bool) -> None:
    """Inputs left out of a master for their level: ``rejected`` with the reason, logged once (a
    rejected frame is in no later plan); without a master (too few left), its claim released."""
    with ctx.catalog.session() as s:
        for f in frames_by_id(s, list(rejected)):
            f.state, f.state_reason, f.updated_at = FrameState.REJECTED, rejected[f.id], utcnow()
            log_event(s, f, "rejected", f"from master {plan.kind} of night {plan.night}: {rejected[f.id]}")
        if not built:
            release(s, claim_name(ctx.site, plan.key, plan.night), owner=ctx.owner)
    left = len(plan.inputs) - len(rejected)
    logger.warning("%s: %d of %d inputs rejected (%s)%s", plan.subject, len(rejected), len(plan.inputs),
                   next(iter(rejected.values())),
                   "" if built else f"; {left} left, fewer than masters.min_frames: no master built")


def _supersede(s: Session, master: Master) -> None:
    """Retire the masters of the same kind and night keyed otherwise whose inputs ``master`` now
    combines (every version of their key): darks whose key changed (a late dark earlier in the
    night, an older ccdwatch's key) must not leave their old master current beside the new one.
    Their other inputs go back to be combined again under their own key."""
    mine = {i.frame_id for i in master.inputs}
    old = {(m.calib_key, m.night, m.site) for m in masters_with_inputs(s, sorted(mine))
           if m.id != master.id and m.kind == master.kind and m.night == master.night
           and m.site == master.site and m.calib_key != master.calib_key and m.retired is None}
    for calib_key, night, site in sorted(old, key=str):
        for m in masters_of_key(s, calib_key, night, site=site):
            if m.retired is not None:
                continue
            m.retired = (f"superseded by master {master.kind} #{master.id} ({master.calib_key}), "
                         "which combines its inputs")
            logger.info("master %s #%d retired: %s", m.kind, m.id, m.retired)
            for frame in frames_by_id(s, [i.frame_id for i in m.inputs if i.frame_id not in mine]):
                if frame.state == FrameState.USED:
                    frame.state, frame.updated_at = FrameState.INGESTED, utcnow()
                    log_event(s, frame, "recombine", f"master {m.kind} #{m.id} superseded by #{master.id}")


def _gain_params(ctx: Context, plan: MasterPlan, result: specs.MasterResult) -> dict[str, Any]:
    """A flat's measured gain (e-/ADU) for its record, with the gain its lights use and, when they
    disagree, the message (`ccdwatch.detector.gain_check`)."""
    if result.gain is None or plan.detector is None:
        return {}
    gain, error = result.gain
    params: dict[str, Any] = {"gain_measured": gain, "gain_error": error, "gain_used": plan.detector.gain,
                                 "gain_used_source": plan.detector.gain_source}
    verdict = gain_check(gain, error, plan.detector, plan.instrument, ctx.cfg.detector)
    if verdict is not None:
        params["gain_check"] = {"level": verdict[0], "message": verdict[1]}
    return params
