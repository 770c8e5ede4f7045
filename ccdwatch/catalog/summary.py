"""Named queries for a one-line summary of a night: which night a directory's lights were filed
under, and how many frames, masters and stacks that night has (``ccdwatch demo`` uses them)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccdwatch.models import Frame, Master, SourceFile, Stack

__all__ = ["current_stack_count", "latest_light_night", "master_count", "night_state_counts"]


def latest_light_night(session: Session, prefix: str) -> str | None:
    """The latest night of the light frames seen under a path starting with ``prefix``.

    Parameters
    ----------
    session : Session
        A catalogue session.
    prefix : str
        Path prefix of the source files (a directory followed by the path separator).

    Returns
    -------
    str or None
        Night label, None when no such light has a night.
    """
    nights = session.scalars(select(Frame.night).join(SourceFile, SourceFile.frame_id == Frame.id)
                             .where(SourceFile.path.startswith(prefix), Frame.imagetyp == "light")
                             .distinct()).all()
    return max((n for n in nights if n), default=None)


def night_state_counts(session: Session, night: str) -> dict[str, int]:
    """Number of frames of ``night`` in each state, by state."""
    return dict(session.execute(select(Frame.state, func.count()).where(Frame.night == night)
                                .group_by(Frame.state)).all())


def master_count(session: Session, night: str) -> int:
    """Number of calibration sets (distinct calibration keys) with a master made for ``night``."""
    return session.scalar(select(func.count(func.distinct(Master.calib_key)))
                          .where(Master.night == night)) or 0


def current_stack_count(session: Session, night: str) -> int:
    """Number of current stacks of ``night``."""
    return session.scalar(select(func.count()).select_from(Stack)
                          .where(Stack.night == night, Stack.current)) or 0
