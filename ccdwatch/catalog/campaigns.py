"""What ``ccdwatch reprocess`` asks of the catalogue: its campaign (when it started, so that a rerun
continues it), the nights it covers, and the masters, lights and groups of those nights."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ccdwatch.catalog.db import utcnow
from ccdwatch.catalog.queries import CALIBRATION_TYPES, of_site
from ccdwatch.models import Campaign, Frame, FrameState

__all__ = ["campaign_start", "finish_campaign", "lights_to_redo", "master_frames", "nights_selected"]


def campaign_start(s: Session, site: str | None, selection: str) -> tuple[int, datetime, bool]:
    """The unfinished campaign of ``selection`` on ``site``, or a new one.

    Returns
    -------
    id, started_at, resumed
        The campaign's id; its start (naive UTC): products made before it are made again;
        whether an interrupted campaign is being continued.
    """
    row = s.scalar(select(Campaign).where(Campaign.site == site, Campaign.selection == selection,
                                          Campaign.finished_at.is_(None)).order_by(Campaign.id.desc()))
    if row is not None:
        return row.id, row.started_at, True
    row = Campaign(site=site, selection=selection, started_at=utcnow())
    s.add(row)
    s.flush()
    return row.id, row.started_at, False


def finish_campaign(s: Session, campaign_id: int) -> None:
    row = s.get(Campaign, campaign_id)
    if row is not None:
        row.finished_at = utcnow()


def nights_selected(s: Session, site: str | None, *, night: str | None = None, since: str | None = None) -> list[str]:
    """This site's nights: one (``night``), those from ``since`` on, or all (neither given)."""
    stmt = of_site(select(Frame.night).where(Frame.night.is_not(None)), Frame.site, site).distinct()
    if night is not None:
        stmt = stmt.where(Frame.night == night)
    if since is not None:
        stmt = stmt.where(Frame.night >= since)
    return sorted(n for n in s.scalars(stmt) if n)


def master_frames(s: Session, site: str | None, nights: Sequence[str]) -> Sequence[Frame]:
    """The calibration frames of these nights that masters are made of (ingested or used)."""
    return s.scalars(of_site(select(Frame).where(
        Frame.imagetyp.in_(CALIBRATION_TYPES), Frame.night.in_(list(nights)),
        Frame.state.in_((FrameState.INGESTED, FrameState.USED))), Frame.site, site)).all()


def lights_to_redo(s: Session, site: str | None, nights: Sequence[str]) -> list[int]:
    """The lights of these nights still in the pipeline (waiting, calibrated, stacked or
    rejected), in time order."""
    states = (FrameState.WAITING, FrameState.CALIBRATED, FrameState.STACKED, FrameState.REJECTED)
    return list(s.scalars(of_site(select(Frame.id).where(
        Frame.imagetyp == "light", Frame.night.in_(list(nights)), Frame.state.in_(states)), Frame.site, site)
        .order_by(Frame.date_obs, Frame.id)))
