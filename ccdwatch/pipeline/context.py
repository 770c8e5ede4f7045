"""What every stage of the pipeline works with: the configuration, the catalogue and the roots."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ccdwatch.catalog import Catalog
from ccdwatch.catalog.sites import this_owner
from ccdwatch.config import Config, site_name

if TYPE_CHECKING:
    from ccdwatch.fitsio.compress import Compression
    from ccdwatch.pipeline.durability import Unsynced


@dataclass(frozen=True)
class Context:
    """The configuration, catalogue and product roots of one pipeline (read-only)."""

    cfg: Config
    catalog: Catalog
    clock: Callable[[], float] = field(default=time.time)
    #: calibrated lights are not waited on to reach the disk (the ``watch`` daemon without a Dask
    #: cluster: `ccdwatch.pipeline.durability`); None: every product is fsynced before its row
    unsynced: Unsynced | None = None

    @cached_property
    def site(self) -> str:
        """The site this pipeline plans for: only its frames, masters and stacks."""
        return site_name(self.cfg)

    @property
    def master_sites(self) -> tuple[str, ...]:
        """Sites whose masters may calibrate this site's lights: its own, and those shared with it."""
        return (self.site, *(x for x in self.cfg.site.share_masters_from if x != self.site))

    @cached_property
    def owner(self) -> str:
        """``host:pid``: the holder of this pipeline's claims on work."""
        return this_owner()

    @property
    def claim_ttl(self) -> float:
        """Seconds a claim on a master or stack holds: the longest a job may take, and a margin."""
        return self.cfg.workers.job_timeout + 300.0

    @property
    def incoming(self) -> Path:
        return Path(self.cfg.paths.incoming).absolute()

    @property
    def products(self) -> Path:
        return Path(self.cfg.paths.products).absolute()

    @property
    def workdir(self) -> Path:
        """Scratch space of the jobs (memory-mapped spills); swept at start-up."""
        return self.products / ".work"

    @property
    def memory_budget(self) -> int:
        """Bytes one combination may hold in memory."""
        return int(self.cfg.masters.memory_budget_mb * 2**20)

    @property
    def max_data_bytes(self) -> int:
        """The largest image data a raw file may declare, in bytes."""
        return int(self.cfg.ingest.max_data_mb * 2**20)

    @property
    def min_free(self) -> int:
        """Free bytes a product write leaves on its disk, at least."""
        return int(self.cfg.watch.min_free_mb * 2**20)

    @property
    def compression(self) -> Compression | None:
        """How products are written (``[products] compress``); None: plain FITS."""
        p = self.cfg.products
        from ccdwatch.fitsio.compress import Compression

        return Compression(p.compress, p.quantize_level) if p.compress != "none" else None
