"""Reclassification: a frame's type is a function of (raw header, path, rules, classifier version).

When the rules or the classifier change, every affected frame is classified again from what the
catalogue kept (its header, its path below the incoming directory, its pixel statistics), and
what depended on the old type is redone: masters built with a frame that changed type are
retired (with every master built on them) and rebuilt without it, lights calibrated with a retired
master are calibrated again, stacks that held a frame that is no longer a light are rebuilt.
Nothing is deleted; each frame's history says why. The daemon does this at start-up, and
``ccdwatch reclassify`` on demand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from ccdwatch.catalog import log_event, utcnow
from ccdwatch.catalog import queries as q
from ccdwatch.headers import PixelEvidence, fingerprint, normalise
from ccdwatch.models import Frame, FrameState, Master
from ccdwatch.pipeline.context import Context
from ccdwatch.pipeline.ingest import classification_record, initial_state

logger = logging.getLogger(__name__)

#: States a reclassified frame keeps (its raw file is gone, or another frame replaced it).
_KEEP_STATES = (FrameState.MISSING, FrameState.SUPERSEDED, FrameState.QUARANTINED, FrameState.FAILED)


@dataclass
class Reclassified:
    """What a reclassification changed."""

    checked: int = 0
    changed: list[tuple[int, str, str]] = field(default_factory=list)
    """(frame id, old, new) per frame whose type, filter or object changed."""
    retired_masters: list[int] = field(default_factory=list)
    retired_stacks: list[int] = field(default_factory=list)


def reclassify(ctx: Context, *, night: str | None = None, force: bool = False) -> Reclassified:
    """Classify again every frame classified with other rules or another classifier version
    (``force``: every frame), and redo what depended on a type that changed."""
    current = fingerprint(ctx.cfg.classify)
    out = Reclassified()
    with ctx.catalog.session() as s:
        for frame in q.frames_to_reclassify(s, night, site=ctx.site, unless_fingerprint=None if force else current):
            record = frame.classification or {}
            if not force and record.get("fingerprint") == current:
                continue
            out.checked += 1
            _reclassify_frame(ctx, s, frame, current, out)
        if out.changed:
            _retire_dependents(s, [fid for fid, _, _ in out.changed], out)
    if out.changed:
        logger.warning("reclassified %d of %d frames checked (rules or classifier changed); %d masters and "
                       "%d stacks retired, to be rebuilt", len(out.changed), out.checked, len(out.retired_masters),
                       len(out.retired_stacks))
    elif out.checked:
        logger.info("reclassification: %d frames checked, none changed", out.checked)
    return out


def _identity(f: Frame) -> str:
    ignored = " (ignored)" if f.state == FrameState.IGNORED else ""
    return f"{f.imagetyp} filter={f.filter} object={f.object}{ignored}"


def _reclassify_frame(ctx: Context, s: Session, f: Frame, current: str, out: Reclassified) -> None:
    record = f.classification or {}
    pixels = record.get("pixels")
    info = normalise(f.header or {}, filename=f.relpath or Path(f.path).name, rules=ctx.cfg.classify,
                     timezone=ctx.cfg.night.timezone, night_start_hour=ctx.cfg.night.start_hour,
                     pixels=PixelEvidence.from_json(pixels))
    f.classification = classification_record(info, pixels, current)
    was_ignored = f.state == FrameState.IGNORED
    if (f.imagetyp, f.filter, f.object, was_ignored) == (info.imagetyp.value, info.filter, info.object,
                                                          info.ignored):
        return
    before = _identity(f)
    type_changed = f.imagetyp != info.imagetyp.value or was_ignored != info.ignored
    f.imagetyp, f.filter, f.object, f.type_source = info.imagetyp.value, info.filter, info.object, info.type_source
    if type_changed and f.state not in _KEEP_STATES:
        f.state = initial_state(info.imagetyp, info.ignored)
        f.state_reason = info.type_source if f.state in (FrameState.UNCLASSIFIED, FrameState.IGNORED) else None
    elif f.state == FrameState.CALIBRATED or f.state == FrameState.STACKED:
        f.state = FrameState.WAITING  # same type, other filter or object: masters and group change
    f.group_key = None
    f.updated_at = utcnow()
    after = _identity(f)
    log_event(s, f, "reclassified", f"{before} -> {after}: {info.type_source}")
    out.changed.append((f.id, before, after))


def _retire_dependents(s: Session, frame_ids: list[int], out: Reclassified) -> None:
    """Retire the masters built with these frames (and those built on them), put their other
    inputs back to be combined again, send the lights they calibrated back to waiting, and
    retire the stacks these frames were in."""
    retired: dict[int, Master] = {m.id: m for m in q.masters_with_inputs(s, frame_ids) if m.retired is None}
    frontier = list(retired)
    while frontier:  # darks built on a retired bias, flats on a retired bias or dark
        built_on = [m for m in q.masters_built_on(s, frontier) if m.retired is None and m.id not in retired]
        retired.update({m.id: m for m in built_on})
        frontier = [m.id for m in built_on]
    for master in retired.values():
        master.retired = "an input was reclassified, or a master it was built on was retired"
        out.retired_masters.append(master.id)
        for frame in q.frames_by_id(s, [i.frame_id for i in master.inputs]):
            if frame.state == FrameState.USED:
                frame.state = FrameState.INGESTED
                log_event(s, frame, "recombine", f"master {master.kind} #{master.id} retired")
    for light in q.lights_calibrated_with(s, list(retired)):
        if light.state in (FrameState.CALIBRATED, FrameState.STACKED, FrameState.REJECTED):
            light.state = FrameState.WAITING
            log_event(s, light, "recalibrate", "a master it was calibrated with was retired")
    for stack in q.current_stacks_with_members(s, frame_ids):
        stack.current = False
        out.retired_stacks.append(stack.id)
        for member in q.frames_by_id(s, [m.frame_id for m in stack.members]):
            if member.state in (FrameState.STACKED, FrameState.REJECTED) and member.id not in frame_ids:
                member.state = FrameState.CALIBRATED  # stacked again, without the reclassified frame
