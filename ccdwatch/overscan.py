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

import re
from dataclasses import dataclass

import numpy as np

_SECTION = re.compile(r"^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


@dataclass(frozen=True)
class Section:
    """A FITS section as numpy slices (0-based, end-exclusive, possibly reversed in FITS)."""

    rows: slice
    cols: slice

    @classmethod
    def parse(cls, text: str, shape: tuple[int, int] | None = None) -> Section:
        """Read ``"[x1:x2,y1:y2]"``; with ``shape`` (ny, nx), check that it lies inside the frame.

        Raises
        ------
        ValueError
            For text that is not a section, or a section outside ``shape``.
        """
        m = _SECTION.match(str(text))
        if m is None:
            raise ValueError(f"{text!r} is not a FITS section like '[1:2048,1:2048]'")
        x1, x2, y1, y2 = (int(v) for v in m.groups())
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        if min(x1, y1) < 1:
            raise ValueError(f"section {text!r}: FITS sections start at 1")
        if shape is not None and (y2 > shape[0] or x2 > shape[1]):
            raise ValueError(f"section {text!r} lies outside the {shape[1]}x{shape[0]} frame")
        return cls(rows=slice(y1 - 1, y2), cols=slice(x1 - 1, x2))

    def of(self, data: np.ndarray) -> np.ndarray:
        return data[self.rows, self.cols]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.stop - self.rows.start, self.cols.stop - self.cols.start)


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


@dataclass(frozen=True)
class OverscanPlan:
    """How one frame's overscan is handled: decided at ingest (`ccdwatch.headers.sections`), kept
    with the frame, applied by the jobs to every raw frame before anything else.

    ``method`` is ``"median"`` or ``"fit"`` (see :func:`overscan_level`; ``order`` for a fit), or
    ``"none"`` for a frame that is only trimmed (no BIASSEC).
    """

    biassec: str | None
    trimsec: str | None
    method: str = "median"
    order: int = 1

    @property
    def key(self) -> str:
        """The plan as a camera-key piece: only frames with equal pieces share masters."""
        how = {"median": "median", "fit": f"fit{self.order}"}.get(self.method, "none")
        pieces = [f"os={how}{self.biassec or ''}"] if self.biassec else []
        return "|".join([*pieces, *([f"trim={self.trimsec}"] if self.trimsec else [])])

    def to_json(self) -> dict[str, object]:
        return {"biassec": self.biassec, "trimsec": self.trimsec, "method": self.method, "order": self.order}

    @classmethod
    def from_json(cls, value: object) -> OverscanPlan | None:
        """The plan stored with a frame (None: the frame has none)."""
        if not isinstance(value, dict) or not (value.get("biassec") or value.get("trimsec")):
            return None
        return cls(biassec=value.get("biassec") or None, trimsec=value.get("trimsec") or None,
                   method=str(value.get("method") or "median"), order=int(value.get("order") or 1))

    def apply(self, data: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Overscan subtracted (per row or column), then trimmed: float32, and the mean level."""
        return subtract_overscan_and_trim(data, biassec=self.biassec if self.method != "none" else None,
                                          trimsec=self.trimsec, method=self.method, order=self.order)

    def trim(self, data: np.ndarray) -> np.ndarray:
        """The data region of a raw frame, as it is (a view: for the raw saturation mask)."""
        if not self.trimsec:
            return data
        return Section.parse(self.trimsec, (int(data.shape[0]), int(data.shape[1]))).of(data)
