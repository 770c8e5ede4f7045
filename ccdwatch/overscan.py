"""Overscan and trim (pure numerics): a CCD's bias level measured in its own overscan strip.

A CCD's bias level drifts through the night by several ADU; the frame's overscan (columns read
out past the end of the pixel rows, or rows past the last row) measures it in that very frame.
Its level is subtracted before anything else — per row, from the median of each row of the strip
or from a low-order polynomial fitted along the rows — then the frame is trimmed to its data
section, so that masters and lights alike carry only real pixels.

Sections are FITS sections as in BIASSEC / TRIMSEC / DATASEC: ``"[x1:x2,y1:y2]"``, 1-based,
inclusive, x (column) first; astropy gives the data as ``[y, x]``. ccdproc's
``subtract_overscan`` and ``trim_image`` do the same on CCDData objects; the tests hold these
functions against them.
"""

from __future__ import annotations

import numpy as np

from ccdwatch.headers.sections import Section


def _trimmed_mean(lines: np.ndarray, cut: float = 0.1) -> np.ndarray:
    """Per row: the mean of the values between the ``cut`` and ``1 - cut`` quantiles (cosmic-ray
    hits and hot pixels do not pull it; unlike a median it is not quantised to whole ADU)."""
    n = lines.shape[1]
    k = int(n * cut)
    if n - 2 * k <= 0 or k == 0:
        return np.asarray(np.nanmean(lines, axis=1), dtype=np.float64)
    # the middle values only need to be between the two cuts, not in order
    kept = np.partition(lines, [k, n - k - 1], axis=1)[:, k:n - k]
    return np.asarray(np.nanmean(kept, axis=1), dtype=np.float64)


def overscan_level(strip: np.ndarray, *, along_rows: bool = True, method: str = "median",
                   order: int = 1) -> np.ndarray:
    """The bias level the overscan strip measures, per row (or per column).

    Parameters
    ----------
    strip : ndarray
        The overscan pixels, ADU.
    along_rows : bool
        True for a strip of columns beside the data (one level per row); False for rows below
        or above it (one level per column).
    method : {"median", "fit"}
        ``"median"``: one robust level for the whole frame (the strip's 10 %-trimmed mean);
        ``"fit"``: a polynomial of degree ``order`` fitted to the per-row trimmed means (a bias
        that changes along the readout).

    Returns
    -------
    ndarray of float64
        The level per row (``along_rows``) or per column.
    """
    values = np.asarray(strip, dtype=np.float64)
    if method == "median":  # one robust level: not quantised like a median of integer ADU
        return np.full(values.shape[0 if along_rows else 1], float(_trimmed_mean(values.reshape(1, -1))[0]))
    per_line = _trimmed_mean(values if along_rows else values.T)
    if method != "fit":
        raise ValueError(f"overscan method must be 'median' or 'fit', got {method!r}")
    x = np.arange(per_line.size, dtype=np.float64)
    good = np.isfinite(per_line)
    if good.sum() <= order:
        return np.full(per_line.shape, float(np.nanmedian(per_line)))
    coeffs = np.polynomial.polynomial.polyfit(x[good], per_line[good], order)
    return np.asarray(np.polynomial.polynomial.polyval(x, coeffs), dtype=np.float64)


def subtract_overscan_and_trim(data: np.ndarray, *, biassec: str | None, trimsec: str | None,
                               method: str = "median", order: int = 1) -> tuple[np.ndarray, float | None]:
    """Subtract the overscan level (if ``biassec``), then trim to ``trimsec`` (if given).

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Raw frame, ADU. Not modified.
    biassec, trimsec : str or None
        FITS sections of the overscan strip and of the data to keep.
    method, order
        As for :func:`overscan_level`.

    Returns
    -------
    image, level
        The new float32 image and the mean overscan level subtracted (None without ``biassec``).
    """
    shape = (int(data.shape[0]), int(data.shape[1]))
    keep = Section.parse(trimsec, shape) if trimsec else Section(rows=slice(0, shape[0]), cols=slice(0, shape[1]))
    out = keep.of(data).astype(np.float32)  # trimmed first: one pass over the kept pixels only
    level_mean = None
    if biassec:
        bias = Section.parse(biassec, shape)
        strip = bias.of(data)
        along_rows = bias.shape[0] >= bias.shape[1]  # a tall strip of columns: one level per row
        level = overscan_level(strip, along_rows=along_rows, method=method, order=order)
        full = np.full(shape[0] if along_rows else shape[1], float(np.mean(level)))
        full[bias.rows if along_rows else bias.cols] = level
        if along_rows:
            out -= full[keep.rows].astype(np.float32)[:, None]
        else:
            out -= full[keep.cols].astype(np.float32)[None, :]
        level_mean = float(np.mean(level))
    return np.ascontiguousarray(out), level_mean
