"""How many rows of its frames `ccdwatch.calib.combine` takes at once: pure arithmetic, no numpy.

The daemon sizes a master's job with it (`ccdwatch.jobs.memory.combine_peak`) before it has loaded
numpy, which it never needs to plan masters: ~0.15 s at the start of every night, while the workers
waited for their first master.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("ccdwatch.calib")  # the combination's messages, as before this module

#: Float32 copies of the strip stack alive at once, per method (stack, sorted planes, deviations, sorted
#: deviations, masks, float64 per-pixel sums), used to size the strips against the memory budget.
WORKING_COPIES = {"mean": 2, "median": 3, "sigma_clip": 7}

#: Largest strip stack (bytes of float32 frame data) combined at once, whatever the budget: the per-pixel
#: work then runs on planes that stay in the CPU cache (L2/L3), several times faster than streaming strips
#: of the whole budget through memory. Results do not depend on it.
STRIP_CACHE_BYTES = 8 << 20


def strip_rows(nframes: int, ny: int, nx: int, *, method: str, memory_budget: int, threads: int) -> int:
    """Rows per strip: the strip stack and the method's temporaries of every thread within the
    budget, the strip stack itself within `STRIP_CACHE_BYTES`; at least one row."""
    bytes_per_row = nframes * nx * 4 * WORKING_COPIES[method] + nx * 32
    rows = max(1, min(ny, int(memory_budget // max(1, int(threads)) // bytes_per_row))) if ny else 1
    rows = max(1, min(rows, STRIP_CACHE_BYTES // (nframes * nx * 4 or 1)))
    if memory_budget < bytes_per_row:
        logger.warning("memory budget %d B is below one row of %d frames (%d B); using 1-row strips",
                       memory_budget, nframes, bytes_per_row)
    return rows
