"""Shared fixtures: configs in temporary directories, the real night when present.

Helpers that tests import live in :mod:`tests.helpers`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccdwatch.config import Config

from .helpers import REAL_NIGHT, make_config


@pytest.fixture
def real_night() -> Path:
    if not (REAL_NIGHT.is_dir() and any(REAL_NIGHT.glob("*.fit"))):
        pytest.skip("the real PHY241 night (../shared/data/phy241_m51) is not present")
    return REAL_NIGHT


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)
