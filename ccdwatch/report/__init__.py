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

Modules: :mod:`.rows` (the records), :mod:`.collect` (reading them), :mod:`.checks` (warnings and notes),
:mod:`.figures` (the pictures), :mod:`.html` (the page), :mod:`.text` (escaping and formatting);
:mod:`.build` the entry points; this one names them all, each loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccdwatch.lazy import module_getattr

if TYPE_CHECKING:
    from ccdwatch.report.build import build_report, cmd_report, default_report_dir, refresh
    from ccdwatch.report.checks import (
        DARK_TEMP_WARN,
        DARK_WARN_DAYS,
        FLAT_WARN_DAYS,
        REJECT_WARN_FRACTION,
        TEMP_DRIFT_WARN,
        night_warnings,
    )
    from ccdwatch.report.collect import PROBLEM_WINDOW, collect, latest_night
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
    from ccdwatch.report.rows import CalibratedRow, FrameRow, Group, MasterRow, MemberRow, NightData, StackRow
    from ccdwatch.report.text import esc

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

#: Where each name lives: loaded on first use, so that a worker drawing a picture
#: (`ccdwatch.report.figures`) never loads the catalogue (SQLAlchemy) that `.collect` reads.
_HOME = {
    **dict.fromkeys(("build_report", "cmd_report", "default_report_dir", "refresh"), "build"),
    **dict.fromkeys(("DARK_TEMP_WARN", "DARK_WARN_DAYS", "FLAT_WARN_DAYS", "REJECT_WARN_FRACTION",
                     "TEMP_DRIFT_WARN", "night_warnings"), "checks"),
    **dict.fromkeys(("PROBLEM_WINDOW", "collect", "latest_night"), "collect"),
    **dict.fromkeys(("IMG_DIR", "PNG_SIGNATURE", "Images", "Picture", "PictureRunner", "draw_picture",
                     "make_images", "quality_figure", "quality_plot"), "figures"),
    **dict.fromkeys(("CSS", "FRAME_HEADERS", "IMAGE_CHECK_JS", "render_html"), "html"),
    **dict.fromkeys(("CalibratedRow", "FrameRow", "Group", "MasterRow", "MemberRow", "NightData", "StackRow"),
                    "rows"),
    "esc": "text",
}


__getattr__ = module_getattr(__name__, _HOME)
