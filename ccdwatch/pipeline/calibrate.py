"""Calibration: a light whose masters exist -> a calibrated product and its frame quality.

A light waits (with the reason) until its masters exist, or is calibrated partially when the
policy allows; it is recalibrated, as a new product version, when a better master appears.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from ccdwatch import __version__
from ccdwatch.catalog import log_event, utcnow
from ccdwatch.catalog.queries import (
    current_calibrated,
    frames_by_id,
    lights_served_by,
    next_calibrated_version,
    waiting_light_ids,
    waiting_signature,
)
from ccdwatch.detector import DetectorValues, NoiseSpec, detector_values
from ccdwatch.fitsio.names import fits_stem
from ccdwatch.headers.cfa import bayerpat_card
from ccdwatch.headers.sections import OverscanPlan
from ccdwatch.jobs import memory, specs
from ccdwatch.models import EXIT_STATES, Calibrated, Frame, FrameState, Master
from ccdwatch.pipeline.context import Context
from ccdwatch.pipeline.lifecycle import content_hash, raw_name, raw_paths
from ccdwatch.pipeline.runner import Stage
from ccdwatch.pipeline.selection import Masters
from ccdwatch.products import calibrated_path, master_cards, preview_path, product_header

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationPlan:
    """One light's calibration job and what to record when it is done."""

    spec: specs.CalibrateSpec
    bias_id: int | None
    dark_id: int | None
    flat_id: int | None
    dark_scale: float | None
    partial: bool
    missing: str | None
    version: int
    explain: str

    @property
    def frame_id(self) -> int:
        return self.spec.frame_id

    @property
    def subject(self) -> str:
        return f"calibrating frame {self.spec.frame_id}"

    @property
    def charged(self) -> tuple[int, ...]:
        return (self.spec.frame_id,)


def timed_out(ctx: Context, frame: Frame) -> bool:
    """Has this light waited ``calibration.max_wait_hours`` since it was catalogued?"""
    age = utcnow() - frame.created_at
    return age.total_seconds() >= ctx.cfg.calibration.max_wait_hours * 3600


def pending(ctx: Context, new_masters: Sequence[int] = ()) -> list[int]:
    """Lights to (re)consider: every waiting light, and with ``new_masters`` the calibrated
    lights those masters could serve (same camera set-up, within the master's maximum age).

    Only the waiting set is scanned otherwise, so the cost does not grow with the catalogue.
    """
    with ctx.catalog.session() as s:
        ids = waiting_light_ids(s, site=ctx.site)
        if not ctx.cfg.calibration.recalibrate_on_better_master:
            return ids
        for master in (s.get(Master, mid) for mid in new_masters):
            if master is None:
                continue
            span = timedelta(days=Masters(s, ctx.cfg.masters).max_age_days(master.kind))
            seen = set(ids)
            ids += [i for i in lights_served_by(s, master, span, site=ctx.site) if i not in seen]
    return ids


class WaitingLights:
    """When the waiting lights are planned again: on events, never just because time passed.

    Planning a light costs a master selection and a few queries, so re-planning every waiting
    light on every tick made an idle daemon's cost grow with the lights that wait (2,000 lights
    waiting for flats: a third of a core). Whether a waiting light can be calibrated only changes
    when a master is built, when the light itself changes (new, back from ``missing``, reset by
    ``ccdwatch retry``, reclassified: its row is written, which :func:`waiting_signature` sees,
    whichever process wrote it), when its wait times out under ``on_timeout = "partial"`` (the
    signature counts timed-out lights), or at start-up. Jobs that failed or were paused by a full
    disk are tried again at the next tick, as before.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.seen: tuple[int, object, int] | None = None  # None: start-up, plan them all
        self.retry: set[int] = set()

    def signature(self) -> tuple[int, object, int]:
        cal = self.ctx.cfg.calibration
        cutoff = (utcnow() - timedelta(hours=cal.max_wait_hours)) if cal.on_timeout == "partial" else None
        with self.ctx.catalog.reader() as s:
            return waiting_signature(s, cutoff)

    def due(self, new_masters: Sequence[int] = (), *, final: bool = False) -> tuple[list[int], bool]:
        """The lights to plan at a tick, and whether that is every waiting light (a full pass).

        A full pass when masters were just built, at the end of the night (``final``), at
        start-up, or when the catalogue's waiting lights changed behind our back; else only the
        lights whose job failed or was paused last time."""
        if final or new_masters or self.seen is None or self.signature() != self.seen:
            self.retry.clear()
            self.seen = None  # until the pass is done: an interrupted one (disk full) is done again
            return pending(self.ctx, new_masters), True
        ids, self.retry = sorted(self.retry), set()
        return ids, False

    def planned(self, planned: Sequence[int], committed: Sequence[int]) -> None:
        """Jobs that were planned and not committed (a failure, a full disk) are tried again."""
        self.retry |= set(planned) - set(committed)

    def settled(self) -> None:
        """The waiting lights are as our own planning left them: remember their signature."""
        self.seen = self.signature()

    def unsettled(self) -> None:
        """Masters are being built: the next `due` is a full pass, even if this tick ends before
        its own (an early light's commit failing raises out of the masters' pass)."""
        self.seen = None


def plan_many(ctx: Context, frame_ids: Sequence[int], *, final: bool = False,
              redo_before: datetime | None = None) -> list[CalibrationPlan]:
    """Plan every light that can be calibrated now; record why the others wait. With
    ``redo_before``, a light whose current product is older than that time is calibrated again."""
    plans = []
    with ctx.catalog.session() as s:
        masters = Masters(s, ctx.cfg.masters, sites=ctx.master_sites)  # the same for every light of the batch
        for fid in frame_ids:
            plan = plan_calibration(ctx, s, masters, fid, final=final, redo_before=redo_before)
            if plan is not None:
                plans.append(plan)
    return plans


def stage(ctx: Context, plans: Sequence[CalibrationPlan]) -> Stage:
    """The calibration of ``plans`` as a stage for the workers (`Runner.run_stage`)."""
    return Stage(specs.CALIBRATE_LIGHT, list(plans), lambda p, r: commit(ctx, p, r), fault_point="calibrated-written")


class EarlyLights:
    """The lights calibrated as the last rank of masters is committed, in the same pass over the
    workers as those masters.

    Called (`Runner.run`'s ``then``) as each master of that rank is committed, in the rank's
    order. Before the rank's last master, the lights whose masters all exist are planned; a
    master still to come that could serve a light holds it (any bias or dark, a flat of its
    filter), so that it gets the masters it would get after the rank. At the rank's last master,
    every light left is planned as the tick would plan it (`plan_many`, ``final``; a wait is
    recorded): a light is planned at most twice in the tick (once found incomplete, once at
    the last master). Their jobs join the pass behind those queued: a worker whose master is done
    calibrates at once, rather than wait for the rank's last master and then for the lights
    planned before it (the scaled night: a dark and two flats on two workers left one idle
    ~1 s). The tick plans none of `covered` again (once a tick; `failed`: at the next one).
    """

    def __init__(self, ctx: Context, plans: Sequence[Any], built: Sequence[int], *, final: bool) -> None:
        self.ctx = ctx
        self.plans = list(plans)  # the rank's master plans, in the order they are queued
        self.built = list(built)  # masters committed in this tick so far
        self.final = final
        self.examined: set[int] = set()  # planned as the tick would (at the rank's last master)
        self.unserved: set[int] = set()  # not held, not complete either: left for the rank's last master
        self.stages: list[Stage] = []
        self.committed: list[Any] = []  # the rank's plans committed so far

    def __call__(self, plan: Any, master_id: int | None) -> Stage | None:
        if master_id is not None:  # None: not built (its inputs rejected); its lights are planned to wait
            self.built.append(master_id)
        self.committed.append(plan)
        # the rank's masters not committed yet, whatever the order they come in (the workers hand
        # results over in order, but a master that failed is never committed: it holds its lights,
        # and the tick plans them)
        later = [p for p in self.plans if not any(p is done for done in self.committed)]
        if any(p.kind != "flat" for p in later):
            return None
        skip = set(self.planned) | (self.unserved if later else set())
        ids = [i for i in pending(self.ctx, self.built) if i not in skip]
        if later:
            lights = self._complete(ids, held={(p.filter or "").lower() for p in later})
        else:
            lights = plan_many(self.ctx, ids, final=self.final)
            self.examined.update(ids)
        if not lights:
            return None
        self.stages.append(stage(self.ctx, lights))
        return self.stages[-1]

    def _complete(self, ids: Sequence[int], *, held: set[str]) -> list[CalibrationPlan]:
        """The plans of the lights of ``ids`` that no filter of ``held`` holds and whose masters
        all exist; the others are left as they are."""
        lights = []
        with self.ctx.catalog.session() as s:
            masters = Masters(s, self.ctx.cfg.masters, sites=self.ctx.master_sites)
            for frame in frames_by_id(s, ids):
                if (frame.filter or "").lower() not in held:
                    plan = plan_calibration(self.ctx, s, masters, frame.id, final=False, complete=True)
                    lights += [plan] if plan is not None else []
                    if plan is None:  # no master still to come serves it: not looked at again until the last
                        self.unserved.add(frame.id)
        return lights

    @property
    def planned(self) -> list[int]:
        """The lights planned here."""
        return [p.frame_id for st in self.stages for p in st.plans]

    @property
    def covered(self) -> set[int]:
        """The lights the tick need not plan again: planned here, or examined as it would."""
        return self.examined | set(self.planned)

    @property
    def failed(self) -> list[int]:
        """The lights planned here whose result was not committed (tried again at the next tick)."""
        done = {i for st in self.stages for i in st.committed}
        return sorted(i for i in self.planned if i not in done)


def plan_calibration(ctx: Context, s: Session, masters: Masters, frame_id: int, *,
                     final: bool, redo_before: datetime | None = None,
                     complete: bool = False) -> CalibrationPlan | None:
    """The plan of one light (None: nothing to do now, or it waits: the reason recorded).
    ``complete``: only if every master it needs exists; else None, the light left as it is."""
    frame = s.get(Frame, frame_id)
    if frame is None or frame.imagetyp != "light" or frame.state in EXIT_STATES or (
            frame.site is not None and frame.site != ctx.site):
        return None
    cal = ctx.cfg.calibration
    sel = masters.for_light(frame)
    if complete and sel.missing:
        return None
    current = current_calibrated(s, frame.id)
    if current is not None and (current.bias_id, current.dark_id, current.flat_id) == sel.ids and (
            redo_before is None or current.created_at >= redo_before):
        if frame.state == FrameState.WAITING:  # back from 'missing': its product still stands
            frame.state, frame.state_reason = FrameState.CALIBRATED, None
        return None
    partial = False
    if sel.missing:
        allow = cal.on_timeout == "partial" and (final or timed_out(ctx, frame))
        if current is not None or not allow:
            reason = "waiting for " + "; ".join(f"{k}: {v}" for k, v in sel.missing.items())
            if current is None and frame.state_reason != reason:
                frame.state, frame.state_reason, frame.updated_at = FrameState.WAITING, reason, utcnow()
                log_event(s, frame, "waiting", reason)
            return None
        partial = True
    if current is not None and not cal.recalibrate_on_better_master and redo_before is None:
        return None
    version = next_calibrated_version(s, frame.id)
    name = raw_name(frame)
    out = calibrated_path(ctx.products, night=frame.night, target=frame.object, filter=frame.filter,
                          stem=fits_stem(name), raw_sha256=content_hash(frame), version=version)
    header = product_header(  # content, never catalogue ids: the same bytes in any processing order
        frame.header, BUNIT="adu", RAWFILE=name, RAWSHA=frame.sha256,
        **master_cards("BIAS", sel.bias), **master_cards("DARK", sel.dark),
        DARKSCL=sel.dark_scale if sel.dark else None, **master_cards("FLAT", sel.flat),
        PARTIAL=partial, CALVER=version,
        BAYERPAT=bayerpat_card(frame.bayer_pattern, frame.header or {}, naxis2=frame.naxis2)
        if frame.bayer_pattern else None,
    )
    spec = specs.CalibrateSpec(
        frame_id=frame.id, raw_paths=raw_paths(frame), raw_sha256=content_hash(frame),
        bias_path=sel.bias.path if sel.bias else None, dark_path=sel.dark.path if sel.dark else None,
        dark_scale=sel.dark_scale or 1.0, flat_path=sel.flat.path if sel.flat else None, out_path=str(out),
        header=header, saturation=saturation(ctx, frame), detect_sigma=ctx.cfg.stack.detect_sigma,
        max_data_bytes=ctx.max_data_bytes, allow_compressed=ctx.cfg.ingest.allow_compressed,
        preview_path=str(preview_path(out)) if ctx.cfg.report.light_previews else None,
        min_free_bytes=ctx.min_free, bayer_pattern=frame.bayer_pattern, demosaic=ctx.cfg.colour.demosaic,
        shape=memory.raw_shape(frame.naxis1, frame.naxis2, (frame.header or {}).get("BITPIX")),
        cosmic_rays=ctx.cfg.calibration.cosmic_rays,
        overscan=OverscanPlan.from_json(frame.overscan),
        compression=ctx.compression,
        noise=NoiseSpec(**vars(_detector(ctx, frame, sel.flat)), plane=cal.uncertainty),
        sync=ctx.unsynced is None,
        checksums={m.path: m.sha256 for m in (sel.bias, sel.dark, sel.flat) if m is not None},
    )
    bias_id, dark_id, flat_id = sel.ids
    return CalibrationPlan(spec=spec, bias_id=bias_id, dark_id=dark_id, flat_id=flat_id,
                           dark_scale=sel.dark_scale if sel.dark else None, partial=partial,
                           missing="; ".join(f"{k}: {v}" for k, v in sel.missing.items()) or None,
                           version=version, explain=sel.explain())


def _detector(ctx: Context, frame: Frame, flat: Master | None) -> DetectorValues:
    """The light's gain and read noise (`ccdwatch.detector`); with ``detector.gain_from_flats =
    "use"`` and no gain configured for its camera, the gain measured from its master flat's inputs."""
    values = detector_values(frame.header or {}, frame.instrument, ctx.cfg.detector)
    measured = (flat.params or {}).get("gain_measured") if flat is not None else None
    if ctx.cfg.detector.gain_from_flats == "use" and ctx.cfg.detector.camera(frame.instrument).gain is None and (
            isinstance(measured, int | float) and measured > 0):
        return dataclasses.replace(values, gain=float(measured), gain_source="measured from the flats")
    return values


def saturation(ctx: Context, frame: Frame) -> float | None:
    """Header or configured saturation level; for a CMOS whose 12/14-bit values are shifted into
    16 bits, the largest value it can write; None lets the worker find the pile-up ceiling."""
    header = frame.header or {}
    for key in ("SATURATE", "SATLEVEL"):
        v = header.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
    if ctx.cfg.stack.saturation:
        return ctx.cfg.stack.saturation
    shift = int(((frame.classification or {}).get("pixels") or {}).get("adc_shift", 0))
    return float(65535 - (2**shift - 1)) if 0 < shift <= 8 else None


def commit(ctx: Context, plan: CalibrationPlan, result: specs.CalibrateResult) -> int:
    """Record the calibrated product (superseding the current one) and the frame's quality."""
    quality = result.quality
    if not plan.spec.sync and ctx.unsynced is not None:
        ctx.unsynced.note(ctx.catalog)  # before the row: a crash of the machine then has its products checked
    with ctx.catalog.session() as s:
        frame = s.get(Frame, plan.frame_id)
        assert frame is not None, "a frame is never deleted while it is calibrated"
        current = current_calibrated(s, frame.id)
        now = utcnow()
        if current is not None:
            current.current = False
        s.add(Calibrated(
            frame_id=frame.id, version=plan.version, current=True, path=plan.spec.out_path, sha256=result.sha256,
            bias_id=plan.bias_id, dark_id=plan.dark_id, flat_id=plan.flat_id, dark_scale=plan.dark_scale,
            partial=plan.partial, missing=plan.missing, ccdwatch_version=__version__, created_at=now,
        ))
        frame.state = FrameState.CALIBRATED
        frame.state_reason = ("PARTIAL: " + plan.missing) if plan.partial and plan.missing else None
        frame.n_stars, frame.fwhm, frame.elongation = (quality.n_stars, finite(quality.fwhm),
                                                       finite(quality.elongation))
        frame.sky, frame.sky_noise = finite(quality.sky), finite(quality.sky_noise)
        frame.saturated_fraction = result.saturated_fraction
        frame.cosmic_rays = result.cosmic_rays
        frame.overscan_level = result.overscan_level
        frame.updated_at = now
        verb = "recalibrated" if current is not None else "calibrated"
        log_event(s, frame, verb, plan.explain + (f" (v{plan.version}, supersedes v{current.version})"
                                                  if current else f" (v{plan.version})"))
        if result.nonfinite:
            log_event(s, frame, "masked", nonfinite_note(result.nonfinite))
    logger.info("%s frame %d: %s", verb, plan.frame_id, plan.explain)
    if result.nonfinite:
        logger.warning("frame %d: %s", plan.frame_id, nonfinite_note(result.nonfinite))
    return plan.frame_id


def nonfinite_note(n: int) -> str:
    """What was done with a light's NaN or infinite raw pixels, in words."""
    return (f"{n} raw pixel(s) were NaN or infinite: masked (NaN in the calibrated frame, left out of its quality "
            "measurement and of stacks)")


def finite(x: float | None) -> float | None:
    """A catalogue value: None for a missing, NaN or infinite measurement."""
    return None if x is None or not math.isfinite(x) else float(x)
