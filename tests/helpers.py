"""Helpers shared by the tests (import them from here, not from conftest): configs rooted in a
temporary directory, and where the real night lies."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ccdwatch.config import Config, IngestConfig, MastersConfig, PathsConfig, StackConfig, WatchConfig

REAL_NIGHT = Path(__file__).resolve().parents[2] / "shared" / "data" / "phy241_m51"


def make_config(tmp_path: Path, *, incoming: Path | None = None, **sections: dict[str, Any]) -> Config:
    """A config rooted in tmp_path with short settle times suited to tests."""
    incoming = incoming or tmp_path / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    cfg = Config(
        paths=PathsConfig(incoming=incoming, products=tmp_path / "products",
                          database=str(tmp_path / "state" / "ccdwatch.db")),
        watch=WatchConfig(settle_seconds=0.3, tick_interval=0.5, rescan_interval=0.0, poll_interval=0.2),
        masters=MastersConfig(settle_seconds=0.0),
        stack=StackConfig(quiet_minutes=0.0),
        ingest=IngestConfig(),
    )
    replace = {}
    for name, values in sections.items():
        replace[name] = dataclasses.replace(getattr(cfg, name), **values)
    return dataclasses.replace(cfg, **replace)
