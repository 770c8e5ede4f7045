"""Frame state changes that raw files on disk force on the catalogue.

Raw files can vanish or change after ingest: the observer deletes a bad flat, a plate solver
writes WCS into a header in place. A frame whose file is gone is ``missing`` (never ``failed``:
nothing is wrong with it) and comes back by itself when the file returns; a path whose content
changes holds the same exposure, so the old frame is ``superseded`` by the new one (history
kept), and whatever used it is redone from the new content.
"""

from __future__ import annotations

import logging
import os

from sqlalchemy.orm import Session

from ccdwatch.catalog import log_event, utcnow
from ccdwatch.catalog.queries import current_calibrated, same_exposure
from ccdwatch.models import EXIT_STATES, Frame, FrameState

logger = logging.getLogger(__name__)


def raw_paths(frame: Frame) -> tuple[str, ...]:
    """Every path the frame's content was seen under (the first one when none is recorded)."""
    return tuple(sf.path for sf in frame.files) or (frame.path,)


def raw_name(frame: Frame) -> str:
    """The frame's file name for people (products' names, cards and tables): the first, in
    sorted order, of the names its content was seen under, so that it does not depend on which
    copy arrived first."""
    return min(os.path.basename(p) for p in raw_paths(frame))


def content_hash(frame: Frame) -> str:
    """The sha256 of a catalogued frame's raw content (only quarantined files have none)."""
    if frame.sha256 is None:
        raise ValueError(f"frame {frame.id} has no content hash: it was never read successfully")
    return frame.sha256


def raw_present(frame: Frame) -> bool:
    """Does any of the frame's paths still exist (content is checked when it is read)?"""
    return any(os.path.lexists(p) for p in raw_paths(frame))


def mark_missing(s: Session, frame: Frame, why: str) -> None:
    """Take a frame whose raw file is gone out of the pipeline until the file returns."""
    if frame.state in (FrameState.MISSING, FrameState.SUPERSEDED):
        return
    frame.state, frame.state_reason, frame.updated_at = FrameState.MISSING, why, utcnow()
    log_event(s, frame, "missing", why)
    logger.warning("frame %d is missing: %s", frame.id, why)


def restore(s: Session, frame: Frame, path: str, replaced: Frame | None = None) -> None:
    """A missing frame's content is on disk again: back where it left the pipeline. So is a
    superseded one whose bytes are back at ``path`` in place of ``replaced``, the same exposure
    (a rewrite undone: a plate-solved copy replaced by its backup): ``replaced`` is superseded
    in turn (`path_rewritten`), and one of them goes on."""
    undone = (frame.state == FrameState.SUPERSEDED and replaced is not None and replaced is not frame
              and replaced.state not in EXIT_STATES and _same_exposure(frame, replaced))
    if frame.state != FrameState.MISSING and not undone:
        return
    if frame.imagetyp in ("bias", "dark", "flat"):
        state = FrameState.INGESTED  # the master planner takes it into a new version
    elif frame.imagetyp == "light":
        state = FrameState.WAITING  # calibrated again, or found to be calibrated already
    else:
        state = FrameState.UNCLASSIFIED
    frame.state, frame.state_reason, frame.updated_at = state, None, utcnow()
    log_event(s, frame, "returned", f"its content is on disk again at {os.path.basename(path)}")
    logger.info("frame %d is back (%s)", frame.id, path)


def supersede(s: Session, old: Frame, new: Frame, why: str) -> None:
    """``old`` is the same exposure as ``new`` with other bytes: only ``new`` goes on."""
    if old.state in (FrameState.SUPERSEDED,) or old is new:
        return
    old.state, old.state_reason, old.updated_at = FrameState.SUPERSEDED, f"superseded by frame {new.id}: {why}", \
        utcnow()
    log_event(s, old, "superseded", f"by frame {new.id}: {why}")
    log_event(s, new, "supersedes", f"frame {old.id}: {why}")
    logger.info("frame %d supersedes frame %d: %s", new.id, old.id, why)


def path_rewritten(s: Session, old: Frame, new: Frame, path: str) -> None:
    """``path`` held ``old``'s content and now holds ``new``'s."""
    if old.state in EXIT_STATES or old.sha256 is None:
        return
    if _same_exposure(old, new):
        supersede(s, old, new, f"new content at {os.path.basename(path)} (same exposure)")
    elif not raw_present(old) or all(p == path for p in raw_paths(old)):
        keeps = " (its calibrated product stays)" if current_calibrated(s, old.id) is not None else ""
        mark_missing(s, old, f"{os.path.basename(path)} now holds another exposure{keeps}")


def _same_exposure(a: Frame, b: Frame) -> bool:
    """Two contents of one exposure: the same camera and DATE-OBS."""
    return a.camera_key == b.camera_key and a.date_obs is not None and a.date_obs == b.date_obs


def dedupe_exposure(s: Session, new: Frame) -> None:
    """A light catalogued twice with different bytes (same camera, DATE-OBS and exposure):
    the newer copy goes on, so that a stack counts the exposure once."""
    for old in same_exposure(s, new):
        supersede(s, old, new, "the same exposure (camera, DATE-OBS, exposure time) with other bytes")


def retry(s: Session, frame: Frame) -> None:
    """Give a failed, missing or quarantined frame another try, from where it entered."""
    was = frame.state
    if frame.sha256 is None:  # a file that could not be read: forget its signature, the next scan reads it
        for sf in frame.files:
            sf.size = sf.mtime_ns = sf.inode = None
    elif frame.imagetyp in ("bias", "dark", "flat"):
        frame.state = FrameState.INGESTED
    elif frame.imagetyp == "light":
        frame.state = FrameState.WAITING
    else:
        frame.state = FrameState.UNCLASSIFIED
    frame.tries, frame.last_error, frame.updated_at = 0, None, utcnow()
    if frame.state != FrameState.QUARANTINED:
        frame.state_reason = None
    log_event(s, frame, "retry", f"reset from {was} by `ccdwatch retry`")
