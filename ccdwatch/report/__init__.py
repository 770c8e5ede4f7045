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

Modules: :mod:`.collect` (the records and reading them), :mod:`.checks` (warnings and notes),
:mod:`.figures` (the pictures), :mod:`.html` (the page), :mod:`.text` (escaping and formatting);
this one holds the entry points.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ccdwatch.catalog import Catalog
from ccdwatch.catalog.night import frame_count
from ccdwatch.config import Config, site_name
from ccdwatch.fitsio import write_bytes_atomic
from ccdwatch.report.checks import (
    DARK_TEMP_WARN,
    DARK_WARN_DAYS,
    FLAT_WARN_DAYS,
    REJECT_WARN_FRACTION,
    TEMP_DRIFT_WARN,
    night_warnings,
)
from ccdwatch.report.collect import (
    PROBLEM_WINDOW,
    CalibratedRow,
    FrameRow,
    Group,
    MasterRow,
    MemberRow,
    NightData,
    StackRow,
    collect,
    latest_night,
)
from ccdwatch.report.figures import (
    IMG_DIR,
    PNG_SIGNATURE,
    Images,
    Picture,
    PictureRunner,
    draw_picture,
    make_images,
    quality_figure,
    quality_plot,
)
from ccdwatch.report.html import CSS, FRAME_HEADERS, IMAGE_CHECK_JS, render_html
from ccdwatch.report.text import esc

logger = logging.getLogger(__name__)

__all__ = [
    "CSS",
    "DARK_TEMP_WARN",
    "DARK_WARN_DAYS",
    "FLAT_WARN_DAYS",
    "FRAME_HEADERS",
    "IMAGE_CHECK_JS",
    "IMG_DIR",
    "PNG_SIGNATURE",
    "PROBLEM_WINDOW",
    "REJECT_WARN_FRACTION",
    "TEMP_DRIFT_WARN",
    "CalibratedRow",
    "FrameRow",
    "Group",
    "Images",
    "MasterRow",
    "MemberRow",
    "NightData",
    "Picture",
    "PictureRunner",
    "StackRow",
    "build_report",
    "cmd_report",
    "collect",
    "default_report_dir",
    "draw_picture",
    "esc",
    "latest_night",
    "make_images",
    "night_warnings",
    "quality_figure",
    "quality_plot",
    "refresh",
    "render_html",
]


def default_report_dir(cfg: Config, night: str) -> Path:
    """``<products>/reports/<night>`` with the night label made safe as a path component."""
    from ccdwatch.fitsio import safe_product_path

    return safe_product_path(Path(cfg.paths.products).absolute(), "reports", night)


def build_report(cfg: Config, catalog: Catalog, night: str, out_dir: str | os.PathLike | None = None, *,
                 run: PictureRunner | None = None, site: str | None = None) -> Path:
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
    site : str, optional
        Only this telescope's frames, masters and stacks (default: every site in the catalogue).
    """
    with catalog.reader() as session:
        data = collect(session, night, site=site)
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
    """Rebuild the report of ``night`` (this daemon's site only) when ``report.refresh`` is on; never raises."""
    if not night or not cfg.report.refresh:
        return None
    try:
        return build_report(cfg, catalog, night, run=run, site=site_name(cfg))
    except Exception:
        logger.exception("refreshing the night report of %s failed", night)
        return None


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    """`ccdwatch report`: write the report of --night (default: the latest night) and print its path."""
    import sys

    with Catalog(cfg.paths.database, writer=False, create=False) as catalog:
        night, site = args.night, getattr(args, "site", None)
        if night is None:
            with catalog.reader() as s:
                night = latest_night(s, site=site)
            if night is None:
                print("ccdwatch: the catalogue holds no frames yet, so there is no night to report", file=sys.stderr)
                return 1
        with catalog.reader() as s:
            n = frame_count(s, night, site=site)
        if n == 0:
            print(f"ccdwatch: no frames for night {night!r}; `ccdwatch nights` lists the nights", file=sys.stderr)
            return 1
        page = build_report(cfg, catalog, night, args.out, site=site)
    print(page)
    return 0
