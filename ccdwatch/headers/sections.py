"""Which part of a raw frame is overscan and which is data: BIASSEC / TRIMSEC / DATASEC, or the
camera's entry in the configuration (pure: header in, sections out), and the plan a frame keeps
(:class:`Section`, :class:`OverscanPlan`; the numerics that apply it are in `ccdwatch.overscan`,
loaded by the jobs only).

Decided once, at ingest, and kept with the frame (the camera key holds it, so masters only ever
calibrate lights whose overscan was handled the same way):

1. a camera listed in ``[overscan.cameras]`` (by INSTRUME, case-insensitive) takes the sections
   configured for it, whatever its header says;
2. else, with ``overscan.use_header`` (the default), BIASSEC is the overscan strip and TRIMSEC
   (else DATASEC) the data to keep; a strip of whole rows or columns at an edge with no
   TRIMSEC/DATASEC keeps the rest of the frame;
3. sections are in the pixels of the stored (binned) frame, as the camera wrote them.

A section that cannot be read, lies outside the frame, or a trim region that keeps overscan
pixels, is a header warning (``show`` prints it): the frame is still reduced, without overscan
correction or trim, as before this existed. A frame whose only section is a DATASEC covering the
whole frame has nothing to trim and is reduced exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["OverscanPlan", "OverscanRules", "Section", "frame_overscan", "section_text"]

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
        from ccdwatch.overscan import subtract_overscan_and_trim  # the numerics: only in the jobs

        return subtract_overscan_and_trim(data, biassec=self.biassec if self.method != "none" else None,
                                          trimsec=self.trimsec, method=self.method, order=self.order)

    def trim(self, data: np.ndarray) -> np.ndarray:
        """The data region of a raw frame, as it is (a view: for the raw saturation mask)."""
        if not self.trimsec:
            return data
        return Section.parse(self.trimsec, (int(data.shape[0]), int(data.shape[1]))).of(data)


@dataclass(frozen=True)
class OverscanRules:
    """The ``[overscan]`` settings ingest needs (picklable: plain tuples)."""

    use_header: bool = True
    method: str = "median"
    order: int = 1
    cameras: tuple[tuple[str, str, str], ...] = ()
    """(lower-case INSTRUME, biassec, trimsec) per configured camera; "" for none."""


def section_text(section: Section) -> str:
    """The canonical FITS text of a section: ``[x1:x2,y1:y2]``."""
    return (f"[{section.cols.start + 1}:{section.cols.stop},"
            f"{section.rows.start + 1}:{section.rows.stop}]")


def _text(header: Mapping[str, Any], key: str) -> str | None:
    value = header.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def _rest_of_frame(bias: Section, shape: tuple[int, int]) -> Section | None:
    """The frame without an overscan strip of whole rows or columns at one of its edges."""
    ny, nx = shape
    full_rows = bias.rows.start == 0 and bias.rows.stop == ny
    full_cols = bias.cols.start == 0 and bias.cols.stop == nx
    if full_rows and bias.cols.stop == nx and bias.cols.start > 0:
        return Section(rows=slice(0, ny), cols=slice(0, bias.cols.start))
    if full_rows and bias.cols.start == 0 and bias.cols.stop < nx:
        return Section(rows=slice(0, ny), cols=slice(bias.cols.stop, nx))
    if full_cols and bias.rows.stop == ny and bias.rows.start > 0:
        return Section(rows=slice(0, bias.rows.start), cols=slice(0, nx))
    if full_cols and bias.rows.start == 0 and bias.rows.stop < ny:
        return Section(rows=slice(bias.rows.stop, ny), cols=slice(0, nx))
    return None


def _overlap(a: Section, b: Section) -> bool:
    return (a.rows.start < b.rows.stop and b.rows.start < a.rows.stop
            and a.cols.start < b.cols.stop and b.cols.start < a.cols.stop)


def frame_overscan(header: Mapping[str, Any], shape: tuple[int | None, int | None], instrument: str | None,
                   rules: OverscanRules | None, *, warn: Callable[[str], None] | None = None,
                   mosaic: bool = False) -> OverscanPlan | None:
    """A frame's overscan plan (None: nothing to subtract or trim); a section that cannot be used
    is told to ``warn``. ``shape`` is (NAXIS2, NAXIS1) of the stored frame. A colour ``mosaic`` is
    trimmed only by whole 2x2 cells from its first row and column and keeps the parity of its row
    count (its Bayer pattern, and BAYERPAT under ROWORDER, stay what they were)."""
    plan, warning = _frame_overscan(header, shape, instrument, rules)
    if mosaic and plan is not None and plan.trimsec and shape[0] is not None:
        keep = Section.parse(plan.trimsec)
        if keep.rows.start % 2 or keep.cols.start % 2 or (shape[0] - keep.shape[0]) % 2:
            warning = (f"overscan: trimming this colour mosaic to {plan.trimsec} would change its Bayer pattern (an "
                       "odd first row or column, or an odd number of rows cut); the frame is reduced without overscan "
                       "correction or trim")
            plan = None
    if warning and warn is not None:
        warn(warning)
    return plan


def _frame_overscan(header: Mapping[str, Any], shape: tuple[int | None, int | None], instrument: str | None,
                    rules: OverscanRules | None) -> tuple[OverscanPlan | None, str | None]:
    rules = rules or OverscanRules()
    ny, nx = shape
    if ny is None or nx is None:
        return None, None
    configured = {name: (b, t) for name, b, t in rules.cameras}
    where = "header"
    biassec: str | None
    trimsec: str | None
    if (instrument or "").strip().lower() in configured:
        configured_bias, configured_trim = configured[(instrument or "").strip().lower()]
        where = "overscan.cameras"
        biassec, trimsec = configured_bias or None, configured_trim or None
    elif rules.use_header:
        biassec = _text(header, "BIASSEC")
        trimsec = _text(header, "TRIMSEC") or _text(header, "DATASEC")
    else:
        return None, None
    if biassec is None and trimsec is None:
        return None, None
    try:
        bias = Section.parse(biassec, (ny, nx)) if biassec else None
        trim = Section.parse(trimsec, (ny, nx)) if trimsec else None
    except ValueError as exc:
        return None, f"overscan ({where}): {exc}; the frame is reduced without overscan correction or trim"
    if bias is not None and trim is None:
        trim = _rest_of_frame(bias, (ny, nx))
    if bias is not None and trim is not None and _overlap(bias, trim):
        return None, (f"overscan ({where}): the data section {section_text(trim)} overlaps the overscan "
                      f"{section_text(bias)}; the frame is reduced without overscan correction or trim")
    if bias is None and trim is not None and trim.shape == (ny, nx):
        return None, None  # a DATASEC of the whole frame: nothing to do
    return OverscanPlan(biassec=section_text(bias) if bias else None,
                        trimsec=section_text(trim) if trim else None,
                        method=rules.method if bias else "none", order=rules.order), None
