"""Measure a frame's :class:`~ccdwatch.headers.pixels.PixelEvidence` (pure numerics).

Cheap on any frame size: the statistics are taken on a 2x2-binned copy subsampled to at most
~512x512 pixels (binning first, so that single hot pixels and cosmic-ray hits do not look like
stars).
"""

from __future__ import annotations

import numpy as np

from ccdwatch.headers.pixels import PixelEvidence

_MAX_SIDE = 512


def _binned(data: np.ndarray) -> np.ndarray:
    """2x2 block means of a subsample of ``data`` with at most ~512 pixels a side, float32.

    The four pixels of each kept cell are gathered by strided views of the raw array: only the
    kept pixels are converted (a 2k frame's 4 M pixels used to be converted to float32 first)."""
    ny, nx = data.shape
    step = 2 * max(1, int(np.ceil(max(ny, nx) / (2 * _MAX_SIDE))))
    ys = (ny // step) * step
    xs = (nx // step) * step
    out = np.zeros((ys // step, xs // step), dtype=np.float32)
    for dy in (0, 1):
        for dx in (0, 1):
            out += data[dy:ys:step, dx:xs:step]
    out *= 0.25
    return out


def _full_scale(data: np.ndarray, finite_max: float) -> float:
    if np.issubdtype(data.dtype, np.integer):
        return float(np.iinfo(data.dtype).max)
    return 65535.0 if finite_max <= 65535.0 else finite_max


def _count_sources(img: np.ndarray, level: float, noise: float) -> int:
    """Groups of >= 3 connected pixels above level + 5 sigma, with a peak above level + 10 sigma.

    A group's peak is above 10 sigma exactly when one of its pixels is, so the groups are counted
    from the labels of those pixels and the groups' sizes (a bincount; scipy's per-label maximum
    sorts every labelled pixel)."""
    from scipy import ndimage

    if not noise > 0:
        return 0
    labels, n = ndimage.label(img > level + 5 * noise)
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    bright = np.unique(labels[img > level + 10 * noise])
    return int(np.count_nonzero(sizes[bright[bright > 0]] >= 3))


def adc_shift(data: np.ndarray) -> int:
    """How many low bits are zero in every pixel of integer data (0 for float data or when any
    sampled pixel has its lowest bit set). Sampled: every 7th pixel of at most ~1 M."""
    if not np.issubdtype(data.dtype, np.integer):
        return 0
    flat = data.reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000) * 7 or 1]
    bits = int(np.bitwise_or.reduce(sample.astype(np.int64) & 0xFFFF)) if sample.size else 0
    if bits == 0:
        return 0
    shift = 0
    while not bits & 1 and shift < 8:
        bits >>= 1
        shift += 1
    return shift


def measure(data: np.ndarray) -> PixelEvidence:
    """Robust statistics of a 2-D frame that tell flats, lights and biases apart.

    Parameters
    ----------
    data : numpy.ndarray
        The raw frame, ADU (any numeric dtype; NaN and inf are ignored).

    Returns
    -------
    PixelEvidence
    """
    img = _binned(data)
    finite = np.isfinite(img)
    if not finite.any():
        return PixelEvidence(level=0.0, noise=0.0, full_scale=65535.0, n_sources=0, structure=0.0)
    values = img[finite]
    level = float(np.median(values))
    diff = np.diff(np.where(finite, img, level), axis=1).ravel()
    noise = float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))
    ny, nx = img.shape
    n = max(1, min(16, ny, nx))  # blocks a side (fewer on tiny frames)
    by, bx = ny // n, nx // n
    blocks = np.median(np.where(finite, img, level)[: by * n, : bx * n].reshape(n, by, n, bx), axis=(1, 3))
    spread = float(1.4826 * np.median(np.abs(blocks - np.median(blocks))))
    structure = spread / abs(level) if level else 0.0
    return PixelEvidence(level=level, noise=noise, full_scale=_full_scale(data, float(values.max())),
                         n_sources=_count_sources(np.where(finite, img, level), level, noise),
                         structure=structure, adc_shift=adc_shift(data))
