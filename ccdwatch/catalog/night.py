"""What the night report reads from the catalogue: the queries behind :mod:`ccdwatch.report`.

Each function runs one statement in the caller's session and returns ORM rows or plain values;
turning them into the report's records is :func:`ccdwatch.report.collect`'s job. The orderings
are part of the report's contract (the page lists rows in the order these return them).
``site`` restricts a query to one telescope's rows of a shared catalogue (None: every site).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccdwatch.catalog.queries import of_site
from ccdwatch.models import Calibrated, Frame, Master, Stack

__all__ = [
    "current_calibrations",
    "current_stacks",
    "frame_count",
    "frame_paths",
    "latest_master_versions",
    "masters_by_id",
    "masters_of_night",
    "newest_night",
    "night_frames",
    "unlabelled_frames",
]


def newest_night(session: Session, *, imagetyp: str | None = None, site: str | None = None) -> str | None:
    """The largest night label of any frame (of ``imagetyp`` when given); None if there is none."""
    stmt = of_site(select(func.max(Frame.night)), Frame.site, site)
    if imagetyp is not None:
        stmt = stmt.where(Frame.imagetyp == imagetyp)
    return session.scalar(stmt)


def frame_count(session: Session, night: str, *, site: str | None = None) -> int:
    """How many frames carry the label ``night``."""
    return session.scalar(of_site(select(func.count()).select_from(Frame).where(Frame.night == night),
                                  Frame.site, site)) or 0


def night_frames(session: Session, night: str, *, site: str | None = None) -> Sequence[Frame]:
    """The frames labelled ``night``, by exposure start then id."""
    return session.scalars(of_site(select(Frame).where(Frame.night == night), Frame.site, site)
                           .order_by(Frame.date_obs, Frame.id)).all()


def unlabelled_frames(session: Session, states: Collection[str], created_from: datetime,
                      created_to: datetime, *, site: str | None = None) -> Sequence[Frame]:
    """Frames without a night in one of ``states``, catalogued between the two times (inclusive, naive UTC),
    by catalogue time then id."""
    return session.scalars(of_site(select(Frame).where(
        Frame.night.is_(None), Frame.state.in_(states), Frame.created_at.between(created_from, created_to),
    ), Frame.site, site).order_by(Frame.created_at, Frame.id)).all()


def current_calibrations(session: Session, frame_ids: Collection[int]) -> Sequence[Calibrated]:
    """The current calibrated version of each of ``frame_ids`` that has one."""
    return session.scalars(select(Calibrated).where(Calibrated.frame_id.in_(frame_ids), Calibrated.current)).all()


def masters_of_night(session: Session, night: str, *, site: str | None = None) -> Sequence[Master]:
    """Every version of every master built from the frames of ``night``."""
    return session.scalars(of_site(select(Master).where(Master.night == night), Master.site, site)).all()


def masters_by_id(session: Session, ids: Collection[int]) -> Sequence[Master]:
    """The masters with these ids (in no particular order)."""
    return session.scalars(select(Master).where(Master.id.in_(ids))).all()


def latest_master_versions(session: Session,
                           calib_keys: Collection[str]) -> dict[tuple[str | None, str, str], int]:
    """The highest version of each (site, calibration key, night) among the masters of ``calib_keys``
    (versions count per site: two telescopes of one camera model share calibration keys)."""
    return {(site, key, n): v for site, key, n, v in session.execute(
        select(Master.site, Master.calib_key, Master.night, func.max(Master.version))
        .where(Master.calib_key.in_(calib_keys))
        .group_by(Master.site, Master.calib_key, Master.night))}


def frame_paths(session: Session, ids: Collection[int]) -> dict[int, str]:
    """The catalogued path of each of the frames ``ids``."""
    return dict(session.execute(select(Frame.id, Frame.path).where(Frame.id.in_(ids))).all())


def current_stacks(session: Session, night: str, *, site: str | None = None) -> Sequence[Stack]:
    """The current version of each stack of ``night``, by id."""
    return session.scalars(of_site(select(Stack).where(Stack.night == night, Stack.current), Stack.site, site)
                           .order_by(Stack.id)).all()
