"""The night's data: the report's plain records (`ccdwatch.report.rows`), read from the catalogue
in one transaction.

:func:`collect` turns the catalogue's rows (fetched by :mod:`ccdwatch.catalog.night`, the only
place that talks SQL for the report) into records that need no session: frames, problem files,
masters, calibrated lights and the stack groups of one night.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from ccdwatch.advice import unused_frames
from ccdwatch.catalog import night as queries
from ccdwatch.catalog import utcnow
from ccdwatch.keys import GroupKey
from ccdwatch.models import Frame, FrameState, Master, Stack
from ccdwatch.report.rows import CalibratedRow, FrameRow, Group, MasterRow, MemberRow, NightData, StackRow

__all__ = [
    "PROBLEM_WINDOW",
    "CalibratedRow",
    "FrameRow",
    "Group",
    "MasterRow",
    "MemberRow",
    "NightData",
    "StackRow",
    "collect",
    "latest_night",
]

#: Problem files without a night are shown in a night's report if ingested this close to it.
PROBLEM_WINDOW = timedelta(hours=1)
#: Frame states that make a file a problem file of the report.
PROBLEM_STATES = (FrameState.QUARANTINED, FrameState.FAILED, FrameState.MISSING, FrameState.UNCLASSIFIED)


def _frame_row(f: Frame) -> FrameRow:
    paths = [sf.path for sf in f.files] or [f.path]
    return FrameRow(
        id=f.id, name=Path(f.path).name, paths=paths, sha256=f.sha256, imagetyp=f.imagetyp, state=f.state,
        state_reason=f.state_reason, date_obs=f.date_obs, exptime=f.exptime, filter=f.filter, object=f.object,
        group_key=f.group_key, ccd_temp=f.ccd_temp, set_temp=f.set_temp, n_stars=f.n_stars, fwhm=f.fwhm,
        elongation=f.elongation, sky=f.sky, sky_noise=f.sky_noise, saturated_fraction=f.saturated_fraction,
        instrument=f.instrument, telescope=f.telescope, header_warnings=[str(w) for w in (f.header_warnings or [])],
        created_at=f.created_at, cosmic_rays=f.cosmic_rays, site=f.site,
    )


def latest_night(session: Session, *, site: str | None = None) -> str | None:
    """The most recent night label with any light (else any frame) in the catalogue (of ``site``)."""
    for imagetyp in ("light", None):
        night = queries.newest_night(session, imagetyp=imagetyp, site=site)
        if night:
            return night
    return None


def _problems(session: Session, frames: Sequence[Frame], rows: dict[int, FrameRow], *,
              site: str | None = None) -> list[FrameRow]:
    """The night's problem files, then those without a night catalogued within PROBLEM_WINDOW of its frames."""
    problems = [r for r in rows.values() if r.state in PROBLEM_STATES]
    created = [f.created_at for f in frames if f.created_at is not None]
    if created:
        lo, hi = min(created) - PROBLEM_WINDOW, max(created) + PROBLEM_WINDOW
        problems += [_frame_row(f) for f in queries.unlabelled_frames(session, PROBLEM_STATES, lo, hi, site=site)]
    return problems


def _calibrated(session: Session, light_ids: list[int]) -> dict[int, CalibratedRow]:
    calibrated: dict[int, CalibratedRow] = {}
    if light_ids:
        for c in queries.current_calibrations(session, light_ids):
            calibrated[c.frame_id] = CalibratedRow(
                frame_id=c.frame_id, path=c.path, bias_id=c.bias_id, dark_id=c.dark_id, flat_id=c.flat_id,
                dark_scale=c.dark_scale, partial=bool(c.partial), missing=c.missing)
    return calibrated


def _master_row(m: Master, *, latest: bool, names: dict[int, str], used_by: int) -> MasterRow:
    return MasterRow(
        id=m.id, kind=m.kind, night=m.night, version=m.version, latest=latest,
        exptime=m.exptime, filter=m.filter, ccd_temp=m.ccd_temp, n_frames=m.n_frames, method=m.method,
        mean=m.mean, noise=m.noise, hot_pixels=m.hot_pixels, date_mid=m.date_mid,
        bias_subtracted=bool(m.bias_subtracted), dark_subtracted=bool(m.dark_subtracted), path=m.path,
        preview_path=m.preview_path,
        inputs=sorted(Path(names.get(i.frame_id, f"frame {i.frame_id}")).name for i in m.inputs),
        used_by=used_by, gain_check=_gain_check(m.params))


def _gain_check(params: dict | None) -> tuple[str, str] | None:
    check = (params or {}).get("gain_check")
    if isinstance(check, dict) and isinstance(check.get("message"), str):
        return str(check.get("level", "warning")), check["message"]
    return None


def _masters(session: Session, night: str, calibrated: Iterable[CalibratedRow], *,
             site: str | None = None) -> list[MasterRow]:
    """The newest version of each master built from the night, and every master its lights used."""
    used = Counter(mid for c in calibrated for mid in (c.bias_id, c.dark_id, c.flat_id) if mid is not None)
    newest: dict[tuple[str | None, str], Master] = {}
    for m in queries.masters_of_night(session, night, site=site):
        if (m.site, m.calib_key) not in newest or m.version > newest[(m.site, m.calib_key)].version:
            newest[(m.site, m.calib_key)] = m
    wanted = {m.id for m in newest.values()} | set(used)
    if not wanted:
        return []
    found = queries.masters_by_id(session, wanted)
    latest_version = queries.latest_master_versions(session, {m.calib_key for m in found})
    input_ids = {i.frame_id for m in found for i in m.inputs}
    names = queries.frame_paths(session, input_ids) if input_ids else {}
    order = {"bias": 0, "dark": 1, "flat": 2}
    return [_master_row(m, latest=latest_version.get((m.site, m.calib_key, m.night), m.version) == m.version,
                        names=names, used_by=used.get(m.id, 0))
            for m in sorted(found, key=lambda m: (order.get(m.kind, 9), m.night, m.filter or "", m.id))]


def _stack_row(s: Stack) -> StackRow:
    return StackRow(
        id=s.id, group_key=s.group_key, target=s.target, filter=s.filter, exptime=s.exptime, version=s.version,
        n_used=s.n_used, n_rejected=s.n_rejected, total_exposure=s.total_exposure,
        reference_frame_id=s.reference_frame_id, method=s.method, path=s.path, preview_path=s.preview_path,
        members=[MemberRow(frame_id=m.frame_id, used=bool(m.used), reason=m.reason)
                 for m in sorted(s.members, key=lambda m: m.frame_id)], site=s.site)


def _groups(night: str, rows: dict[int, FrameRow], stack_rows: dict[str, StackRow], *, by_site: bool) -> list[Group]:
    """The night's stack groups: those of its usable lights (by time), then stacks without such lights;
    with ``by_site`` (a report of several sites) one per site and group key."""
    groups: dict[str, Group] = {}
    for r in sorted(rows.values(), key=lambda r: (r.date_obs is None, r.date_obs or datetime.min, r.id)):
        if r.imagetyp != "light" or r.state in PROBLEM_STATES:
            continue
        key = r.group_key or f"{night}|{r.object or '(no target yet)'}|{r.filter or '-'}|{r.exptime or 0:g}s|ungrouped"
        try:
            target = GroupKey.parse(key).target
        except ValueError:
            target = r.object or "?"
        key = f"{r.site}|{key}" if by_site else key
        g = groups.setdefault(key, Group(key=key, target=target, filter=r.filter, exptime=r.exptime, frame_ids=[],
                                         site=r.site if by_site else None))
        g.frame_ids.append(r.id)
    for key, st in stack_rows.items():
        g = groups.setdefault(key, Group(key=key, target=st.target, filter=st.filter, exptime=st.exptime,
                                         frame_ids=[m.frame_id for m in st.members],
                                         site=st.site if by_site else None))
        g.stack = st
    return list(groups.values())


def collect(session: Session, night: str, *, site: str | None = None) -> NightData:
    """Read what the report of ``night`` shows from the catalogue into plain records.

    Frames are those labelled with the night; problem files (quarantined, failed, unclassified)
    without a night label are included when they were catalogued within an hour of the night's
    frames. Masters are the newest version of each master built from the night's frames plus
    every master (of any night) that calibrated one of its lights. With ``site``, only that
    telescope's frames, masters and stacks (several may share the catalogue).
    """
    frames = queries.night_frames(session, night, site=site)
    rows = {f.id: _frame_row(f) for f in frames}
    problems = _problems(session, frames, rows, site=site)
    calibrated = _calibrated(session, [r.id for r in rows.values() if r.imagetyp == "light"])
    masters = _masters(session, night, calibrated.values(), site=site)
    sites = sorted({r.site for r in rows.values() if r.site is not None} | ({site} if site else set()))
    by_site = len(sites) > 1
    stack_rows = {f"{s.site}|{s.group_key}" if by_site else s.group_key: _stack_row(s)
                  for s in queries.current_stacks(session, night, site=site)}
    return NightData(night=night, generated=utcnow(), frames=rows, problems=problems, masters=masters,
                     calibrated=calibrated, groups=_groups(night, rows, stack_rows, by_site=by_site), sites=sites,
                     unused=unused_frames(frames))
