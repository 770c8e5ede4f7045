"""The morning's records: frames, masters and stacks as stable snake_case rows, and their output
as a table, CSV or JSON (the CLI's listings and the report read them)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ccdwatch.models import Frame, Master, Stack

FORMATS = ("table", "csv", "json")


# ---------------------------------------------------------------------- output helpers
def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def round_to(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def _adc_bits(f: Frame) -> int | None:
    """Bits of a CMOS whose values are shifted into 16 (e.g. 12), else None."""
    shift = ((f.classification or {}).get("pixels") or {}).get("adc_shift") or 0
    return 16 - int(shift) if shift else None


def _overscan(f: Frame) -> str | None:
    """How the frame's overscan is handled, e.g. ``"median [2049:2080,1:2048] -> [1:2048,1:2048]"``."""
    plan = f.overscan or {}
    if not plan.get("biassec") and not plan.get("trimsec"):
        return None
    how = "trim only" if not plan.get("biassec") else (
        f"fit{plan.get('order', 1)}" if plan.get("method") == "fit" else str(plan.get("method")))
    return f"{how} {plan.get('biassec') or ''} -> {plan.get('trimsec') or 'whole frame'}".replace("  ", " ")


def frame_record(f: Frame) -> dict[str, Any]:
    """The stable JSON shape of a frame (documented in the README)."""
    return {
        "id": f.id,
        "path": f.path,
        "relpath": f.relpath,
        "imagetyp": f.imagetyp,
        "classified_by": (f.classification or {}).get("by"),
        "type_source": f.type_source,
        "bayer_pattern": f.bayer_pattern,
        "adc_bits": _adc_bits(f),
        "exptime": f.exptime,
        "filter": f.filter,
        "object": f.object,
        "date_obs": iso(f.date_obs),
        "night": f.night,
        "state": f.state,
        "state_reason": f.state_reason,
        "sha256": f.sha256,
        "size": f.size,
        "binning": f"{f.xbin}x{f.ybin}" if f.xbin else None,
        "naxis1": f.naxis1,
        "naxis2": f.naxis2,
        "ccd_temp": f.ccd_temp,
        "set_temp": f.set_temp,
        "gain": f.gain,
        "offset": f.offset,
        "instrument": f.instrument,
        "telescope": f.telescope,
        "ra_deg": f.ra_deg,
        "dec_deg": f.dec_deg,
        "camera_key": f.camera_key,
        "group_key": f.group_key,
        "n_stars": f.n_stars,
        "fwhm": round_to(f.fwhm),
        "elongation": round_to(f.elongation),
        "sky": round_to(f.sky, 2),
        "sky_noise": round_to(f.sky_noise, 3),
        "saturated_fraction": round_to(f.saturated_fraction, 6),
        "cosmic_rays": f.cosmic_rays,
        "overscan": _overscan(f),
        "overscan_level": round_to(f.overscan_level, 3),
        "tries": f.tries,
        "last_error": f.last_error,
        "created_at": iso(f.created_at),
        "site": f.site,
    }


def master_record(m: Master) -> dict[str, Any]:
    return {
        "id": m.id, "kind": m.kind, "night": m.night, "version": m.version, "exptime": m.exptime,
        "filter": m.filter, "ccd_temp": m.ccd_temp, "n_frames": m.n_frames, "method": m.method,
        "bias_subtracted": m.bias_subtracted, "dark_subtracted": m.dark_subtracted,
        "bias_id": m.bias_id, "dark_id": m.dark_id, "mean": round_to(m.mean), "noise": round_to(m.noise),
        "hot_pixels": m.hot_pixels, "date_start": iso(m.date_start), "date_end": iso(m.date_end),
        "retired": m.retired,
        "path": m.path, "sha256": m.sha256, "preview": m.preview_path, "camera_key": m.camera_key,
        "inputs": [i.frame_id for i in m.inputs], "params": m.params,
        "ccdwatch_version": m.ccdwatch_version, "created_at": iso(m.created_at), "site": m.site,
    }


def stack_record(s: Stack) -> dict[str, Any]:
    return {
        "id": s.id, "night": s.night, "target": s.target, "filter": s.filter, "exptime": s.exptime,
        "version": s.version, "current": s.current, "n_used": s.n_used, "n_rejected": s.n_rejected,
        "total_exposure": s.total_exposure, "reference_frame_id": s.reference_frame_id, "method": s.method,
        "path": s.path, "sha256": s.sha256, "preview": s.preview_path, "group_key": s.group_key,
        "members": [{"frame_id": m.frame_id, "used": m.used, "reason": m.reason, "transform": m.transform}
                    for m in s.members],
        "params": s.params, "created_at": iso(s.created_at), "site": s.site,
    }


def emit(rows: list[dict[str, Any]], fmt: str, columns: Sequence[str], out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        json.dump(rows, out, indent=2, default=str)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()) if rows else list(columns),
                                extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
        return
    if not rows:
        out.write("(no rows)\n")
        return
    from astropy.table import Table

    def cell(v: Any) -> Any:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    table = Table(rows=[[cell(r.get(c)) for c in columns] for r in rows], names=list(columns))
    for line in table.pformat(max_lines=-1, max_width=-1):
        out.write(line.rstrip() + "\n")


#: The table columns of ``frames``, ``masters`` and ``stacks`` (CSV and JSON carry every field).
FRAME_COLUMNS = ("id", "night", "date_obs", "imagetyp", "exptime", "filter", "object", "state", "n_stars",
                 "fwhm", "sky", "name")
MASTER_COLUMNS = ("id", "kind", "night", "version", "exptime", "ccd_temp", "filter", "n_frames", "method",
                  "mean", "noise", "hot_pixels", "name")
STACK_COLUMNS = ("id", "night", "target", "filter", "exptime", "version", "n_used", "n_rejected",
                 "total_exposure", "name")


def emit_named(rows: list[dict[str, Any]], fmt: str, columns: Sequence[str]) -> None:
    """Like :func:`emit`; tables and CSV get a short ``name`` (file name), JSON keeps ``path`` only.

    Rows of several sites (telescopes sharing a catalogue, listed without ``--site``) get a
    ``site`` column after the first, or two telescopes' frames of the same name look alike."""
    if fmt != "json":
        for r in rows:
            r["name"] = Path(r["path"]).name
    if len({r.get("site") for r in rows}) > 1 and "site" not in columns:
        columns = (columns[0], "site", *columns[1:])
    emit(rows, fmt, columns)
