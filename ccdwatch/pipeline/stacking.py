"""Stacking: a group of calibrated lights that has gone quiet -> a new stack version.

Lights are grouped by night, target, filter, exposure and camera set-up; the target is OBJECT
(split by pointing: mosaic panels often share one), else a pointing cluster, else a time
sequence. A group is stacked when no light of it still waits and none has arrived for
``stack.quiet_minutes`` (or at once at the end of ``--once``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from ccdwatch import __version__
from ccdwatch.catalog import log_event, utcnow
from ccdwatch.catalog.queries import (
    current_calibrated,
    frames_by_id,
    group_frames,
    latest_stack,
    lights_of_night,
    nights_with_calibrated_lights,
)
from ccdwatch.catalog.sites import claim, holder, release
from ccdwatch.jobs import memory, specs
from ccdwatch.keys import GroupKey, nominal_exposures
from ccdwatch.models import Calibrated, Frame, FrameState, Stack, StackMember
from ccdwatch.pipeline.calibrate import timed_out
from ccdwatch.pipeline.context import Context
from ccdwatch.pipeline.lifecycle import content_hash, raw_name
from ccdwatch.products import preview_path, product_header, stack_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackPlan:
    """One group's stacking job and what to record when it is done."""

    group: GroupKey
    spec: specs.StackSpec
    rejected: tuple[tuple[int, str], ...]
    #: frame id -> (calibrated product id, its sha256, exposure in s), for every member
    member_info: dict[int, tuple[int, str, float]]
    night: str
    target: str
    filter: str | None
    exptime: float | None
    camera_key: str | None
    latest_id: int | None
    version: int
    out: Path

    @property
    def subject(self) -> str:
        return f"stacking group {self.group}"

    @property
    def charged(self) -> tuple[int, ...]:
        return ()  # a group that cannot be stacked is no fault of its frames

    @property
    def members(self) -> tuple[int, ...]:
        """The group's frames: told (not charged) why a stack is not made."""
        return tuple(self.member_info)


def claim_name(site: str, group: GroupKey) -> str:
    """What a planner claims while it stacks one group of one site."""
    return f"stack|{site}|{group}"


def assign_groups(ctx: Context, s: Session, night: str | None) -> dict[int, GroupKey]:
    """Give every light of a night (of this site) its stack group: night, target, filter, exposure, camera."""
    lights = lights_of_night(s, night, site=ctx.site)
    exposure = nominal_exposures([(f.id, (f.filter, f.camera_key), f.exptime) for f in lights])
    targets = assign_targets(
        [(f.id, f.object, f.ra_deg, f.dec_deg, f.date_obs, f.filter, exposure[f.id], f.camera_key) for f in lights],
        radius_arcmin=ctx.cfg.stack.pointing_radius_arcmin,
        gap_minutes=ctx.cfg.stack.sequence_gap_minutes,
    )
    groups = {}
    for f in lights:
        key = GroupKey(night=night, target=targets[f.id].replace("|", "/"), filter=f.filter, exptime=exposure[f.id],
                       camera=f.camera_key)
        if f.group_key != str(key):
            f.group_key = str(key)
        groups[f.id] = key
    return groups


def due_groups(ctx: Context, *, final: bool = False) -> list[GroupKey]:
    """Groups that are complete: quiet for long enough, or ``final``."""
    return due_and_next_close(ctx, final=final)[0]


def due_and_next_close(ctx: Context, *, final: bool = False) -> tuple[list[GroupKey], datetime | None]:
    """Groups that are complete (quiet for long enough, or ``final``), and when the next of the
    others with nothing waiting closes (catalogue time, UTC; None when none will by itself), so
    that the daemon can stack it then rather than at its next periodic tick."""
    due: list[GroupKey] = []
    next_close: datetime | None = None
    quiet = timedelta(minutes=ctx.cfg.stack.quiet_minutes)
    with ctx.catalog.session() as s:
        for night in nights_with_calibrated_lights(s, site=ctx.site):
            groups = assign_groups(ctx, s, night)
            members: dict[GroupKey, list[Frame]] = {}
            for f in frames_by_id(s, list(groups)):
                members.setdefault(groups[f.id], []).append(f)
            for key, frames in members.items():
                if not any(f.state == FrameState.CALIBRATED for f in frames):
                    continue
                waiting = [f for f in frames if f.state == FrameState.WAITING and not timed_out(ctx, f)]
                closes = max(f.created_at for f in frames) + quiet
                if final or (not waiting and utcnow() >= closes):
                    due.append(key)
                elif not waiting and (next_close is None or closes < next_close):
                    next_close = closes
    return due, next_close


def plan_many(ctx: Context, groups: Sequence[GroupKey], *, redo_before: datetime | None = None) -> list[StackPlan]:
    return [p for p in (plan_stack(ctx, key, redo_before=redo_before) for key in groups) if p is not None]


def plan_stack(ctx: Context, group: GroupKey, *, redo_before: datetime | None = None) -> StackPlan | None:
    """Reject outliers and choose the reference of one group (None: nothing new to stack - with
    ``redo_before``, the latest stack is newer than that time - or another planner claimed it)."""
    st = ctx.cfg.stack
    with ctx.catalog.session() as s:
        products: dict[int, Calibrated] = {}
        frames = []
        for f in stable_order(group_frames(s, str(group), site=ctx.site)):
            product = current_calibrated(s, f.id)
            if product is not None:
                products[f.id] = product
                frames.append(f)
        if len(frames) < st.min_frames:
            for f in frames:
                if f.state == FrameState.CALIBRATED:
                    f.state_reason = f"group has {len(frames)} frame(s), fewer than stack.min_frames={st.min_frames}"
            return None
        latest = latest_stack(s, str(group), site=ctx.site)
        signature = sorted((f.id, products[f.id].sha256) for f in frames)
        if latest is not None and sorted((m.frame_id, m.sha256) for m in latest.members) == signature and (
                redo_before is None or latest.created_at >= redo_before):
            for f in frames:
                if f.state == FrameState.CALIBRATED:
                    f.state = FrameState.STACKED
            return None
        what = claim_name(ctx.site, group)
        if not claim(s, what, owner=ctx.owner, site=ctx.site, ttl=ctx.claim_ttl):
            logger.info("group %s is being stacked by %s", group, holder(s, what))
            return None
        from ccdwatch import qa  # here: its package brings sep and OpenCV, for the frames' own QA

        quality = {f.id: qa.FrameQuality(
            n_stars=f.n_stars or 0, fwhm=_nan(f.fwhm), elongation=_nan(f.elongation), sky=_nan(f.sky),
            sky_noise=_nan(f.sky_noise), saturated_fraction=f.saturated_fraction or 0.0) for f in frames}
        rejected = qa.reject_outliers(quality, fwhm_mad=st.fwhm_mad, sky_mad=st.sky_mad,
                                      stars_fraction=st.stars_fraction, min_stars=st.min_stars,
                                      elongation_max=st.elongation_max)
        usable = [f.id for f in frames if f.id not in rejected]
        if not usable:
            return None
        # ties go to the first in time-then-content order, not to the lowest catalogue id
        rank = {n: f.id for n, f in enumerate(frames)}
        reference = rank[qa.choose_reference({n: quality[fid] for n, fid in rank.items()},
                                             exclude=[n for n, fid in rank.items() if fid in rejected])]
        ref_frame = next(f for f in frames if f.id == reference)
        version = (latest.version + 1) if latest else 1
        target = group.target
        night = ref_frame.night or "nonight"
        out = stack_path(ctx.products, night=night, target=target, filter=ref_frame.filter,
                         exptime=ref_frame.exptime, group_key=str(group), version=version)
        spec = specs.StackSpec(
            products={fid: products[fid].path for fid in usable}, reference=reference, method=st.method,
            sigma=st.sigma, memory_budget=ctx.memory_budget, workdir=str(ctx.workdir), out_path=str(out),
            header=product_header(
                None, IMAGETYP="Stack", OBJECT=target, FILTER=ref_frame.filter, EXPTIME=ref_frame.exptime,
                INSTRUME=ref_frame.instrument, TELESCOP=ref_frame.telescope, NIGHT=night,
                COMBMETH=st.method, CLIPSIG=st.sigma if st.method == "sigma_clip" else None, INTERP=st.interpolation,
                STACKV=version, WEIGHTS=(st.weights, "frame weights (stack.weights)"),
                NORMALIS=(st.normalisation, "sky offset [+ flux scale] (stack.normalisation)"),
            ),
            members=tuple((f.id, products[f.id].sha256, f.exptime or 0.0) for f in frames),
            labels={f.id: (content_hash(f), raw_name(f)) for f in frames},
            rejected=tuple(rejected.items()),
            preview_path=str(preview_path(out)) if ctx.cfg.report.previews else None,
            preview_title=(f"{target} {ref_frame.filter or ''} - {len(usable)} x {ref_frame.exptime or 0:g} s"
                           f" - night {night}"),
            min_free_bytes=ctx.min_free, bayer_pattern=ref_frame.bayer_pattern, demosaic=ctx.cfg.colour.demosaic,
            weights=st.weights, fwhm={f.id: f.fwhm for f in frames if f.fwhm},
            shape=memory.raw_shape(ref_frame.naxis1, ref_frame.naxis2, (ref_frame.header or {}).get("BITPIX")),
            interpolation=st.interpolation, scale_flux=st.normalisation == "scale",
            compression=ctx.compression,
        )
        member_info = {f.id: (products[f.id].id, products[f.id].sha256, f.exptime or 0.0) for f in frames}
        return StackPlan(group=group, spec=spec, rejected=tuple(rejected.items()), member_info=member_info,
                         night=night, target=target, filter=ref_frame.filter, exptime=ref_frame.exptime,
                         camera_key=ref_frame.camera_key, latest_id=latest.id if latest is not None else None,
                         version=version, out=out)


def stable_order(frames: Sequence[Frame]) -> list[Frame]:
    """Frames by time, then raw content: the order a stack combines (and lists) its members in,
    the same whatever order they were catalogued in."""
    return sorted(frames, key=lambda f: (f.date_obs is None, f.date_obs or datetime.min, f.sha256 or ""))


def commit(ctx: Context, plan: StackPlan, result: specs.StackJobResult) -> int:
    """Record the new stack version with every member (used or rejected, and why)."""
    st = ctx.cfg.stack
    rejected = dict(plan.rejected)
    rejected.update({fid: f"alignment failed: {why}" for fid, why in result.failed.items()})
    member_info = plan.member_info
    used = [fid for fid in member_info if fid not in rejected]
    total = float(sum(member_info[fid][2] for fid in used))
    with ctx.catalog.session() as s:
        if plan.latest_id is not None:
            previous = s.get(Stack, plan.latest_id)
            if previous is not None:
                previous.current = False
        row = Stack(group_key=str(plan.group), version=plan.version, current=True, path=str(plan.out),
                    sha256=result.sha256, preview_path=result.preview_path, n_used=len(used),
                    n_rejected=len(rejected), total_exposure=total, reference_frame_id=result.reference,
                    method=st.method,
                    params={"sigma": st.sigma, "fwhm_mad": st.fwhm_mad, "sky_mad": st.sky_mad,
                            "min_stars": st.min_stars, "stars_fraction": st.stars_fraction,
                            "elongation_max": st.elongation_max},
                    ccdwatch_version=__version__, created_at=utcnow(), night=plan.night, target=plan.target,
                    filter=plan.filter, exptime=plan.exptime, camera_key=plan.camera_key, site=ctx.site)
        release(s, claim_name(ctx.site, plan.group), owner=ctx.owner)
        for fid, (cal_id, sha, _) in member_info.items():
            scale = result.scales.get(fid)
            row.members.append(StackMember(frame_id=fid, calibrated_id=cal_id, sha256=sha,
                                           used=fid not in rejected, reason=rejected.get(fid),
                                           transform=result.transforms.get(fid), sky_offset=result.offsets.get(fid),
                                           scale=scale[0] if scale else None, scale_note=scale[2] if scale else None))
        s.add(row)
        s.flush()
        for f in frames_by_id(s, list(member_info)):
            if f.id in rejected:
                f.state, f.state_reason = FrameState.REJECTED, rejected[f.id]
                log_event(s, f, "rejected", rejected[f.id])
            else:
                f.state, f.state_reason = FrameState.STACKED, None
                log_event(s, f, "stacked", f"in stack #{row.id} v{plan.version} of {plan.target}")
            f.updated_at = utcnow()
        sid = row.id
    logger.info("stacked %s: %d used, %d rejected -> %s", plan.group, len(used), len(rejected), plan.out)
    return sid


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _sep_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    c = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(r1 - r2)
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


#: (id, object, ra, dec, date_obs, filter, exptime, camera_key) of one light
LightSummary = tuple[int, str | None, float | None, float | None, datetime | None, str | None, float | None,
                     str | None]


def assign_targets(lights: Sequence[LightSummary], *, radius_arcmin: float, gap_minutes: float) -> dict[int, str]:
    """Target name per light: OBJECT (split into pointings); else a pointing cluster; else a time sequence.

    ``lights`` are (id, object, ra, dec, date_obs, filter, exptime, camera_key) sorted by time.
    The lights of one OBJECT with a pointing are split into clusters of ``radius_arcmin`` (the
    panels of a mosaic often share one OBJECT): the first cluster in time keeps the name, the
    others are ``OBJECT (2)``, ``OBJECT (3)``... in the order they begin, so a panel's later
    lights join its group and a target of one pointing keeps its plain name (and its stacks'
    versions). Lights of an OBJECT without a pointing take the plain name.
    Lights with neither OBJECT nor pointing form one target per run of the same filter, exposure
    and camera with no gap longer than ``gap_minutes`` (so V, R, V, R... gives one target each).
    """
    targets: dict[int, str] = {}
    centres: list[tuple[float, float, str]] = []
    panels: dict[str, list[tuple[float, float, str]]] = {}  # OBJECT -> its pointings' centres
    runs: dict[tuple[str | None, float | None, str | None], tuple[datetime | None, str]] = {}
    gap = timedelta(minutes=gap_minutes)
    for fid, obj, ra, dec, when, filt, exp, cam in lights:
        if obj:
            known = panels.setdefault(obj, [])
            targets[fid] = obj if ra is None or dec is None else \
                _pointing_target(ra, dec, known, radius_arcmin, name=_panel_name(obj, len(known)))
            continue
        if ra is not None and dec is not None:
            targets[fid] = _pointing_target(ra, dec, centres, radius_arcmin)
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


def _pointing_target(ra: float, dec: float, centres: list[tuple[float, float, str]], radius_arcmin: float,
                     *, name: str | None = None) -> str:
    """The name of the pointing cluster within ``radius_arcmin`` of (ra, dec), or a new one
    (called ``name``, else by its pointing)."""
    for cra, cdec, known in centres:
        if _sep_deg(ra, dec, cra, cdec) * 60 <= radius_arcmin:
            return known
    name = name or f"RA{ra:07.3f}{dec:+07.3f}"
    centres.append((ra, dec, name))
    return name


#: Longest target name (``Stack.target``, ``Frame.object``: 80 characters).
_TARGET_CHARS = 80


def _panel_name(obj: str, n_before: int) -> str:
    """The name of an OBJECT's pointing cluster after ``n_before`` others: the OBJECT for the
    first, ``OBJECT (k)`` for the k-th (the OBJECT cut to keep it within `_TARGET_CHARS`)."""
    if n_before == 0:
        return obj
    suffix = f" ({n_before + 1})"
    return obj[: _TARGET_CHARS - len(suffix)] + suffix
