"""Masters that vanish or change on disk after they were catalogued.

Every light of a night reads its masters back. A user tidying the products directory deletes
one, or a bad sector changes it: the job that reads it says so (`ccdwatch.fitsio.ProductGone`:
no fault of the job, nobody is charged), and the master is retired with the reason
(`MASTER_LOST`), its inputs back to the planner, which makes it again from their raw frames as a
new version; its lights wait for it meanwhile, and say why when its raw frames are gone too
(`ccdwatch.pipeline.selection.Masters.progress`). At start-up every current master of the site
is looked for on disk (`check_masters`: a stat each, no hash).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.orm import Session

from ccdwatch.catalog import log_event, utcnow
from ccdwatch.catalog.queries import frames_by_id, masters_at, newest_masters
from ccdwatch.models import MASTER_LOST, FrameState, Master
from ccdwatch.pipeline.context import Context

logger = logging.getLogger(__name__)


def retire(s: Session, master: Master, detail: str) -> None:
    """Retire ``master``, whose file is not as catalogued (``detail`` says how); its inputs go
    back to the planner, which makes it again from their raw frames (those still on disk)."""
    if master.retired is not None:
        return
    master.retired = f"{MASTER_LOST}: {detail}"
    logger.warning("master %s #%d (night %s v%d) retired: %s; made again from its raw frames", master.kind,
                   master.id, master.night, master.version, detail)
    for frame in frames_by_id(s, [i.frame_id for i in master.inputs]):
        if frame.state == FrameState.USED:
            frame.state, frame.updated_at = FrameState.INGESTED, utcnow()
            log_event(s, frame, "recombine", f"master {master.kind} #{master.id} retired: {detail}")


def product_gone(ctx: Context, path: str, detail: str) -> tuple[bool, list[str]]:
    """A job found the product at ``path`` gone or changed: the master of this site recorded there
    is retired. Returns whether one was, and the other sites whose master is recorded there: a
    master borrowed from another site (``site.share_masters_from``) that this one cannot read
    (its products root not mounted here) is that site's to judge, not this one's to retire (its
    frames would go back to be combined again, by a daemon that reads it fine)."""
    with ctx.catalog.session() as s:
        masters = [m for m in masters_at(s, path) if m.retired is None]
        for master in masters:
            if master.site == ctx.site:
                retire(s, master, detail)
        return any(m.site == ctx.site for m in masters), sorted({str(m.site) for m in masters if m.site != ctx.site})


def check_masters(ctx: Context) -> list[int]:
    """At start-up: retire the site's current masters (under its products root) whose file is
    gone, with a stat each (their content is checked when a job reads them). Their ids."""
    lost: list[int] = []
    with ctx.catalog.session() as s:
        for master in newest_masters(s, site=ctx.site):
            if not Path(master.path).is_relative_to(ctx.products):
                continue
            try:
                os.stat(master.path)
            except FileNotFoundError:
                retire(s, master, f"{master.path} is missing (found at start-up)")
                lost.append(master.id)
            except OSError:
                continue  # unreadable now, not known gone: the jobs that read it say what it is
    return lost
