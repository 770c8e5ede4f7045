"""The report's pictures: the quality plot, the groups' raw / calibrated / stacked panels, and the
master and stack previews, drawn (matplotlib, imported lazily) or copied into the report's ``img/``.

The quality plot and the panels are :class:`Picture` tasks, plain data, so that the daemon can
have its workers draw them side by side; every picture is written atomically and a failure costs
only that picture.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ccdwatch.config import Config
from ccdwatch.fitsio import write_bytes_atomic
from ccdwatch.report.rows import FrameRow, Group, MasterRow, NightData, StackRow
from ccdwatch.report.text import group_label, mpl_text

# the package's logger (its records keep the name they had before the report became a package)
logger = logging.getLogger("ccdwatch.report")

__all__ = [
    "IMG_DIR",
    "PNG_SIGNATURE",
    "Images",
    "Picture",
    "PictureRunner",
    "draw_picture",
    "make_images",
    "quality_figure",
    "quality_plot",
]

IMG_DIR = "img"
#: Pixels across one panel of `previews.side_by_side` (5 in at 100 dpi): images are reduced to it as read.
_PANEL_PX = 500
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


# ============================================================================ quality over the night
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
    times: list[datetime] = [f.date_obs for f in timed if f.date_obs is not None]
    t0, t1 = min(times), max(times)
    pad = max((t1 - t0) * 0.03, timedelta(minutes=2))
    axes[-1].set_xlim(t0 - pad, t1 + pad)
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel("time of exposure start [UTC]")
    axes[0].set_title(mpl_text(title), fontsize=11)
    return fig


def quality_plot(lights: Sequence[FrameRow], path: str | os.PathLike, *, title: str,
                 dark_temperatures: Sequence[tuple[str, float]] = ()) -> Path | None:
    """Write :func:`quality_figure` as a PNG (atomically); None when there is nothing to plot."""
    from ccdwatch import previews

    fig = quality_figure(lights, title=title, dark_temperatures=dark_temperatures)
    if fig is None:
        return None
    return previews.save_figure(fig, Path(path))


# ============================================================================ a group's comparison panel
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

    target = _panel_target(data, g)
    if target is None:
        return None, "no frame to show"
    name, caption, rep = target
    cal = data.calibrated.get(rep.id)
    dest = img_dir / name
    if _is_png(dest):
        return name, caption
    # each image is reduced to the panel's size as soon as it is read: one full frame at a time
    # (three 61 Mpix frames at once did not fit a worker); mosaics by whole 2x2 cells
    panels: list[tuple[str, np.ndarray]] = []
    raw = _raw_pixels(rep, max_data_bytes=max_data_bytes, allow_compressed=allow_compressed)
    if raw is not None:
        panels.append((mpl_text(f"raw: {rep.name}"), _panel_image(raw)))
        del raw
    products = [("calibrated", "calibrated frame", cal.path if cal is not None else None)]
    if g.stack is not None:
        products.append((f"stack of {g.stack.n_used}", "stack", g.stack.path))
    for label, what, path in products:
        if path is None:
            continue
        try:
            panels.append((label, _panel_image(_product_image(path))))
        except (OSError, ValueError) as exc:
            logger.warning("report: cannot read %s %s: %s", what, path, exc)
            continue
    shapes = {p[1].shape[-2:] for p in panels}  # a colour stack (3, ny, nx) beside its mosaics
    if len(shapes) > 1:  # e.g. a binned stack: show what matches the first panel
        panels = [p for p in panels if p[1].shape[-2:] == panels[0][1].shape[-2:]]
    if not panels:
        return None, "the raw and calibrated files are no longer readable"
    previews.side_by_side(panels, dest, title=mpl_text(group_label(g)))
    return name, caption


def _product_image(path: str) -> np.ndarray:
    """A product's image for a panel: its primary plane memory-mapped where it lies (a calibrated
    light's UNCERT and BADPIX, a stack's UNCERT, EXPMAP and NFRAMES are not read: ~40 MB less to
    copy for 2k frames), else read (tile-compressed, or an RGB stack)."""
    from ccdwatch.fitsio import map_product_planes, read_product

    planes = map_product_planes(path, ())
    if planes is not None and "PRIMARY" in planes:
        return planes["PRIMARY"]
    return read_product(path)[1]


def _panel_image(image: np.ndarray) -> np.ndarray:
    """An image reduced to the panel's size (each plane of an RGB cube; 2-D by whole 2x2 cells)."""
    from ccdwatch import previews

    if image.ndim == 3:
        return np.stack([previews.display_image(plane, max_px=_PANEL_PX, even=True) for plane in image])
    return previews.display_image(image, max_px=_PANEL_PX, even=True)


# ============================================================================ master and stack previews
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
                               title=mpl_text(f"{st.target} {st.filter or ''} - {st.n_used} frames"))
    except (OSError, ValueError) as exc:
        logger.warning("report: no preview for stack #%d: %s", st.id, exc)
        return None
    return name


# ============================================================================ every picture of the page
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


def _picture_tasks(data: NightData, img_dir: Path, cfg: Config, images: Images) -> list[Picture]:
    """The quality plot and the panels not drawn yet (those already drawn go into ``images``)."""
    max_data_bytes, allow_compressed = int(cfg.ingest.max_data_mb * 2**20), cfg.ingest.allow_compressed
    tasks = [Picture("quality", data, str(img_dir), max_data_bytes=max_data_bytes, allow_compressed=allow_compressed)]
    for g in data.groups:  # only panels not drawn yet go to ``run`` (each task carries the night)
        target = _panel_target(data, g)
        if target is not None and _is_png(img_dir / target[0]):
            images.panels[g.key] = target[:2]
        elif target is not None:
            tasks.append(Picture("panel", data, str(img_dir), max_data_bytes=max_data_bytes,
                                 allow_compressed=allow_compressed, group=g))
    return tasks


def _take_result(task: Picture, result: Any, images: Images) -> None:
    """Record the drawn picture of ``task`` in ``images``, or log why there is none."""
    if task.kind == "quality":
        if isinstance(result, BaseException):
            logger.error("report: quality plot failed: %s", result, exc_info=result)
        else:
            images.quality = result[0]
        return
    g = task.group
    assert g is not None
    if isinstance(result, BaseException):
        logger.error("report: comparison panel of %s failed: %s", g.key, result, exc_info=result)
        result = (None, "comparison panel failed (see the log)")
    if result[0]:
        images.panels[g.key] = result


def _copy_previews(data: NightData, img_dir: Path, images: Images) -> None:
    """The master and stack previews: copied from the products, drawn only when missing."""
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


def make_images(data: NightData, img_dir: Path, cfg: Config, *, run: PictureRunner | None = None) -> Images:
    """Draw or copy every picture of the report into ``img_dir``; failures cost only that picture.

    The quality plot and the groups' comparison panels are drawn by ``run`` (one after another
    here by default); master and stack previews are copied.
    """
    img_dir.mkdir(parents=True, exist_ok=True)
    images = Images()
    tasks = _picture_tasks(data, img_dir, cfg, images)
    results = (run or _draw_here)(draw_picture, tasks)
    for task, result in zip(tasks, results, strict=True):
        _take_result(task, result, images)
    _copy_previews(data, img_dir, images)
    for png in img_dir.glob("*.png"):  # matplotlib's temp files are private (0600); a report is for reading
        with contextlib.suppress(OSError):
            png.chmod(0o644)
    return images
