"""CPU time of the sigma clipping (`ccdwatch.rejection`) and the median (`ccdwatch.orderstats`) in
cache-sized pixel blocks, against the same on the whole strip at once, measured in the same run.

``python -m benchmarks.rejection`` (``--repeat 7``): on seeded normal noise with outliers and
missing values, for the two shapes that matter, as the combinations cut them (a stack's strip of 40 frames of
2048 x 2048, `stripwarp.strip_rows`, and a master's of 10, `strips.strip_rows`: 102 rows each), the median process CPU time
(``time.process_time``) of `clip_keep`, `sigma_clip` and `median_valid` as they run (blocks of
`orderstats.BLOCK_BYTES`) and with one block the size of the strip (the reference). Prints one JSON
line per shape: ms per call, the ratio blocks / whole and whether the results are identical.
Run it with one thread per library (OMP_NUM_THREADS=1), as the workers.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from unittest import mock

import numpy as np

from ccdwatch import orderstats, rejection, strips


def strip(nframes: int, npix: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(100.0, 5.0, (nframes, npix)).astype(np.float32)
    values[nframes // 2, ::97] += 200.0  # cosmic rays, satellites
    values[1, ::50] = np.nan  # pixels off a dithered frame's footprint
    return values


def cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    from ccdwatch import stripwarp

    shapes = (("stack strip", 40, stripwarp.strip_rows(40, 2048, 2048)),
              ("master strip", 10, strips.strip_rows(10, 2048, 2048, method="sigma_clip", memory_budget=1 << 30,
                                                     threads=2)))
    for label, nframes, rows in shapes:
        values = strip(nframes, rows * 2048)
        whole = mock.patch.object(orderstats, "BLOCK_PIXELS", (values.shape[1], values.shape[1]))
        calls = {"clip_keep": functools.partial(rejection.clip_keep, values, 3.0, 5, 4.0),
                 "sigma_clip": functools.partial(rejection.sigma_clip, values, 3.0, 5, 4.0),
                 "median_valid": functools.partial(orderstats.median_valid, values, rejection.count_valid(values))}
        blocked = {k: cpu_ms(fn, args.repeat) for k, fn in calls.items()}
        results = [fn() for fn in calls.values()]
        with whole:
            reference = {k: cpu_ms(fn, args.repeat) for k, fn in calls.items()}
            same = [np.array_equal(a, b, equal_nan=True) for a, b in zip(results, [fn() for fn in calls.values()],
                                                                          strict=True)]
        print(json.dumps({"shape": label, "frames": nframes, "pixels": values.shape[1],
                          "ms": {k: round(v, 1) for k, v in blocked.items()},
                          "whole_ms": {k: round(v, 1) for k, v in reference.items()},
                          "ratio": {k: round(blocked[k] / reference[k], 3) for k in blocked},
                          "identical": all(same)}))


if __name__ == "__main__":
    main()
