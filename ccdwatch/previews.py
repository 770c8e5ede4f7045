"""PNG quicklooks of masters, calibrated frames and stacks (matplotlib, Agg backend).

Written atomically (temp name, then rename) like every other product, so a reader never sees a
half-written PNG. The stretch is the stacker's :func:`ccdwatch.stack.preview_stretch`
(percentile clip + asinh), one stretch for every image so raw and calibrated look alike.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ccdwatch.fitsio import write_bytes_atomic  # noqa: E402
from ccdwatch.stack import preview_stretch  # noqa: E402

__all__ = ["image_preview", "master_preview", "side_by_side", "stack_preview"]


def _save(fig: plt.Figure, path: Path) -> Path:
    """Render to PNG in memory, then write atomically like every other product."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def _display(data: np.ndarray, max_px: int = 1024) -> np.ndarray:
    """Block-average a large image down to at most ``max_px`` on its long side: a quicklook is
    shown at ~800 px anyway, and stretching and drawing 2k-6k frames at full size dominated the
    preview time."""
    factor = int(np.ceil(max(data.shape[:2]) / max_px))
    if factor <= 1:
        return data
    ny, nx = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    blocks = np.asarray(data[:ny, :nx], dtype=np.float32).reshape(ny // factor, factor, nx // factor, factor)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(blocks, axis=(1, 3))


def _figsize(shape: tuple[int, ...], width: float = 8.0, extra: float = 0.8) -> tuple[float, float]:
    ny, nx = shape[:2]
    return width, max(2.5, width * ny / nx + extra)


def master_preview(data: np.ndarray, path: str | os.PathLike, *, title: str) -> Path:
    """A master with a linear stretch between robust limits and a colour bar in ADU."""
    extent = (0, data.shape[1], 0, data.shape[0])
    data = _display(data)
    finite = data[np.isfinite(data)]
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    fig, ax = plt.subplots(figsize=_figsize(data.shape, extra=0.9), layout="constrained")
    im = ax.imshow(data, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", extent=extent)
    fig.colorbar(im, ax=ax, shrink=0.85, label="ADU" if "flat" not in title else "relative response")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    return _save(fig, Path(path))


def image_preview(data: np.ndarray, path: str | os.PathLike, *, title: str) -> Path:
    """A light or stack with a percentile + asinh stretch."""
    fig, ax = plt.subplots(figsize=_figsize(data.shape), layout="constrained")
    ax.imshow(preview_stretch(_display(data)), origin="lower", cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    return _save(fig, Path(path))


stack_preview = image_preview


def side_by_side(images: list[tuple[str, np.ndarray]], path: str | os.PathLike, *, title: str) -> Path:
    """Panels (e.g. raw, calibrated, stack) each with the same kind of stretch."""
    n = len(images)
    shape = images[0][1].shape
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 5.0 * shape[0] / shape[1] + 0.9), layout="constrained")
    for ax, (label, img) in zip(np.atleast_1d(axes), images, strict=True):
        ax.imshow(preview_stretch(_display(img)), origin="lower", cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    return _save(fig, Path(path))
