"""The night report's entry points: write a night's page (`build_report`), refresh it from the
daemon (`refresh`), and ``ccdwatch report`` (`cmd_report`). See `ccdwatch.report`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ccdwatch.catalog import Catalog
from ccdwatch.catalog.night import frame_count
from ccdwatch.config import Config, site_name
from ccdwatch.fitsio import write_bytes_atomic
from ccdwatch.report.checks import night_warnings
from ccdwatch.report.collect import collect, latest_night
from ccdwatch.report.figures import IMG_DIR, PictureRunner, make_images
from ccdwatch.report.html import render_html

# the package's name, which the daemon's log and its filters know
logger = logging.getLogger("ccdwatch.report")

__all__ = ["build_report", "cmd_report", "default_report_dir", "refresh"]


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
