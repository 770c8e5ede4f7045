"""The night report: one self-contained HTML page for the morning after.

``build_report(cfg, catalog, night)`` writes ``<products>/reports/<night>/index.html`` with its
images in ``img/`` beside it (the directory can be copied or served as it is): a summary, the
warnings worth reading first, the quality of every light over the night, each stack with its
members and a raw / calibrated / stacked comparison, the masters, calibration coverage, and the
files that were quarantined.

The work is split the usual way: :func:`collect` reads the catalogue into plain records inside one
read transaction, :func:`night_warnings` judges them (pure), :func:`quality_plot` and the preview
helpers draw PNGs, and :func:`render_html` turns records into text (pure). Every string that
comes from a FITS header or a file name is escaped with :func:`html.escape` before it reaches
the page. The page and every image are written atomically (temp name, fsync, rename), so a
browser reloading during a refresh never sees half a file.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ccdwatch import __version__
from ccdwatch.catalog import Catalog, utcnow
from ccdwatch.config import Config
from ccdwatch.fitsio import write_bytes_atomic
from ccdwatch.models import Calibrated, Frame, Master, Stack

logger = logging.getLogger(__name__)

__all__ = [
    "FrameRow",
    "MasterRow",
    "NightData",
    "StackRow",
    "build_report",
    "collect",
    "default_report_dir",
    "latest_night",
    "night_warnings",
    "quality_figure",
    "quality_plot",
    "refresh",
    "render_html",
]

#: A master flat further than this from the lights it calibrated earns a warning, days.
FLAT_WARN_DAYS = 1.0
#: A master bias or dark further than this from its lights earns a warning, days.
DARK_WARN_DAYS = 7.0
#: Lights whose CCD temperature differs from their master dark's by more than this, degC.
DARK_TEMP_WARN = 1.0
#: Spread of the lights' CCD temperature over the night above which the cooler is suspect, degC.
TEMP_DRIFT_WARN = 1.0
#: Fraction of a stack group rejected above which the stack earns a warning.
REJECT_WARN_FRACTION = 0.25
#: Problem files without a night are shown in a night's report if ingested this close to it.
PROBLEM_WINDOW = timedelta(hours=1)

IMG_DIR = "img"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ============================================================================ records
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


@dataclass
class Group:
    """The lights of one stack group (target, filter, exposure, camera) and its current stack."""

    key: str
    target: str
    filter: str | None
    exptime: float | None
    frame_ids: list[int]
    stack: StackRow | None = None


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
        created_at=f.created_at,
    )


def latest_night(session: Session) -> str | None:
    """The most recent night label with any light (else any frame) in the catalogue."""
    for stmt in (select(func.max(Frame.night)).where(Frame.imagetyp == "light"), select(func.max(Frame.night))):
        night = session.scalar(stmt)
        if night:
            return night
    return None


def collect(session: Session, night: str) -> NightData:
    """Read what the report of ``night`` shows from the catalogue into plain records.

    Frames are those labelled with the night; problem files (quarantined, failed, unclassified)
    without a night label are included when they were catalogued within an hour of the night's
    frames. Masters are the newest version of each master built from the night's frames plus
    every master (of any night) that calibrated one of its lights.
    """
    frames = session.scalars(select(Frame).where(Frame.night == night).order_by(Frame.date_obs, Frame.id)).all()
    rows = {f.id: _frame_row(f) for f in frames}
    problem_states = ("quarantined", "failed", "unclassified")
    problems = [r for r in rows.values() if r.state in problem_states]
    created = [f.created_at for f in frames if f.created_at is not None]
    if created:
        lo, hi = min(created) - PROBLEM_WINDOW, max(created) + PROBLEM_WINDOW
        orphans = session.scalars(select(Frame).where(
            Frame.night.is_(None), Frame.state.in_(problem_states), Frame.created_at.between(lo, hi),
        ).order_by(Frame.created_at, Frame.id)).all()
        problems += [_frame_row(f) for f in orphans]

    light_ids = [r.id for r in rows.values() if r.imagetyp == "light"]
    calibrated: dict[int, CalibratedRow] = {}
    if light_ids:
        for c in session.scalars(select(Calibrated).where(Calibrated.frame_id.in_(light_ids), Calibrated.current)):
            calibrated[c.frame_id] = CalibratedRow(
                frame_id=c.frame_id, path=c.path, bias_id=c.bias_id, dark_id=c.dark_id, flat_id=c.flat_id,
                dark_scale=c.dark_scale, partial=bool(c.partial), missing=c.missing)

    used = Counter(mid for c in calibrated.values() for mid in (c.bias_id, c.dark_id, c.flat_id) if mid is not None)
    own = session.scalars(select(Master).where(Master.night == night)).all()
    newest: dict[str, Master] = {}
    for m in own:
        if m.calib_key not in newest or m.version > newest[m.calib_key].version:
            newest[m.calib_key] = m
    wanted = {m.id for m in newest.values()} | set(used)
    masters: list[MasterRow] = []
    if wanted:
        found = session.scalars(select(Master).where(Master.id.in_(wanted))).all()
        latest_version = {(key, n): v for key, n, v in session.execute(
            select(Master.calib_key, Master.night, func.max(Master.version))
            .where(Master.calib_key.in_({m.calib_key for m in found}))
            .group_by(Master.calib_key, Master.night))}
        input_ids = {i.frame_id for m in found for i in m.inputs}
        names = dict(session.execute(select(Frame.id, Frame.path).where(Frame.id.in_(input_ids))).all()) if input_ids else {}
        order = {"bias": 0, "dark": 1, "flat": 2}
        for m in sorted(found, key=lambda m: (order.get(m.kind, 9), m.night, m.filter or "", m.id)):
            masters.append(MasterRow(
                id=m.id, kind=m.kind, night=m.night, version=m.version,
                latest=latest_version.get((m.calib_key, m.night), m.version) == m.version,
                exptime=m.exptime, filter=m.filter, ccd_temp=m.ccd_temp, n_frames=m.n_frames, method=m.method,
                mean=m.mean, noise=m.noise, hot_pixels=m.hot_pixels, date_mid=m.date_mid,
                bias_subtracted=bool(m.bias_subtracted), dark_subtracted=bool(m.dark_subtracted), path=m.path,
                preview_path=m.preview_path,
                inputs=sorted(Path(names.get(i.frame_id, f"frame {i.frame_id}")).name for i in m.inputs),
                used_by=used.get(m.id, 0)))

    stacks = session.scalars(select(Stack).where(Stack.night == night, Stack.current).order_by(Stack.id)).all()
    stack_rows = {s.group_key: StackRow(
        id=s.id, group_key=s.group_key, target=s.target, filter=s.filter, exptime=s.exptime, version=s.version,
        n_used=s.n_used, n_rejected=s.n_rejected, total_exposure=s.total_exposure,
        reference_frame_id=s.reference_frame_id, method=s.method, path=s.path, preview_path=s.preview_path,
        members=[MemberRow(frame_id=m.frame_id, used=bool(m.used), reason=m.reason)
                 for m in sorted(s.members, key=lambda m: m.frame_id)]) for s in stacks}

    groups: dict[str, Group] = {}
    for r in sorted(rows.values(), key=lambda r: (r.date_obs is None, r.date_obs or datetime.min, r.id)):
        if r.imagetyp != "light" or r.state in problem_states:
            continue
        key = r.group_key or f"{night}|{r.object or '(no target yet)'}|{r.filter or '-'}|{r.exptime or 0:g}s|ungrouped"
        parts = key.split("|")
        target = parts[1] if len(parts) > 1 else (r.object or "?")
        g = groups.setdefault(key, Group(key=key, target=target, filter=r.filter, exptime=r.exptime, frame_ids=[]))
        g.frame_ids.append(r.id)
    for key, st in stack_rows.items():
        g = groups.setdefault(key, Group(key=key, target=st.target, filter=st.filter, exptime=st.exptime,
                                         frame_ids=[m.frame_id for m in st.members]))
        g.stack = st
    data = NightData(night=night, generated=utcnow(), frames=rows, problems=problems, masters=masters,
                     calibrated=calibrated, groups=list(groups.values()))
    return data


# ============================================================================ judgement (pure)
def _days(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return abs((a - b).total_seconds()) / 86400.0


def night_warnings(data: NightData, *, temperature_tolerance: float = 2.0) -> tuple[list[str], list[str]]:
    """What the observer should know first: (warnings, notes), plain text.

    Parameters
    ----------
    data : NightData
        The night, as read by :func:`collect`.
    temperature_tolerance : float
        The dark-matching tolerance in degC (``masters.temperature_tolerance``); a light whose
        CCD temperature is off its dark by more than ``min(DARK_TEMP_WARN, tolerance)`` is flagged.
    """
    warnings: list[str] = []
    notes: list[str] = []
    lights = data.lights
    if data.problems:
        by_state = Counter(p.state for p in data.problems)
        warnings.append(", ".join(f"{n} file{'s' * (n != 1)} {state}" for state, n in sorted(by_state.items()))
                        + " - see Problem files for the reasons")
    waiting = [f for f in lights if f.state == "waiting"]
    if waiting:
        warnings.append(f"{len(waiting)} of {len(lights)} lights are still waiting for calibration "
                        "- see Calibration coverage")
    partial = [c for c in data.calibrated.values() if c.partial]
    if partial:
        warnings.append(f"{len(partial)} lights were calibrated without every master (partial): "
                        + "; ".join(sorted({c.missing or "?" for c in partial})))

    # Masters far in time or temperature from the lights they calibrated.
    users: dict[int, list[FrameRow]] = defaultdict(list)
    for c in data.calibrated.values():
        f = data.frames.get(c.frame_id)
        if f is None:
            continue
        for mid in (c.bias_id, c.dark_id, c.flat_id):
            if mid is not None:
                users[mid].append(f)
    scaled: dict[tuple[int, float], int] = Counter(
        (c.dark_id, round(c.dark_scale, 4)) for c in data.calibrated.values()
        if c.dark_id is not None and c.dark_scale is not None and abs(c.dark_scale - 1.0) > 1e-6)
    for m in data.masters:
        fs = users.get(m.id, [])
        if not fs:
            continue
        gaps = [d for d in (_days(m.date_mid, f.date_obs) for f in fs) if d is not None]
        limit = FLAT_WARN_DAYS if m.kind == "flat" else DARK_WARN_DAYS
        if gaps and max(gaps) > limit:
            what = {"flat": "dust and focus may have changed since", "dark": "hot pixels may have changed",
                    "bias": "the bias level may have drifted"}.get(m.kind, "")
            warnings.append(f"master {m.kind} #{m.id}{f' ({m.filter})' if m.filter else ''} was taken "
                            f"{max(gaps):.1f} days from the lights it calibrated (night {m.night}); {what}")
        if m.kind == "dark" and m.ccd_temp is not None:
            temps = [f.ccd_temp for f in fs if f.ccd_temp is not None]
            limit_t = min(DARK_TEMP_WARN, temperature_tolerance)
            off = [t for t in temps if abs(t - m.ccd_temp) > limit_t]
            if off:
                worst = max(off, key=lambda t: abs(t - m.ccd_temp))
                warnings.append(f"{len(off)} lights were taken more than {limit_t:g} degC from master dark "
                                f"#{m.id} ({m.ccd_temp:g} degC; worst {worst:g} degC): dark current differs")
    for (mid, scale), n in sorted(scaled.items()):
        m = data.master(mid)
        if m is not None:
            notes.append(f"master dark #{mid} ({_fmt_num(m.exptime)} s) was scaled x{scale:g} for {n} lights "
                         "of another exposure time")

    temps = [f.ccd_temp for f in lights if f.ccd_temp is not None]
    if temps and max(temps) - min(temps) > TEMP_DRIFT_WARN:
        warnings.append(f"the CCD temperature of the lights ranged over {max(temps) - min(temps):.1f} degC "
                        f"({min(temps):g} to {max(temps):g} degC): check the cooler")
    off_set = [f for f in lights if f.ccd_temp is not None and f.set_temp is not None
               and abs(f.ccd_temp - f.set_temp) > TEMP_DRIFT_WARN]
    if off_set:
        warnings.append(f"{len(off_set)} lights were more than {TEMP_DRIFT_WARN:g} degC from the cooler set-point")

    for g in data.groups:
        st = g.stack
        if st is None:
            continue
        total = st.n_used + st.n_rejected
        if total and st.n_rejected / total > REJECT_WARN_FRACTION:
            warnings.append(f"stack {g.target} {g.filter or ''}: {st.n_rejected} of {total} frames were rejected "
                            "- see the stack's member list")
    rejected = [f for f in lights if f.state == "rejected"]
    if rejected:
        notes.append(f"{len(rejected)} light{'s' * (len(rejected) != 1)} rejected from stacks: "
                     + "; ".join(f"{f.name} ({f.state_reason or 'no reason recorded'})" for f in rejected[:5])
                     + (" ..." if len(rejected) > 5 else ""))
    unstacked = [f for f in lights if f.state == "calibrated"]
    if unstacked:
        reasons = Counter(f.state_reason or "not stacked yet" for f in unstacked)
        notes.append("calibrated lights not in a stack: " + "; ".join(f"{n} - {r}" for r, n in reasons.items()))
    hw = [f for f in data.frames.values() if f.header_warnings]
    if hw:
        notes.append(f"{len(hw)} frames had header oddities (listed in the frame table)")
    if not lights:
        notes.append("no light frames were catalogued for this night")
    return warnings, notes


# ============================================================================ formatting helpers
def esc(value: Any) -> str:
    """HTML-escape anything (None becomes an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _fmt_num(x: float | None, fmt: str = "g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not np.isfinite(x):
        return "-"
    return format(x, fmt)


def _fmt_time(dt: datetime | None, *, date: bool = False) -> str:
    if dt is None:
        return "-"
    return dt.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def _fmt_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:g} s"
    minutes = seconds / 60.0
    if minutes < 60:
        return f"{minutes:.1f} min"
    h, m = divmod(round(minutes), 60)
    return f"{h} h {m:02d} min"


def _mpl_text(text: str) -> str:
    """Text safe for a matplotlib title (a lone '$' would start mathtext and fail)."""
    return text.replace("$", r"\$")


def _group_label(g: Group) -> str:
    exp = f"{g.exptime:g} s" if g.exptime is not None else "? s"
    return f"{g.target} · {g.filter or 'no filter'} · {exp}"


# ============================================================================ files
def _is_png(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(8) == PNG_SIGNATURE
    except OSError:
        return False


def _copy_png(source: str | None, dest: Path) -> bool:
    """Copy an existing preview into the report (atomically); False if there is none."""
    if not source or not _is_png(Path(source)):
        return False
    if dest.exists() and dest.stat().st_size == Path(source).stat().st_size and _is_png(dest):
        return True
    write_bytes_atomic(dest, Path(source).read_bytes())
    return True


def default_report_dir(cfg: Config, night: str) -> Path:
    """``<products>/reports/<night>`` with the night label made safe as a path component."""
    from ccdwatch.fitsio import safe_product_path

    return safe_product_path(Path(cfg.paths.products).absolute(), "reports", night)


# ============================================================================ images
def quality_figure(lights: Sequence[FrameRow], *, title: str,
                   dark_temperatures: Sequence[tuple[str, float]] = ()) -> Any:
    """FWHM, sky, star count and CCD temperature of every light over the night, one panel each.

    Time (UTC) runs along x over the span of the lights; each filter has its colour; rejected
    frames are marked with a red cross; lights still waiting (no measurements yet) appear only in
    the temperature panel. ``dark_temperatures`` ((label, degC) of the master darks used) are
    drawn as dashed reference lines in the temperature panel.

    Returns
    -------
    matplotlib.figure.Figure or None
        Four axes (FWHM, sky, stars, temperature); the rejected frames are the line labelled
        ``"rejected"``. None when no light has a time.
    """
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from ccdwatch import previews  # noqa: F401 - selects the Agg backend

    timed = [f for f in lights if f.date_obs is not None]
    if not timed:
        return None
    panels = (("fwhm", "FWHM [px]"), ("sky", "sky background [ADU]"), ("n_stars", "stars detected"),
              ("ccd_temp", "CCD temperature [°C]"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10.0, 9.0), sharex=True)
    # fixed margins (room for the legend on the right): constrained layout drew the figure twice
    fig.subplots_adjust(left=0.1, right=0.775, top=0.965, bottom=0.065, hspace=0.07)
    filters = sorted({f.filter or "none" for f in timed})
    colours = dict(zip(filters, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, strict=False))
    for ax, (attr, label) in zip(axes, panels, strict=True):
        if attr == "ccd_temp":
            for k, (label_t, temp) in enumerate(dark_temperatures):
                ax.axhline(temp, ls="--", lw=1.0, color=("0.45", "0.65", "0.8")[k % 3], label=label_t)
        for filt in filters:
            pts = [(f.date_obs, getattr(f, attr)) for f in timed
                   if (f.filter or "none") == filt and getattr(f, attr) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, "o-", color=colours[filt], ms=5, lw=0.8, alpha=0.9, label=f"filter {filt}")
        bad = [(f.date_obs, getattr(f, attr)) for f in timed if f.state == "rejected" and getattr(f, attr) is not None]
        if bad:
            xs, ys = zip(*bad, strict=True)
            ax.plot(xs, ys, "x", color="crimson", ms=11, mew=2.2, label="rejected")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if handles:
        axes[0].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0),
                       fontsize=9, frameon=False)
    t0, t1 = min(f.date_obs for f in timed), max(f.date_obs for f in timed)
    pad = max((t1 - t0) * 0.03, timedelta(minutes=2))
    axes[-1].set_xlim(t0 - pad, t1 + pad)
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel("time of exposure start [UTC]")
    axes[0].set_title(_mpl_text(title), fontsize=11)
    return fig


def quality_plot(lights: Sequence[FrameRow], path: str | os.PathLike, *, title: str,
                 dark_temperatures: Sequence[tuple[str, float]] = ()) -> Path | None:
    """Write :func:`quality_figure` as a PNG (atomically); None when there is nothing to plot."""
    from ccdwatch import previews

    fig = quality_figure(lights, title=title, dark_temperatures=dark_temperatures)
    if fig is None:
        return None
    return previews.save_figure(fig, Path(path))


def _raw_pixels(frame: FrameRow, *, max_data_bytes: int, allow_compressed: bool) -> np.ndarray | None:
    """The raw pixels of a frame from any path it was seen under that still holds its content."""
    from ccdwatch.fitsio import RejectedFile, read_raw

    for p in frame.paths:
        try:
            raw = read_raw(p, max_data_bytes=max_data_bytes, allow_compressed=allow_compressed)
        except (OSError, RejectedFile) as exc:
            logger.debug("raw frame %d not readable at %s: %s", frame.id, p, exc)
            continue
        if frame.sha256 is None or raw.sha256 == frame.sha256:
            return raw.data
    return None


def _representative(data: NightData, g: Group) -> FrameRow | None:
    """The frame to show for a group: the stack's reference, else the sharpest calibrated one."""
    if g.stack is not None and g.stack.reference_frame_id in data.frames:
        return data.frames[g.stack.reference_frame_id]
    frames = [data.frames[i] for i in g.frame_ids if i in data.frames]
    cal = [f for f in frames if f.id in data.calibrated]
    if cal:
        return min(cal, key=lambda f: (f.fwhm is None, f.fwhm or 0.0, f.id))
    return frames[0] if frames else None


def _panel_target(data: NightData, g: Group) -> tuple[str, str, FrameRow] | None:
    """(file name, caption, frame shown) of a group's comparison panel; None without a frame.
    The name changes with what the panel shows (frame, its calibrated version, the stack)."""
    rep = _representative(data, g)
    if rep is None:
        return None
    cal = data.calibrated.get(rep.id)
    ident = hashlib.sha256(g.key.encode()).hexdigest()[:10]
    cal_tag = hashlib.sha256(cal.path.encode()).hexdigest()[:8] if cal is not None else "none"
    name = f"group-{ident}-f{rep.id}-c{cal_tag}-s{g.stack.id if g.stack else 'none'}.png"
    return name, f"frame {rep.id} ({rep.name})", rep


def _group_panel(data: NightData, g: Group, img_dir: Path, *, max_data_bytes: int,
                 allow_compressed: bool) -> tuple[str | None, str]:
    """Raw | calibrated | stack of one group, same stretch. Returns (file name or None, caption)."""
    from ccdwatch import previews
    from ccdwatch.fitsio import read_product

    target = _panel_target(data, g)
    if target is None:
        return None, "no frame to show"
    name, caption, rep = target
    cal = data.calibrated.get(rep.id)
    dest = img_dir / name
    if _is_png(dest):
        return name, caption
    panels: list[tuple[str, np.ndarray]] = []
    raw = _raw_pixels(rep, max_data_bytes=max_data_bytes, allow_compressed=allow_compressed)
    if raw is not None:
        panels.append((_mpl_text(f"raw: {rep.name}"), raw))
    if cal is not None:
        try:
            panels.append(("calibrated", read_product(cal.path)[1]))
        except (OSError, ValueError) as exc:
            logger.warning("report: cannot read calibrated frame %s: %s", cal.path, exc)
    if g.stack is not None:
        try:
            panels.append((f"stack of {g.stack.n_used}", read_product(g.stack.path)[1]))
        except (OSError, ValueError) as exc:
            logger.warning("report: cannot read stack %s: %s", g.stack.path, exc)
    shapes = {p[1].shape for p in panels}
    if len(shapes) > 1:  # e.g. a binned stack: show what matches the first panel
        panels = [p for p in panels if p[1].shape == panels[0][1].shape]
    if not panels:
        return None, "the raw and calibrated files are no longer readable"
    previews.side_by_side(panels, dest, title=_mpl_text(_group_label(g)))
    return name, caption


def _master_image(m: MasterRow, img_dir: Path) -> str | None:
    name = f"master-{m.id}.png"
    if _copy_png(m.preview_path, img_dir / name):
        return name
    if _is_png(img_dir / name):
        return name
    from ccdwatch import previews
    from ccdwatch.fitsio import read_product

    try:
        image = read_product(m.path)[1]
        previews.master_preview(image, img_dir / name,
                                title=f"master {m.kind} - night {m.night} - v{m.version} - {m.n_frames} frames")
    except (OSError, ValueError) as exc:
        logger.warning("report: no preview for master #%d: %s", m.id, exc)
        return None
    return name


def _stack_image(st: StackRow, img_dir: Path) -> str | None:
    name = f"stack-{st.id}.png"
    if _copy_png(st.preview_path, img_dir / name):
        return name
    if _is_png(img_dir / name):
        return name
    from ccdwatch import previews
    from ccdwatch.fitsio import read_product

    try:
        previews.stack_preview(read_product(st.path)[1], img_dir / name,
                               title=_mpl_text(f"{st.target} {st.filter or ''} - {st.n_used} frames"))
    except (OSError, ValueError) as exc:
        logger.warning("report: no preview for stack #%d: %s", st.id, exc)
        return None
    return name


@dataclass
class Images:
    """File names (relative to ``img/``) of the pictures the page shows."""

    quality: str | None = None
    masters: dict[int, str] = field(default_factory=dict)
    stacks: dict[int, str] = field(default_factory=dict)
    panels: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Picture:
    """One picture of the report to draw: the quality plot, or the comparison panel of a group.
    Plain data, so that the daemon can have its workers draw the pictures side by side."""

    kind: str  # "quality" or "panel"
    data: NightData
    img_dir: str
    max_data_bytes: int  # limits for re-reading raw frames (the ingest's)
    allow_compressed: bool
    group: Group | None = None


def draw_picture(task: Picture) -> tuple[str | None, str]:
    """Draw one `Picture`; returns (file name in the image directory or None, caption)."""
    data, img_dir = task.data, Path(task.img_dir)
    if task.kind == "quality":
        darks = [(f"master dark #{m.id} ({m.ccd_temp:g} °C)", m.ccd_temp) for m in data.masters
                 if m.kind == "dark" and m.used_by and m.ccd_temp is not None]
        q = quality_plot(data.lights, img_dir / "quality.png", title=f"light frames of night {data.night}",
                         dark_temperatures=darks)
        return (q.name if q is not None else None), ""
    assert task.group is not None
    return _group_panel(data, task.group, img_dir, max_data_bytes=task.max_data_bytes,
                        allow_compressed=task.allow_compressed)


#: Draws pictures: ``run(draw_picture, tasks)`` returns, per task and in order, its result or
#: the exception it raised. The daemon passes one that uses its worker pool.
PictureRunner = Callable[[Callable[[Picture], Any], list[Picture]], list[Any]]


def _draw_here(fn: Callable[[Picture], Any], tasks: list[Picture]) -> list[Any]:
    out: list[Any] = []
    for task in tasks:
        try:
            out.append(fn(task))
        except Exception as exc:  # noqa: BLE001 - reported per picture by make_images
            out.append(exc)
    return out


def make_images(data: NightData, img_dir: Path, cfg: Config, *, run: PictureRunner | None = None) -> Images:
    """Draw or copy every picture of the report into ``img_dir``; failures cost only that picture.

    The quality plot and the groups' comparison panels are drawn by ``run`` (one after another
    here by default); master and stack previews are copied.
    """
    img_dir.mkdir(parents=True, exist_ok=True)
    images = Images()
    limits = dict(max_data_bytes=int(cfg.ingest.max_data_mb * 2**20), allow_compressed=cfg.ingest.allow_compressed)
    tasks = [Picture("quality", data, str(img_dir), **limits)]
    for g in data.groups:  # only panels not drawn yet go to ``run`` (each task carries the night)
        target = _panel_target(data, g)
        if target is not None and _is_png(img_dir / target[0]):
            images.panels[g.key] = target[:2]
        elif target is not None:
            tasks.append(Picture("panel", data, str(img_dir), **limits, group=g))
    results = (run or _draw_here)(draw_picture, tasks)
    for task, result in zip(tasks, results, strict=True):
        if task.kind == "quality":
            if isinstance(result, BaseException):
                logger.error("report: quality plot failed: %s", result, exc_info=result)
            else:
                images.quality = result[0]
            continue
        g = task.group
        assert g is not None
        if isinstance(result, BaseException):
            logger.error("report: comparison panel of %s failed: %s", g.key, result, exc_info=result)
            result = (None, "comparison panel failed (see the log)")
        if result[0]:
            images.panels[g.key] = result
    for m in data.masters:
        try:
            name = _master_image(m, img_dir)
        except Exception:
            logger.exception("report: preview of master #%d failed", m.id)
            name = None
        if name:
            images.masters[m.id] = name
    for g in data.groups:
        if g.stack is not None:
            try:
                name = _stack_image(g.stack, img_dir)
            except Exception:
                logger.exception("report: preview of stack #%d failed", g.stack.id)
                name = None
            if name:
                images.stacks[g.stack.id] = name
    for png in img_dir.glob("*.png"):  # matplotlib's temp files are private (0600); a report is for reading
        try:
            png.chmod(0o644)
        except OSError:
            pass
    return images


# ============================================================================ HTML (pure)
CSS = """
:root { --ink:#1d2430; --muted:#5b6675; --line:#dfe3ea; --card:#fff; --bg:#f4f6f9; --accent:#2b5fb3;
        --warn:#8a5300; --warnbg:#fff5e0; --bad:#b3261e; --badbg:#fdecea; --ok:#1e7a3c; --okbg:#e8f5ec;
        --note:#234a7d; --notebg:#eaf1fb; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:var(--bg); }
header.top { background:linear-gradient(135deg,#0f1f3d,#23457a); color:#fff; padding:22px 32px 18px; }
header.top h1 { margin:0; font-size:26px; font-weight:650; letter-spacing:.2px; }
header.top .sub { color:#c8d6ef; margin-top:4px; font-size:14px; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 32px; display:flex; flex-wrap:wrap; gap:18px; font-size:14px; }
nav a { color:var(--accent); text-decoration:none; } nav a:hover { text-decoration:underline; }
main { max-width:1280px; margin:0 auto; padding:18px 32px 48px; }
section { margin-top:26px; }
h2 { font-size:20px; margin:0 0 10px; border-bottom:2px solid var(--line); padding-bottom:4px; }
h3 { font-size:17px; margin:0 0 6px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(170px,1fr)); gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
.card .big { font-size:24px; font-weight:650; } .card .lbl { color:var(--muted); font-size:13px; }
.box { border-radius:10px; padding:10px 16px; margin:10px 0; }
.box ul { margin:4px 0; padding-left:20px; }
.warn { background:var(--warnbg); color:var(--warn); border:1px solid #f1d7a6; }
.note { background:var(--notebg); color:var(--note); border:1px solid #c9dbf3; }
.good { background:var(--okbg); color:var(--ok); border:1px solid #bfe3cb; }
.panel { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:16px; margin:14px 0; }
.split { display:grid; grid-template-columns:minmax(320px,1fr) minmax(320px,560px); gap:18px; align-items:start; }
@media (max-width: 900px) { .split { grid-template-columns:1fr; } }
.grid2 { display:grid; grid-template-columns:repeat(auto-fill,minmax(340px,1fr)); gap:14px; }
figure { margin:8px 0; } figcaption { color:var(--muted); font-size:13px; }
img { max-width:100%; height:auto; display:block; border-radius:6px; background:#fff; }
table { border-collapse:collapse; width:100%; font-size:13.5px; background:#fff; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f0f3f8; font-weight:600; position:sticky; top:37px; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tr.rejected td { background:var(--badbg); } tr.waiting td { background:var(--warnbg); }
.tag { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px; font-weight:600; }
.tag.stacked, .tag.used, .tag.calibrated { background:var(--okbg); color:var(--ok); }
.tag.rejected, .tag.quarantined, .tag.failed { background:var(--badbg); color:var(--bad); }
.tag.waiting, .tag.unclassified { background:var(--warnbg); color:var(--warn); }
.tag.ingested, .tag.other { background:#eef0f4; color:var(--muted); }
dl.kv { display:grid; grid-template-columns:max-content 1fr; gap:2px 14px; margin:6px 0; font-size:14px; }
dl.kv dt { color:var(--muted); } dl.kv dd { margin:0; overflow-wrap:anywhere; }
details summary { cursor:pointer; color:var(--accent); margin:6px 0; }
.muted { color:var(--muted); } code { font-size:12.5px; background:#eef1f6; padding:0 4px; border-radius:4px; }
footer { color:var(--muted); font-size:12.5px; text-align:center; padding:24px; }
"""

#: Lets a browser (or a test) see whether every picture loaded: sets data-images-ok on <body>.
IMAGE_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.dataset.imagesTotal = String(imgs.length);
  document.body.dataset.imagesOk = broken.length ? 'false' : 'true';
  if (broken.length) {
    document.body.dataset.imagesBroken = broken.map(function (i) { return i.getAttribute('src'); }).join(' ');
  }
});
"""


def _tag(state: str) -> str:
    known = {"stacked", "used", "calibrated", "rejected", "quarantined", "failed", "waiting", "unclassified", "ingested"}
    return f'<span class="tag {state if state in known else "other"}">{esc(state)}</span>'


def _img(name: str | None, alt: str, *, cls: str = "") -> str:
    if not name:
        return f'<p class="muted">({esc(alt)}: no picture)</p>'
    return (f'<img src="{esc(IMG_DIR + "/" + name)}" alt="{esc(alt)}"'
            + (f' class="{esc(cls)}"' if cls else "") + ">")


def _table(headers: Sequence[str], rows: Iterable[tuple[Sequence[str], str]], *, numeric: Iterable[int] = ()) -> str:
    """A table from pre-escaped cells; ``rows`` are (cells, css class of the row)."""
    num = set(numeric)
    head = "".join(f'<th class="num">{esc(h)}</th>' if i in num else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for cells, cls in rows:
        tds = "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>" for i, c in enumerate(cells))
        body.append(f'<tr class="{esc(cls)}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _frame_cells(f: FrameRow) -> list[str]:
    return [
        str(f.id), f'<span title="{esc(f.paths[0] if f.paths else "")}">{esc(f.name)}</span>', esc(f.imagetyp),
        esc(_fmt_time(f.date_obs)), esc(_fmt_num(f.exptime)), esc(f.filter or "-"), esc(f.object or "-"),
        esc(_fmt_num(f.ccd_temp)), esc(_fmt_num(f.n_stars)), esc(_fmt_num(f.fwhm, ".2f")),
        esc(_fmt_num(f.sky, ".1f")), _tag(f.state),
        esc("; ".join(x for x in [f.state_reason or "", *f.header_warnings] if x)),
    ]


FRAME_HEADERS = ("id", "file", "type", "time (UTC)", "exp [s]", "filter", "object", "T [°C]", "stars",
                 "FWHM [px]", "sky [ADU]", "state", "notes")


def _summary(data: NightData) -> str:
    lights = data.lights
    counts = Counter(f.imagetyp for f in data.frames.values())
    light_exp = sum(f.exptime or 0.0 for f in lights)
    stacked_exp = sum(g.stack.total_exposure for g in data.groups if g.stack is not None)
    targets = sorted({g.target for g in data.groups})
    filters = sorted({f.filter for f in lights if f.filter})
    times = [f.date_obs for f in data.frames.values() if f.date_obs is not None]
    cards = [
        (str(counts.get("light", 0)), "light frames"),
        (_fmt_duration(light_exp), "total light exposure"),
        (_fmt_duration(stacked_exp), "exposure in stacks"),
        (str(sum(1 for g in data.groups if g.stack is not None)), "stacks"),
        (f"{counts.get('bias', 0)} / {counts.get('dark', 0)} / {counts.get('flat', 0)}", "bias / dark / flat frames"),
        (str(len(data.masters)), "masters used or built"),
        (str(len(data.problems)), "problem files"),
    ]
    html_cards = "".join(f'<div class="card"><div class="big">{esc(v)}</div><div class="lbl">{esc(k)}</div></div>'
                         for v, k in cards)
    states = Counter(f.state for f in lights)
    instruments = sorted({f.instrument for f in data.frames.values() if f.instrument})
    telescopes = sorted({f.telescope for f in data.frames.values() if f.telescope})
    kv = [
        ("targets", ", ".join(targets) or "-"),
        ("filters", ", ".join(filters) or "-"),
        ("frames by type", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"),
        ("lights by state", ", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "-"),
        ("first / last frame", f"{_fmt_time(min(times), date=True)} / {_fmt_time(max(times), date=True)} UTC"
         if times else "-"),
        ("camera", ", ".join(instruments) or "-"),
        ("telescope", ", ".join(telescopes) or "-"),
    ]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv)
    return f'<section id="summary"><h2>Summary</h2><div class="cards">{html_cards}</div><dl class="kv">{dl}</dl></section>'


def _warnings(data: NightData) -> str:
    parts = ['<section id="warnings"><h2>Warnings</h2>']
    if data.warnings:
        parts.append('<div class="box warn"><ul>' + "".join(f"<li>{esc(w)}</li>" for w in data.warnings) + "</ul></div>")
    else:
        parts.append('<div class="box good">Nothing needs your attention.</div>')
    if data.notes:
        parts.append('<div class="box note"><ul>' + "".join(f"<li>{esc(n)}</li>" for n in data.notes) + "</ul></div>")
    parts.append("</section>")
    return "".join(parts)


def _quality(data: NightData, images: Images) -> str:
    lights = [f for f in data.lights if f.fwhm is not None or f.n_stars is not None]
    body = _img(images.quality, "FWHM, sky, star count and CCD temperature over the night") if images.quality \
        else '<p class="muted">No light frames with a time to plot.</p>'
    stats = ""
    if lights:
        def med(attr: str) -> str:
            vals = [getattr(f, attr) for f in lights if getattr(f, attr) is not None]
            return _fmt_num(float(np.median(vals)), ".3g") if vals else "-"
        stats = (f'<p class="muted">Median over {len(lights)} measured lights: FWHM {esc(med("fwhm"))} px, '
                 f'sky {esc(med("sky"))} ADU, {esc(med("n_stars"))} stars, elongation {esc(med("elongation"))}.</p>')
    return f'<section id="quality"><h2>Quality over the night</h2>{stats}<figure>{body}</figure></section>'


def _stacks(data: NightData, images: Images) -> str:
    parts = ['<section id="stacks"><h2>Stacks</h2>']
    if not data.groups:
        parts.append('<p class="muted">No light frames, so nothing to stack.</p>')
    for g in data.groups:
        st = g.stack
        parts.append(f'<div class="panel"><h3>{esc(_group_label(g))}</h3><div class="split"><div>')
        if st is not None:
            kv = [("stack", f"#{st.id} version {st.version}, {st.method}"),
                  ("frames", f"{st.n_used} used, {st.n_rejected} rejected"),
                  ("total exposure", _fmt_duration(st.total_exposure)),
                  ("alignment reference", f"frame {st.reference_frame_id}"),
                  ("file", st.path)]
            parts.append('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv) + "</dl>")
        else:
            reasons = Counter((data.frames[i].state_reason or data.frames[i].state) for i in g.frame_ids
                              if i in data.frames)
            parts.append('<div class="box note">Not stacked: '
                         + esc("; ".join(f"{n} frame(s): {r}" for r, n in reasons.items())) + "</div>")
        parts.append("</div>")
        if st is not None:
            parts.append(f'<figure class="stackimg">{_img(images.stacks.get(st.id), f"stack of {_group_label(g)}")}'
                         "</figure>")
        parts.append("</div>")
        if g.key in images.panels:
            name, caption = images.panels[g.key]
            parts.append(f"<figure>{_img(name, f'raw, calibrated and stacked {_group_label(g)}')}"
                         f"<figcaption>One stretch for every panel: {esc(caption)} as it left the camera, "
                         "after calibration, and the stack.</figcaption></figure>")
        members = {m.frame_id: m for m in st.members} if st is not None else {}
        ids = list(dict.fromkeys([*g.frame_ids, *members]))
        rows = []
        for fid in ids:
            f = data.frames.get(fid)
            if f is None:
                continue
            m = members.get(fid)
            if m is not None:
                status, reason, cls = ("used", "", "") if m.used else ("rejected", m.reason or "", "rejected")
                if st is not None and fid == st.reference_frame_id:
                    reason = "alignment reference"
            else:
                status, reason = f.state, (f.state_reason or "not in the current stack version")
                cls = "waiting" if f.state == "waiting" else ""
            rows.append(([str(fid), esc(f.name), esc(_fmt_time(f.date_obs)), esc(_fmt_num(f.n_stars)),
                          esc(_fmt_num(f.fwhm, ".2f")), esc(_fmt_num(f.elongation, ".2f")),
                          esc(_fmt_num(f.sky, ".1f")), _tag(status), esc(reason)], cls))
        n_rej = sum(1 for m in members.values() if not m.used)
        summary = f"{len(rows)} frames" + (f", {n_rej} rejected" if n_rej else "")
        parts.append(f"<details{' open' if n_rej else ''}><summary>members: {esc(summary)}</summary>"
                     + _table(("id", "file", "time (UTC)", "stars", "FWHM [px]", "elong.", "sky [ADU]", "", "reason"),
                              rows, numeric=(0, 3, 4, 5, 6)) + "</details>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _masters(data: NightData, images: Images) -> str:
    parts = ['<section id="masters"><h2>Masters</h2>']
    if not data.masters:
        parts.append('<p class="muted">No master calibration was built for or used by this night.</p>')
    parts.append('<div class="grid2">')
    for m in data.masters:
        title = f"master {m.kind}"
        if m.kind == "dark":
            title += f" {_fmt_num(m.exptime)} s"
        if m.kind == "flat":
            title += f" {m.filter or 'no filter'}"
        badges = []
        if m.night != data.night:
            badges.append(f"from night {m.night}")
        if not m.latest:
            badges.append("superseded by a newer version")
        kv = [("id / version", f"#{m.id} v{m.version}"),
              ("inputs", f"{m.n_frames} frames, {m.method}"),
              ("mean level", _fmt_num(m.mean, ".4f") if m.kind == "flat" else _fmt_num(m.mean, ".1f") + " ADU"),
              ("noise", (_fmt_num(None if m.noise is None else 100 * m.noise, ".2f") + " %") if m.kind == "flat"
               else _fmt_num(m.noise, ".3g") + " ADU"),
              ("hot pixels", _fmt_num(m.hot_pixels) if m.kind == "dark" else "-"),
              ("temperature", f"{_fmt_num(m.ccd_temp)} °C" if m.ccd_temp is not None else "-"),
              ("taken", f"{_fmt_time(m.date_mid, date=True)} UTC (middle)"),
              ("built on", ", ".join(x for x, y in (("bias", m.bias_subtracted), ("dark", m.dark_subtracted)) if y)
               or "raw frames"),
              ("used by", f"{m.used_by} lights of this night")]
        parts.append(f'<div class="panel"><h3>{esc(title)}'
                     + "".join(f' <span class="tag waiting">{esc(b)}</span>' for b in badges) + "</h3>"
                     + f"<figure>{_img(images.masters.get(m.id), title)}</figure>"
                     + '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in kv) + "</dl>"
                     + f"<details><summary>input frames</summary><p>{esc(', '.join(m.inputs))}</p>"
                     + f"<p class=\"muted\">{esc(m.path)}</p></details></div>")
    parts.append("</div></section>")
    return "".join(parts)


def _coverage(data: NightData) -> str:
    lights = data.lights
    parts = ['<section id="calibration"><h2>Calibration coverage</h2>']
    if not lights:
        parts.append('<p class="muted">No lights.</p></section>')
        return "".join(parts)
    combos: Counter = Counter()
    for f in lights:
        c = data.calibrated.get(f.id)
        if c is not None:
            combos[(c.bias_id, c.dark_id, c.dark_scale, c.flat_id, c.partial)] += 1

    def mlabel(mid: int | None) -> str:
        m = data.master(mid)
        if mid is None:
            return "-"
        if m is None:
            return f"#{mid}"
        extra = f", {m.filter}" if m.filter else (f", {_fmt_num(m.exptime)} s" if m.kind == "dark" else "")
        return f"#{mid} (night {m.night}{extra})"

    rows = [([esc(mlabel(b)), esc(mlabel(d)), esc("-" if s is None else f"x{s:.4g}"), esc(mlabel(fl)),
              esc("partial" if p else "complete"), str(n)], "waiting" if p else "")
            for (b, d, s, fl, p), n in sorted(combos.items(), key=lambda kv: -kv[1])]
    n_cal = sum(combos.values())
    parts.append(f"<p>{n_cal} of {len(lights)} lights are calibrated.</p>")
    if rows:
        parts.append(_table(("master bias", "master dark", "dark scale", "master flat", "", "lights"), rows,
                            numeric=(5,)))
    waiting = [f for f in lights if f.state == "waiting"]
    if waiting:
        by_reason: dict[str, list[FrameRow]] = defaultdict(list)
        for f in waiting:
            by_reason[f.state_reason or "waiting (no reason recorded yet)"].append(f)
        rows = [([esc(reason), str(len(fs)), esc(", ".join(sorted({x.filter or "-" for x in fs}))),
                  esc(", ".join(x.name for x in fs[:6]) + (" ..." if len(fs) > 6 else ""))], "waiting")
                for reason, fs in by_reason.items()]
        parts.append("<h3>Lights still waiting</h3>"
                     + _table(("waiting for", "lights", "filters", "files"), rows, numeric=(1,)))
    else:
        parts.append('<div class="box good">No light is waiting for a master.</div>')
    parts.append("</section>")
    return "".join(parts)


def _frames(data: NightData) -> str:
    frames = sorted(data.frames.values(), key=lambda f: (f.date_obs is None, f.date_obs or datetime.min, f.id))
    rows = [(_frame_cells(f), f.state if f.state in ("rejected", "waiting") else "") for f in frames]
    return ('<section id="frames"><h2>All frames</h2>'
            f"<details><summary>{len(frames)} frames of night {esc(data.night)}</summary>"
            + _table(FRAME_HEADERS, rows, numeric=(0, 4, 7, 8, 9, 10)) + "</details></section>")


def _problems(data: NightData) -> str:
    parts = ['<section id="problems"><h2>Problem files</h2>']
    if not data.problems:
        parts.append('<div class="box good">No file was quarantined, failed or left unclassified.</div></section>')
        return "".join(parts)
    rows = [([str(p.id), f'<span title="{esc(p.paths[0] if p.paths else "")}">{esc(p.name)}</span>', _tag(p.state),
              esc(p.state_reason or "-"), esc(_fmt_time(p.created_at, date=True))], "rejected")
            for p in data.problems]
    parts.append("<p>These files were not used. ccdwatch never modifies the camera's files; fix or remove them "
                 "there.</p>" + _table(("id", "file", "state", "reason", "catalogued (UTC)"), rows, numeric=(0,)))
    parts.append("</section>")
    return "".join(parts)


def render_html(data: NightData, images: Images) -> str:
    """The report page as text; every catalogue- or header-derived string is escaped."""
    title = f"ccdwatch - night {data.night}"
    targets = ", ".join(sorted({g.target for g in data.groups})) or "no targets"
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (
        ("summary", "Summary"), ("warnings", f"Warnings ({len(data.warnings)})"), ("quality", "Quality"),
        ("stacks", "Stacks"), ("masters", "Masters"), ("calibration", "Calibration coverage"),
        ("frames", "All frames"), ("problems", f"Problem files ({len(data.problems)})")))
    body = "".join([
        _summary(data), _warnings(data), _quality(data, images), _stacks(data, images), _masters(data, images),
        _coverage(data), _frames(data), _problems(data),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta name=\"generator\" content=\"ccdwatch " + esc(__version__) + "\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>"
        f'<header class="top"><h1>Night {esc(data.night)}</h1>'
        f'<div class="sub">{esc(targets)} · report generated {esc(_fmt_time(data.generated, date=True))} UTC '
        f"by ccdwatch {esc(__version__)}</div></header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        f"<footer>ccdwatch {esc(__version__)} · the page and its img/ folder can be copied anywhere</footer>"
        f"<script>{IMAGE_CHECK_JS}</script></body></html>\n"
    )


# ============================================================================ entry points
def build_report(cfg: Config, catalog: Catalog, night: str, out_dir: str | os.PathLike | None = None, *,
                 run: PictureRunner | None = None) -> Path:
    """Write the report of ``night`` and return the path of its ``index.html``.

    Parameters
    ----------
    cfg : Config
        Settings (products root, ingest limits for re-reading raw frames, dark tolerance).
    catalog : Catalog
        The catalogue (a reader is enough).
    night : str
        Night label, ``YYYY-MM-DD``.
    out_dir : path-like, optional
        Directory for ``index.html`` and ``img/``; default ``<products>/reports/<night>``.
    run : PictureRunner, optional
        Draws the pictures (e.g. on the daemon's workers); default: one after another here.
    """
    with catalog.reader() as session:
        data = collect(session, night)
    data.warnings, data.notes = night_warnings(data, temperature_tolerance=cfg.masters.temperature_tolerance)
    out = Path(out_dir).absolute() if out_dir is not None else default_report_dir(cfg, night)
    img_dir = out / IMG_DIR
    images = make_images(data, img_dir, cfg, run=run)
    page = write_bytes_atomic(out / "index.html", render_html(data, images).encode("utf-8"))
    keep = {images.quality, *images.masters.values(), *images.stacks.values(), *(p for p, _ in images.panels.values())}
    for old in img_dir.glob("*.png"):  # pictures of superseded stacks and masters
        if old.name not in keep:
            old.unlink(missing_ok=True)
    logger.info("night report for %s written to %s", night, page)
    return page


def refresh(cfg: Config, catalog: Catalog, night: str | None, *, run: PictureRunner | None = None) -> Path | None:
    """Rebuild the report of ``night`` for the daemon when ``report.refresh`` is on; never raises."""
    if not night or not cfg.report.refresh:
        return None
    try:
        return build_report(cfg, catalog, night, run=run)
    except Exception:
        logger.exception("refreshing the night report of %s failed", night)
        return None


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    import sys

    with Catalog(cfg.paths.database, writer=False, create=False) as catalog:
        night = args.night
        if night is None:
            with catalog.reader() as s:
                night = latest_night(s)
            if night is None:
                print("ccdwatch: the catalogue holds no frames yet, so there is no night to report", file=sys.stderr)
                return 1
        with catalog.reader() as s:
            n = s.scalar(select(func.count()).select_from(Frame).where(Frame.night == night)) or 0
        if n == 0:
            print(f"ccdwatch: no frames for night {night!r}; `ccdwatch nights` lists the nights", file=sys.stderr)
            return 1
        page = build_report(cfg, catalog, night, args.out)
    print(page)
    return 0
