"""Packages whose names are loaded on first use (PEP 562), so that importing one of their
submodules does not load all the others: `ccdwatch.fitsio` (the daemon's start-up names and
sweeps files without astropy or numpy), `ccdwatch.report` (the workers that draw its pictures
load no catalogue)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["module_getattr"]


def module_getattr(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each name of ``homes`` (name -> submodule) is
    imported from ``package.<submodule>`` when first asked for and kept in the package's namespace."""
    namespace = vars(sys.modules[package])

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        namespace[name] = value
        return value

    return __getattr__
