"""A stack's header cards and MEMBERS table (content, never catalogue ids)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from astropy.io import fits

from ccdwatch import stack
from ccdwatch.products import to_fits_header


def width(texts: Iterable[str]) -> int:
    """Width of a FITS text column that holds every one of ``texts`` (at least 1)."""
    return max([1, *(len(t.encode("utf-8", "replace")) for t in texts)])


def stack_cards(spec: Any, result: stack.StackResult) -> tuple[fits.Header, fits.BinTableHDU]:
    """The stack's header and MEMBERS table: every member, used or rejected, by raw sha256 and
    file name (never by catalogue id), with its calibrated product's sha256 and its transform
    (``spec``: the job's `ccdwatch.jobs.tasks.StackSpec`)."""
    def raw_sha(fid: int) -> str:
        return spec.labels.get(fid, ("", ""))[0]

    def name(fid: int) -> str:
        return spec.labels.get(fid, ("", str(fid)))[1]

    header = to_fits_header(spec.header)
    header["REFSHA"] = raw_sha(result.reference)  # 64 hex digits: no room left for a comment
    header["REFFILE"] = name(result.reference)
    reasons = dict(spec.rejected)
    reasons.update({fid: f"alignment failed: {why}" for fid, why in result.failed.items()})
    used = [fid for fid, *_ in spec.members if fid not in reasons]
    header["NCOMBINE"] = (len(used), "frames combined")
    header["NREJECT"] = (len(reasons), "frames rejected (see the MEMBERS table)")
    header["TOTEXP"] = (float(sum(t for fid, _, t in spec.members if fid in used)), "total exposure combined, s")
    for fid, *_ in spec.members:
        if fid in reasons:
            header.add_history(f"rejected {name(fid)}: {reasons[fid]}"[:70])
        elif fid in result.scales and result.scales[fid].reason:
            header.add_history(f"unscaled {name(fid)}: {result.scales[fid].reason}"[:70])
    ids = [m[0] for m in spec.members]
    matrices = {fid: t.array.ravel() for fid, t in result.transforms.items()}
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="FILE", format=f"{width(name(i) for i in ids)}A", array=np.array([name(i) for i in ids])),
        fits.Column(name="RAWSHA", format="64A", array=np.array([raw_sha(i) for i in ids])),
        fits.Column(name="SHA256", format="64A", array=np.array([m[1] for m in spec.members])),
        fits.Column(name="EXPTIME", format="D", array=np.array([m[2] for m in spec.members])),
        fits.Column(name="USED", format="L", array=np.array([i in used for i in ids])),
        fits.Column(name="REASON", format="80A", array=np.array([reasons.get(i, "")[:80] for i in ids])),
        fits.Column(name="MATRIX", format="9D", array=np.array([matrices.get(i, np.full(9, np.nan)) for i in ids])),
        fits.Column(name="N_MATCH", format="J",
                    array=np.array([result.transforms[i].n_matches if i in result.transforms else -1 for i in ids])),
        fits.Column(name="WEIGHT", format="E",  # relative weight in the combination (stack.weights)
                    array=np.array([result.weights.get(i, np.nan) / max(result.weights.values(), default=1.0)
                                    for i in ids])),
        fits.Column(name="RMS_PX", format="E",
                    array=np.array([result.transforms[i].rms if i in result.transforms else np.nan for i in ids])),
        fits.Column(name="OFFSET", format="D", array=np.array([_first(result.offsets.get(i, np.nan)) for i in ids])),
        fits.Column(name="SCALE", format="D",  # flux scale about its sky (stack.normalisation); NaN: unscaled
                    array=np.array([result.scales[i].value if i in result.scales else np.nan for i in ids])),
        fits.Column(name="SCALE_N", format="J",  # stars the scale was measured from
                    array=np.array([result.scales[i].n_stars if i in result.scales else -1 for i in ids])),
    ], name="MEMBERS")
    return header, table


def _first(offset: float | tuple[float, ...]) -> float:
    """A frame's sky offset (of its first plane, for planes)."""
    return float(offset if isinstance(offset, float | int) else offset[0])
