"""The night's data: the report's plain records, read from the catalogue in one transaction.

:func:`collect` turns the catalogue's rows (fetched by :mod:`ccdwatch.catalog.night`, the only
place that talks SQL for the report) into records that need no session: frames, problem files,
masters, calibrated lights and the stack groups of one night.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from ccdwatch.advice import Advice, unused_frames
from ccdwatch.catalog import night as queries
from ccdwatch.catalog import utcnow
from ccdwatch.keys import GroupKey
from ccdwatch.models import Frame, FrameState, Master, Stack

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


@dataclass
class FrameRow:
    """One catalogued frame, as the report shows it (plain values, no session needed)."""

    id: int
    name: str
    paths: list[str]
    sha256: str | None
    imagetyp: str
    state: str
    state_reason: str | None
    date_obs: datetime | None
    exptime: float | None
    filter: str | None
    object: str | None
    group_key: str | None
    ccd_temp: float | None
    set_temp: float | None
    n_stars: int | None
    fwhm: float | None
    elongation: float | None
    sky: float | None
    sky_noise: float | None
    saturated_fraction: float | None
    instrument: str | None
    telescope: str | None
    header_warnings: list[str]
    created_at: datetime | None
    cosmic_rays: int | None = None  # hits masked in the current calibrated product
    site: str | None = None


@dataclass
class MasterRow:
    """A master calibration relevant to the night (built from its frames, or used by its lights)."""

    id: int
    kind: str
    night: str
    version: int
    latest: bool
    exptime: float | None
    filter: str | None
    ccd_temp: float | None
    n_frames: int
    method: str
    mean: float | None
    noise: float | None
    hot_pixels: int | None
    date_mid: datetime | None
    bias_subtracted: bool
    dark_subtracted: bool
    path: str
    preview_path: str | None
    inputs: list[str]
    used_by: int = 0
    gain_check: tuple[str, str] | None = None
    """A flat's: (level, message) when its measured gain disagrees with its lights' (`ccdwatch.detector.gain_check`)."""


@dataclass
class CalibratedRow:
    frame_id: int
    path: str
    bias_id: int | None
    dark_id: int | None
    flat_id: int | None
    dark_scale: float | None
    partial: bool
    missing: str | None


@dataclass
class MemberRow:
    frame_id: int
    used: bool
    reason: str | None


@dataclass
class StackRow:
    id: int
    group_key: str
    target: str
    filter: str | None
    exptime: float | None
    version: int
    n_used: int
    n_rejected: int
    total_exposure: float
    reference_frame_id: int | None
    method: str
    path: str
    preview_path: str | None
    members: list[MemberRow]
    site: str | None = None


@dataclass
class Group:
    """The lights of one stack group (target, filter, exposure, camera) and its current stack.

    ``key`` is the group key, prefixed with the site (``site|group key``) in a report of
    several sites: two telescopes with one camera model have the same group keys."""

    key: str
    target: str
    filter: str | None
    exptime: float | None
    frame_ids: list[int]
    stack: StackRow | None = None
    site: str | None = None  # set in a report of several sites


@dataclass
class NightData:
    """Everything the report of one night shows, read from the catalogue in one transaction."""

    night: str
    generated: datetime
    frames: dict[int, FrameRow]
    problems: list[FrameRow]
    masters: list[MasterRow]
    calibrated: dict[int, CalibratedRow]
    groups: list[Group]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the sites whose frames the report shows (one when filtered by site)
    sites: list[str] = field(default_factory=list)
    unused: list[Advice] = field(default_factory=list)
    """The night's unclassified and ignored frames grouped by reason, with the rule that would use them."""

    def of_type(self, imagetyp: str) -> list[FrameRow]:
        return [f for f in self.frames.values() if f.imagetyp == imagetyp]

    @property
    def lights(self) -> list[FrameRow]:
        return sorted(self.of_type("light"), key=lambda f: (f.date_obs is None, f.date_obs or datetime.min, f.id))

    def master(self, master_id: int | None) -> MasterRow | None:
        return next((m for m in self.masters if m.id == master_id), None)


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
