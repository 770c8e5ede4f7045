"""The per-stage timeline of a ``ccdwatch watch --once`` run, from its catalogue's timestamps.

Each row of the catalogue is stamped when it is committed (UTC): a frame when it is ingested, a
master, a calibrated light or a stack when its job has finished. Relative to the start of the
process, the first and last stamp of each kind show when each stage ran (a stage starts a little
before its first row: the first job's own time).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

#: stage -> table whose ``created_at`` stamps it
STAGES = {"ingest": "frames", "masters": "masters", "calibration": "calibrated", "stacks": "stacks"}


def timeline(db: Path, started: float, wall: float) -> dict[str, list[float]]:
    """``{stage: [first, last, n]}`` in s from ``started`` (epoch s), plus ``exit`` at ``wall``."""
    out: dict[str, list[float]] = {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for stage, table in STAGES.items():
            stamps = [datetime.fromisoformat(r[0]).replace(tzinfo=UTC).timestamp() - started
                      for r in con.execute(f"SELECT created_at FROM {table}")]  # noqa: S608 - fixed names
            if stamps:
                out[stage] = [min(stamps), max(stamps), len(stamps)]
    finally:
        con.close()
    out["exit"] = [wall, wall, 0]
    return out


def describe(tl: dict[str, list[float]]) -> str:
    """One line: ``ingest 0.62-1.20 (70), masters ...``."""
    return ", ".join(f"{k} {a:.2f}-{b:.2f}" + (f" ({int(n)})" if n else "") for k, (a, b, n) in tl.items())
