"""``ccdwatch show``: one frame, master, stack or product as the catalogue knows it (what calibrated
a light, with which masters, its history and its header), for the next morning's questions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sqlalchemy.orm import Session

from ccdwatch.catalog import Catalog, frames_by_path_or_id
from ccdwatch.catalog.queries import calibrated_versions, product_by_path
from ccdwatch.config import Config
from ccdwatch.models import Calibrated, Frame, Master, Stack
from ccdwatch.records import frame_record, iso, master_record, stack_record

__all__ = ["cmd_show"]


def _show_frame(s: Session, f: Frame) -> None:
    rec = frame_record(f)
    print(f"frame {f.id}: {Path(f.path).name}")
    for k, v in rec.items():
        if v is not None and k != "id":
            print(f"  {k:20s} {v}")
    if f.header_warnings:
        print("  header warnings: " + "; ".join(f.header_warnings))
    print("  seen as:")
    for sf in f.files:
        print(f"    {sf.path}  (first seen {iso(sf.first_seen)})")
    if f.imagetyp == "light":

        products = calibrated_versions(s, f.id)
        for p in products:
            tag = "current" if p.current else "superseded"
            print(f"  calibrated v{p.version} ({tag}): {p.path}")
            print(f"    bias #{p.bias_id}  dark #{p.dark_id} (scale {p.dark_scale})  flat #{p.flat_id}"
                  + (f"  PARTIAL, missing {p.missing}" if p.partial else ""))
            for mid in (p.bias_id, p.dark_id, p.flat_id):
                if mid is not None:
                    m = s.get(Master, mid)
                    if m is None:
                        continue
                    print(f"      master #{m.id} {m.kind} night {m.night} v{m.version}, {m.n_frames} frames, {m.path}")
        if not products and f.state_reason:
            print(f"  not calibrated: {f.state_reason}")
    print("  history:")
    for e in f.events:
        print(f"    {iso(e.at)}  {e.kind:12s} {e.detail or ''}")
    print("  header:")
    for k, v in (f.header or {}).items():
        print(f"    {k:8s} = {v!r}")


def cmd_show(cfg: Config, args: argparse.Namespace) -> int:
    ref: str = args.ref
    with Catalog(cfg.paths.database, writer=False, create=False) as cat, cat.reader() as s:
        kind, _, ident = ref.partition(":")
        if kind in ("master", "stack", "calibrated") and ident.isdigit():
            obj = s.get({"master": Master, "stack": Stack, "calibrated": Calibrated}[kind], int(ident))
            if obj is None:
                print(f"no {kind} with id {ident}", file=sys.stderr)
                return 1
            if isinstance(obj, Master):
                print(json.dumps(master_record(obj), indent=2, default=str))
            elif isinstance(obj, Stack):
                print(json.dumps(stack_record(obj), indent=2, default=str))
            elif isinstance(obj, Calibrated):
                frame = s.get(Frame, obj.frame_id)
                if frame is not None:
                    _show_frame(s, frame)
            return 0
        product = product_by_path(s, str(Path(ref).absolute()))
        if isinstance(product, Master):
            print(json.dumps(master_record(product), indent=2, default=str))
            return 0
        if isinstance(product, Stack):
            print(json.dumps(stack_record(product), indent=2, default=str))
            return 0
        by_product = s.get(Frame, product.frame_id) if product is not None else None
        frames = frames_by_path_or_id(s, ref) if product is None else [by_product] if by_product else []
        if len(frames) > 1:
            rows = "\n".join(f"  {f.id:>6}  {f.night or '-'}  {f.path}" for f in frames)
            print(f"{ref!r} matches {len(frames)}{'+' if len(frames) == 20 else ''} frames; give the id or more of "
                  f"the path:\n{rows}", file=sys.stderr)
            return 1
        if not frames:
            print(f"no frame, master or stack matches {ref!r}", file=sys.stderr)
            return 1
        _show_frame(s, frames[0])
    return 0
