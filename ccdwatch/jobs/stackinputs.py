"""What a stack job reads of its calibrated lights: their planes mapped where they lie, for
`ccdwatch.stack` to warp strip by strip, or (colour mosaics) read whole; either way through
`ccdwatch.stripwarp.MappedFrame` (the image NaN on bad pixels, UNCERT squared NaN where it is)."""

from __future__ import annotations

import errno
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ccdwatch import qa
from ccdwatch.fitsio import map_product, read_product_hdus, read_product_table
from ccdwatch.stripwarp import LEVEL_STEP, MappedFrame, frame_level

__all__ = ["LEVEL_CARDS", "StripInputs", "WholeFrames", "known_level", "level_cards", "source_lists", "strip_inputs"]


def source_lists(products: Mapping[int, str]) -> tuple[dict[int, qa.Sources], dict[int, str]]:
    """Each product's SOURCES table (read without its image) and its image's unit (BUNIT)."""
    sources: dict[int, qa.Sources] = {}
    units: dict[int, str] = {}
    for fid, path in products.items():
        tab, _, head = read_product_table(path, "SOURCES")  # headers and the table only
        sources[fid], units[fid] = _sources(tab), str(head.get("BUNIT", "adu"))
    return sources, units


def _sources(tab: np.ndarray) -> qa.Sources:
    return qa.Sources(x=np.asarray(tab["X"], float), y=np.asarray(tab["Y"], float),
                      flux=np.asarray(tab["FLUX"], float), fwhm=np.asarray(tab["FWHM"], float),
                      elongation=np.asarray(tab["ELONGATION"], float))


#: Header cards of a calibrated light: its `stripwarp.frame_level`, measured when it was written.
LEVEL_CARDS = ("SKYLEVEL", "VARLEVEL")


def level_cards(image: np.ndarray, bad: np.ndarray | None, uncert: np.ndarray | None) -> dict[str, tuple[float, str]]:
    """The cards of `LEVEL_CARDS` for a calibrated light's planes as they are written: what a stack
    measures of it before combining (`stripwarp.frame_level`, the same values), measured here on the
    planes in memory so that the stack need not read a quarter of every product for them."""
    level, typical = frame_level(MappedFrame(image, bad, uncert))
    if not (math.isfinite(level) and math.isfinite(typical)):  # no valid pixel: the stack measures it
        return {}
    return {"SKYLEVEL": (level, f"robust median, every {LEVEL_STEP}th px (stack sky)"),
            "VARLEVEL": (typical, "robust median variance, same px (stack weights)")}


def known_level(header: Any) -> tuple[float, float] | None:
    """The `LEVEL_CARDS` of a product's header, None unless both are there and finite (a product
    written before they existed, or of a frame with no valid pixel: measured again)."""
    values = [header.get(name) for name in LEVEL_CARDS]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return float(values[0]), float(values[1])


@dataclass
class StripInputs:
    """What a monochrome stack reads of its products (`strip_inputs`)."""

    sources: dict[int, qa.Sources] = field(default_factory=dict)
    units: dict[int, str] = field(default_factory=dict)
    mapped: dict[int, MappedFrame] = field(default_factory=dict)
    levels: dict[int, tuple[float, float] | None] = field(default_factory=dict)  # `known_level` of each


def strip_inputs(products: Mapping[int, str], scratch: Path) -> StripInputs:
    """Each product's SOURCES table, image unit (BUNIT), and its image, bad pixels and UNCERT as
    read-only memory maps, for `stack.align_and_stack` to warp each strip as the combination reads
    it: plain products where they lie; tile-compressed ones read once and their planes written to
    ``.npy`` files in ``scratch`` (the same values: a compressed night stacks to the same bytes as
    a plain one). One opening of each product: its headers parsed once, not once for the table and
    again for the maps (~7 instead of ~15 ms a 2k light: ~0.3 s of a 40-light stack before its
    threads start)."""
    out = StripInputs()
    for fid, path in products.items():
        product = map_product(path, _PLANES, "SOURCES")
        if product.table is None:
            raise OSError(errno.EIO, "cannot read product (no SOURCES table)", path)
        out.sources[fid], out.units[fid] = _sources(product.table), str(product.header.get("BUNIT", "adu"))
        out.levels[fid] = known_level(product.header)
        out.mapped[fid] = _frame(product.planes if product.planes is not None else _spilled_planes(path, fid, scratch))
    return out


def _spilled_planes(path: str, fid: int, scratch: Path) -> dict[str, np.ndarray]:
    """A product that cannot be mapped as it lies (tile-compressed): its planes read once and
    written to ``.npy`` files in ``scratch``, mapped from there."""
    hdus = read_product_hdus(path)
    planes = {"PRIMARY": _spilled(hdus[0].data, scratch / f"{fid}-image.npy")}
    for name in _PLANES:
        if name in hdus and hdus[name].data is not None:
            planes[name] = _spilled(hdus[name].data, scratch / f"{fid}-{name.lower()}.npy")
    return planes


def _frame(planes: Mapping[str, np.ndarray | None]) -> MappedFrame:
    """The image (``"PRIMARY"``) with its BADPIX and UNCERT planes, those of its shape only."""
    image = planes["PRIMARY"]
    assert image is not None
    bad, uncert = (p if p is not None and p.shape == image.shape else None
                   for p in (planes.get("BADPIX"), planes.get("UNCERT")))
    return MappedFrame(image, bad, uncert)


#: The planes of a calibrated light a stack reads besides its image.
_PLANES = ("BADPIX", "UNCERT")


def _spilled(data: np.ndarray, path: Path) -> np.ndarray:
    np.save(path, np.asarray(data))
    return np.load(path, mmap_mode="r")


class WholeFrames:
    """A colour group's frames read whole (to be demosaiced), each once: ``load(id)`` the image
    (NaN on bad pixels), then ``variance(id)`` its UNCERT squared (or None)."""

    def __init__(self, products: Mapping[int, str]) -> None:
        self.products = products
        self.variances: dict[int, np.ndarray | None] = {}

    def load(self, fid: int) -> np.ndarray:
        hdus = read_product_hdus(self.products[fid])
        frame = _frame({name: hdus[name].data if name in hdus else None for name in ("PRIMARY", *_PLANES)})
        image = frame.rows(0, frame.shape[0], remember=True)  # its variance, next, takes the NaN map
        self.variances[fid] = frame.variance_rows(0, frame.shape[0])
        return image

    def variance(self, fid: int) -> np.ndarray | None:
        return self.variances.pop(fid, None)
