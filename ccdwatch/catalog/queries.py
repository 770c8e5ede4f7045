"""Named queries: every question the pipeline, the CLI and the daemon ask of the catalogue.

The report's questions live in ``catalog.night``; the demo's in ``catalog.summary``.

Several daemons may share one catalogue, each planning only its own site's frames: every
planning query takes ``site`` (keyword, required; ``None`` only for a catalogue without sites),
and the morning's listings take it as an optional filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Select, and_, case, func, literal, or_, select
from sqlalchemy.orm import Session

from ccdwatch.models import (
    EXIT_STATES,
    MASTER_LOST,
    Calibrated,
    Frame,
    FrameState,
    Master,
    MasterInput,
    SourceFile,
    Stack,
    StackMember,
)

CALIBRATION_TYPES = ("bias", "dark", "flat")

S = TypeVar("S", bound=Select)


def of_site(stmt: S, column: Any, site: str | None) -> S:
    """``stmt`` restricted to one site's rows (all rows for ``site=None``)."""
    return stmt if site is None else stmt.where(column == site)


def state_counts(session: Session, *, site: str | None = None) -> dict[str, int]:
    rows = session.execute(of_site(select(Frame.state, func.count()), Frame.site, site).group_by(Frame.state)).all()
    return {state: n for state, n in rows}


def last_ingest(session: Session, *, site: str | None = None) -> datetime | None:
    return session.scalar(of_site(select(func.max(Frame.created_at)), Frame.site, site))


def frame_by_path_or_id(session: Session, ref: str) -> Frame | None:
    """A frame by numeric id, by any path it was seen under, or by a unique path suffix."""
    matches = frames_by_path_or_id(session, ref, limit=2)
    return matches[0] if len(matches) == 1 else None


def frames_by_path_or_id(session: Session, ref: str, *, limit: int = 20) -> Sequence[Frame]:
    """The frame of a numeric id or of a path it was seen under; else every frame (at most
    ``limit``) one of whose paths ends with ``ref`` at a folder boundary (``M51_V_001.fits`` is
    not ``xM51_V_001.fits``; ``_`` and ``%`` in names are themselves)."""
    if ref.isdigit():
        frame = session.get(Frame, int(ref))
        return [frame] if frame is not None else []
    path = str(Path(ref).absolute())
    frame = session.scalar(select(Frame).join(SourceFile).where(SourceFile.path == path))
    if frame is not None:
        return [frame]
    tail = "/" + ref.replace("\\", "/").lstrip("/")
    escaped = tail.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    named = select(SourceFile.frame_id).where(SourceFile.path.like(f"%{escaped}", escape="!"))  # no DISTINCT: JSON
    return session.scalars(select(Frame).where(Frame.id.in_(named)).order_by(Frame.id).limit(limit)).all()


def query_frames(
    session: Session,
    *,
    night: str | None = None,
    imagetyp: str | None = None,
    filter: str | None = None,
    object: str | None = None,
    state: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    site: str | None = None,
) -> Sequence[Frame]:
    stmt = of_site(select(Frame), Frame.site, site)
    if night:
        stmt = stmt.where(Frame.night == night)
    if imagetyp:
        stmt = stmt.where(Frame.imagetyp == imagetyp.lower())
    if filter:
        stmt = stmt.where(func.lower(Frame.filter) == filter.lower())
    if object:
        stmt = stmt.where(func.lower(Frame.object) == object.lower())
    if state:
        stmt = stmt.where(Frame.state == state.lower())
    if since:
        stmt = stmt.where(Frame.date_obs >= since)
    stmt = stmt.order_by(Frame.date_obs.is_(None), Frame.date_obs, Frame.id)
    if limit:
        stmt = stmt.limit(limit)
    return session.scalars(stmt).all()


# ---------------------------------------------------------------------------------- frames
def frames_by_id(s: Session, ids: Sequence[int]) -> list[Frame]:
    """The frames with these ids that exist, by id."""
    if not ids:
        return []
    return list(s.scalars(select(Frame).where(Frame.id.in_(list(ids))).order_by(Frame.id)))


def source_file(s: Session, path: str) -> SourceFile | None:
    """The catalogue's record of a path in the incoming tree."""
    return s.scalar(select(SourceFile).where(SourceFile.path == path))


def frame_by_sha256(s: Session, sha256: str) -> Frame | None:
    return s.scalar(select(Frame).where(Frame.sha256 == sha256))


def same_exposure(s: Session, frame: Frame) -> list[Frame]:
    """Other catalogued lights of the same exposure (camera set-up, DATE-OBS to the microsecond,
    exposure time) that are still in the pipeline: copies whose bytes differ (a header edited
    in place, a plate-solved copy)."""
    if frame.imagetyp != "light" or frame.date_obs is None or frame.camera_key is None:
        return []
    return list(s.scalars(of_site(select(Frame).where(
        Frame.imagetyp == "light", Frame.camera_key == frame.camera_key, Frame.date_obs == frame.date_obs,
        Frame.exptime == frame.exptime, Frame.id != frame.id, Frame.state.notin_(EXIT_STATES)),
        Frame.site, frame.site)))


def known_product_paths(s: Session) -> set[str]:
    """Every product path a row references (masters, calibrated lights, stacks)."""
    known = set(s.scalars(select(Master.path)))
    known |= set(s.scalars(select(Calibrated.path)))
    known |= set(s.scalars(select(Stack.path)))
    return known


# ---------------------------------------------------------------------------------- masters
def fresh_calibration_frames(s: Session, *, site: str | None) -> Sequence[Frame]:
    """Calibration frames (of a site) not yet in any master."""
    return s.scalars(of_site(
        select(Frame).where(Frame.imagetyp.in_(CALIBRATION_TYPES), Frame.state == FrameState.INGESTED),
        Frame.site, site)).all()


def calibration_frames(s: Session, kind: str, night: str | None, *, site: str | None) -> Sequence[Frame]:
    """Usable calibration frames of a kind, night and site, in time order."""
    return s.scalars(of_site(
        select(Frame).where(
            Frame.imagetyp == kind,
            Frame.night == night,
            Frame.state.in_((FrameState.INGESTED, FrameState.USED)),
        ), Frame.site, site).order_by(Frame.date_obs, Frame.id)
    ).all()


def latest_master(s: Session, calib_key: str, night: str, *, site: str | None) -> Master | None:
    return s.scalar(of_site(
        select(Master).where(Master.calib_key == calib_key, Master.night == night), Master.site, site)
        .order_by(Master.version.desc()))


def masters_of_key(s: Session, calib_key: str, night: str, *, site: str | None) -> Sequence[Master]:
    """Every version of the masters of one calibration key, night and site (exactly that site)."""
    return s.scalars(select(Master).where(Master.calib_key == calib_key, Master.night == night,
                                          Master.site.is_not_distinct_from(site)).order_by(Master.version)).all()


def current_masters(s: Session, kind: str, camera_key: str | None, *,
                    sites: Sequence[str | None] | None = None) -> list[Master]:
    """The newest version of every master of a kind and camera set-up (one per site, key and
    night), of the given sites (all sites for ``None``)."""
    stmt = _of_sites(select(Master.site, Master.calib_key, Master.night, func.max(Master.version).label("v")).where(
        Master.kind == kind, Master.camera_key == camera_key, Master.retired.is_(None)), sites)
    newest = stmt.group_by(Master.site, Master.calib_key, Master.night).subquery()
    return list(s.scalars(
        select(Master).join(newest, and_(Master.calib_key == newest.c.calib_key,
                                         Master.night == newest.c.night,
                                         Master.version == newest.c.v,
                                         Master.site.is_not_distinct_from(newest.c.site)))
    ))


def _of_sites(stmt: S, sites: Sequence[str | None] | None, column: Any = Master.site) -> S:
    """``stmt`` restricted to the rows (masters, or ``column``'s) of ``sites`` (all for ``None``)."""
    if sites is None:
        return stmt
    named = [x for x in sites if x is not None]
    return stmt.where(or_(column.in_(named), column.is_(None)) if None in sites else column.in_(named))


def newest_masters(s: Session, *, site: str | None) -> list[Master]:
    """The newest version not retired of every master of a site (one per calibration key and
    night): those its lights may be calibrated with."""
    newest: dict[tuple[str, str], Master] = {}
    for m in s.scalars(of_site(select(Master).where(Master.retired.is_(None)), Master.site, site)):
        key = (m.calib_key, m.night)
        if key not in newest or m.version > newest[key].version:
            newest[key] = m
    return sorted(newest.values(), key=lambda m: m.id)


def masters_at(s: Session, path: str) -> Sequence[Master]:
    """The masters recorded at ``path`` (one, as a rule)."""
    return s.scalars(select(Master).where(Master.path == path).order_by(Master.id)).all()


def lost_master(s: Session, kind: str, camera_key: str | None, flat_filter: str | None = None, *,
                sites: Sequence[str | None] | None = None) -> Master | None:
    """The latest master of a kind and camera set-up (a flat's: of a filter, lower case) retired
    because its file was gone or changed (`MASTER_LOST`), of ``sites`` (all for ``None``)."""
    stmt = select(Master).where(Master.kind == kind, Master.camera_key == camera_key,
                                Master.retired.startswith(MASTER_LOST, autoescape=True))
    if flat_filter is not None:
        stmt = stmt.where(func.lower(Master.filter) == flat_filter)
    return s.scalar(_of_sites(stmt, sites).order_by(Master.created_at.desc(), Master.id.desc()).limit(1))


def lights_waiting_for(s: Session, camera_key: str | None, flat_filter: str | None = None, *,
                       site: str | None) -> bool:
    """Does any light of this camera set-up (and site) wait (for a flat: of this filter, lower case)?"""
    stmt = of_site(select(func.count()).select_from(Frame).where(
        Frame.imagetyp == "light", Frame.state == FrameState.WAITING, Frame.camera_key == camera_key
    ), Frame.site, site)
    if flat_filter is not None:
        stmt = stmt.where(func.lower(Frame.filter) == flat_filter)
    return bool(s.scalar(stmt))


# ---------------------------------------------------------------------------------- calibration
def waiting_light_ids(s: Session, *, site: str | None) -> list[int]:
    stmt = of_site(select(Frame.id).where(Frame.imagetyp == "light", Frame.state == FrameState.WAITING),
                   Frame.site, site)
    return list(s.scalars(stmt.order_by(Frame.date_obs, Frame.id)))


def waiting_signature(s: Session, timed_out_before: datetime | None = None) -> tuple[int, datetime | None, int]:
    """What changes when any light starts, stops or is made to wait: (how many wait, the latest
    ``updated_at`` among them, how many of them were catalogued before ``timed_out_before``).
    One indexed aggregate, however many lights wait."""
    stmt = select(func.count(), func.max(Frame.updated_at),
                  func.sum(case((Frame.created_at <= timed_out_before, 1), else_=0))
                  if timed_out_before is not None else literal(0))
    n, latest, late = s.execute(stmt.where(Frame.imagetyp == "light", Frame.state == FrameState.WAITING)).one()
    return int(n), latest, int(late or 0)


def lights_served_by(s: Session, master: Master, span: timedelta, *, site: str | None) -> list[int]:
    """Calibrated lights (of a site) of the master's camera set-up within ``span`` of its middle,
    in time order."""
    stmt = of_site(select(Frame.id).where(
        Frame.imagetyp == "light", Frame.camera_key == master.camera_key,
        Frame.state.in_((FrameState.CALIBRATED, FrameState.STACKED, FrameState.REJECTED))), Frame.site, site)
    if master.date_mid is not None:
        stmt = stmt.where(or_(Frame.date_obs.is_(None),
                              Frame.date_obs.between(master.date_mid - span, master.date_mid + span)))
    return list(s.scalars(stmt.order_by(Frame.date_obs, Frame.id)))


def current_calibrated(s: Session, frame_id: int) -> Calibrated | None:
    return s.scalar(select(Calibrated).where(Calibrated.frame_id == frame_id, Calibrated.current))


def next_calibrated_version(s: Session, frame_id: int) -> int:
    return (s.scalar(select(func.max(Calibrated.version)).where(Calibrated.frame_id == frame_id)) or 0) + 1


def forget_current_calibrations(s: Session, night: str | None, *, site: str | None) -> list[int]:
    """Put the lights (of a night and site) back to waiting, their current products no longer
    current, so that each is calibrated again. Their ids."""
    stmt = of_site(select(Frame).where(Frame.imagetyp == "light", Frame.state.in_(
        (FrameState.CALIBRATED, FrameState.STACKED, FrameState.REJECTED, FrameState.WAITING))), Frame.site, site)
    if night:
        stmt = stmt.where(Frame.night == night)
    frames = s.scalars(stmt).all()
    for f in frames:
        for c in s.scalars(select(Calibrated).where(Calibrated.frame_id == f.id, Calibrated.current)):
            c.current = False
        f.state = FrameState.WAITING
    return [f.id for f in frames]


# ---------------------------------------------------------------------------------- stacking
def lights_of_night(s: Session, night: str | None, *, site: str | None) -> Sequence[Frame]:
    """The night's lights (of a site) still in the pipeline, in time order."""
    return s.scalars(of_site(
        select(Frame).where(Frame.imagetyp == "light", Frame.night == night,
                            Frame.state.notin_(EXIT_STATES)), Frame.site, site)
        .order_by(Frame.date_obs, Frame.id)
    ).all()


def nights_with_calibrated_lights(s: Session, *, site: str | None) -> list[str | None]:
    nights = set(s.scalars(of_site(select(Frame.night).where(Frame.imagetyp == "light",
                                                              Frame.state == FrameState.CALIBRATED),
                                   Frame.site, site)))
    return sorted(nights, key=str)


def group_frames(s: Session, group_key: str, *, site: str | None) -> Sequence[Frame]:
    """The calibrated, stacked or rejected lights of a stack group (of a site), in time order."""
    return s.scalars(of_site(select(Frame).where(
        Frame.group_key == group_key,
        Frame.state.in_((FrameState.CALIBRATED, FrameState.STACKED, FrameState.REJECTED))), Frame.site, site)
        .order_by(Frame.date_obs, Frame.id)).all()


def latest_stack(s: Session, group_key: str, *, site: str | None) -> Stack | None:
    return s.scalar(of_site(select(Stack).where(Stack.group_key == group_key), Stack.site, site)
                    .order_by(Stack.version.desc()))


# ---------------------------------------------------------------------------------- morning reads (CLI)
def product_counts(s: Session, *, site: str | None = None) -> dict[str, int]:
    """How many masters (all versions), current calibrated lights, and stacks (current, all) (of ``site``)."""
    calibrated = select(func.count()).select_from(Calibrated).where(Calibrated.current)
    if site is not None:
        calibrated = calibrated.join(Frame, Frame.id == Calibrated.frame_id).where(Frame.site == site)
    stacks = of_site(select(func.count()).select_from(Stack), Stack.site, site)
    return {
        "masters": s.scalar(of_site(select(func.count()).select_from(Master), Master.site, site)) or 0,
        "calibrated": s.scalar(calibrated) or 0,
        "stacks": s.scalar(stacks.where(Stack.current)) or 0,
        "stacks_all": s.scalar(stacks) or 0,
    }


def frames_in_state(s: Session, state: FrameState, *, site: str | None = None) -> list[tuple[int, str, str | None]]:
    """(id, path, reason) of every frame in a state (of ``site``)."""
    rows = s.execute(of_site(select(Frame.id, Frame.path, Frame.state_reason).where(Frame.state == state),
                             Frame.site, site)).all()
    return [(fid, path, reason) for fid, path, reason in rows]


def calibrated_versions(s: Session, frame_id: int) -> Sequence[Calibrated]:
    """Every calibrated product of a light, oldest version first."""
    return s.scalars(select(Calibrated).where(Calibrated.frame_id == frame_id).order_by(Calibrated.version)).all()


def product_by_path(s: Session, path: str) -> Master | Stack | Calibrated | None:
    """The master, stack or calibrated product written at ``path``."""
    master = s.scalar(select(Master).where(Master.path == path))
    if master is not None:
        return master
    stack = s.scalar(select(Stack).where(Stack.path == path))
    if stack is not None:
        return stack
    return s.scalar(select(Calibrated).where(Calibrated.path == path))


def query_masters(s: Session, *, kind: str | None = None, night: str | None = None, filter: str | None = None,
                  exptime: float | None = None, site: str | None = None) -> Sequence[Master]:
    stmt = of_site(select(Master), Master.site, site)
    if kind:
        stmt = stmt.where(Master.kind == kind)
    if night:
        stmt = stmt.where(Master.night == night)
    if filter:
        stmt = stmt.where(func.lower(Master.filter) == filter.lower())
    if exptime is not None:
        stmt = stmt.where(func.abs(Master.exptime - exptime) < 1e-3)
    return s.scalars(stmt.order_by(Master.night, Master.kind, Master.id)).all()


def query_stacks(s: Session, *, night: str | None = None, target: str | None = None, filter: str | None = None,
                 all_versions: bool = False, site: str | None = None) -> Sequence[Stack]:
    stmt = of_site(select(Stack), Stack.site, site)
    if night:
        stmt = stmt.where(Stack.night == night)
    if target:
        stmt = stmt.where(func.lower(Stack.target) == target.lower())
    if filter:
        stmt = stmt.where(func.lower(Stack.filter) == filter.lower())
    if not all_versions:
        stmt = stmt.where(Stack.current)
    return s.scalars(stmt.order_by(Stack.night, Stack.target, Stack.id)).all()


def night_type_counts(s: Session, *, site: str | None = None) -> list[tuple[str | None, str | None, str, int]]:
    """(night, site, image type, number of frames) for every night, site and type (of one site);
    files that could not be read at all have no night and are left out."""
    rows = s.execute(of_site(select(Frame.night, Frame.site, Frame.imagetyp, func.count())
                             .where(Frame.sha256.is_not(None)), Frame.site, site)
                     .group_by(Frame.night, Frame.site, Frame.imagetyp)).all()
    return [(night, where, typ, n) for night, where, typ, n in rows]


def frames_to_retry(s: Session, state: FrameState, night: str | None = None, *,
                    site: str | None = None) -> Sequence[Frame]:
    """Frames in ``state`` (of a night and site) that ``ccdwatch retry`` may give another try."""
    stmt = of_site(select(Frame).where(Frame.state == state), Frame.site, site)
    if night:
        stmt = stmt.where(Frame.night == night)
    return s.scalars(stmt.order_by(Frame.id)).all()


# ---------------------------------------------------------------------------------- reclassification
def frames_to_reclassify(s: Session, night: str | None = None, *, site: str | None = None,
                         unless_fingerprint: str | None = None) -> Sequence[Frame]:
    """Every frame that was read (has content), of a night (and site) or all; with
    ``unless_fingerprint``, only those whose classification record holds another rules
    fingerprint (or none), selected by the database: a start-up with unchanged rules loads no frame."""
    stmt = of_site(select(Frame).where(Frame.sha256.is_not(None)), Frame.site, site)
    if unless_fingerprint is not None:
        stmt = stmt.where(Frame.classification["fingerprint"].as_string().is_distinct_from(unless_fingerprint))
    if night:
        stmt = stmt.where(Frame.night == night)
    return s.scalars(stmt.order_by(Frame.id)).all()


def masters_with_inputs(s: Session, frame_ids: Sequence[int]) -> Sequence[Master]:
    """Every master (any version) that combined one of these frames (no DISTINCT over the rows:
    PostgreSQL has no equality for their JSON column)."""
    combined = select(MasterInput.master_id).where(MasterInput.frame_id.in_(list(frame_ids)))
    return s.scalars(select(Master).where(Master.id.in_(combined)).order_by(Master.id)).all()


def masters_built_on(s: Session, master_ids: Sequence[int]) -> Sequence[Master]:
    """Masters whose bias or dark was one of these."""
    ids = list(master_ids)
    return s.scalars(select(Master).where(or_(Master.bias_id.in_(ids), Master.dark_id.in_(ids)))
                     .order_by(Master.id)).all()


def lights_calibrated_with(s: Session, master_ids: Sequence[int]) -> Sequence[Frame]:
    """Lights whose current calibrated product used one of these masters."""
    ids = list(master_ids)
    if not ids:
        return []
    return s.scalars(select(Frame).join(Calibrated, Calibrated.frame_id == Frame.id).where(
        Calibrated.current, or_(Calibrated.bias_id.in_(ids), Calibrated.dark_id.in_(ids),
                                Calibrated.flat_id.in_(ids))).order_by(Frame.id)).all()


def current_stacks_with_members(s: Session, frame_ids: Sequence[int]) -> Sequence[Stack]:
    members = select(StackMember.stack_id).where(StackMember.frame_id.in_(list(frame_ids)))
    return s.scalars(select(Stack).where(Stack.current, Stack.id.in_(members)).order_by(Stack.id)).all()


def frames_with_classification(s: Session, *, site: str | None = None) -> Sequence[Frame]:
    """Every frame that was read (of a site), with how it was classified (advice on unused frames)."""
    return s.scalars(of_site(select(Frame).where(Frame.sha256.is_not(None)), Frame.site, site)
                     .order_by(Frame.id)).all()


def calibration_frames_rejected(s: Session, kind: str, camera_key: str | None, flat_filter: str | None, *,
                                sites: Sequence[str | None] | None = None) -> tuple[int, str | None]:
    """Calibration frames of a kind and camera set-up (for flats: filter, lower case; of ``sites``,
    or any) rejected from their master (a flat's level), and the latest one's reason."""
    stmt = _of_sites(select(Frame).where(Frame.imagetyp == kind, Frame.camera_key == camera_key,
                                         Frame.state == FrameState.REJECTED), sites, Frame.site)
    if flat_filter is not None:
        stmt = stmt.where(func.lower(Frame.filter) == flat_filter)
    n = s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    latest = s.scalar(stmt.order_by(Frame.updated_at.desc(), Frame.id.desc()).limit(1)) if n else None
    return n, latest.state_reason if latest is not None else None


def calibration_frames_waiting(s: Session, kind: str, camera_key: str | None, flat_filter: str | None,
                               exptime: float | None = None, *, sites: Sequence[str | None] | None = None) -> int:
    """Calibration frames of a kind and camera set-up (for flats: filter, lower case; with
    ``exptime``: of that exposure, to a millisecond; of ``sites``, or any) that are in no usable
    master yet."""
    stmt = _of_sites(select(func.count()).select_from(Frame).where(
        Frame.imagetyp == kind, Frame.camera_key == camera_key, Frame.state == FrameState.INGESTED), sites, Frame.site)
    if flat_filter is not None:
        stmt = stmt.where(func.lower(Frame.filter) == flat_filter)
    if exptime is not None:
        stmt = stmt.where(Frame.exptime.between(exptime - 1e-3, exptime + 1e-3))
    return s.scalar(stmt) or 0
