"""Cosmic-ray detection against ground truth: completeness, false positives, cost.

Run as ``python -m benchmarks.cosmics [--size 2048] [--stars 2500] [--rays 300] [--kind compact] [--lacosmic]``.
Exposes a synthetic light (the project's camera: sky, noise, hot pixels, a 2k-like star density
with some saturated stars) with cosmic rays of log-uniform energy at known places (``--kind
compact``: a binned camera's 2-4 pixel hits and tracks at any angle, FWHM 2.7 px), calibrates it
with the noise-free masters, and runs `ccdwatch.cosmics.detect` (and astroscrappy with
``--lacosmic``). Prints one JSON line: ray pixels above 5 sigma found (completeness), pixels
flagged that no ray hit (per frame and per Mpix), star centres flagged, and the median time (with that of the calibration arithmetic, ``(raw - bias - dark *
scale) / flat`` in numpy, for scale).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from ccdwatch import cosmics, synth
from ccdwatch.synth.rays import KINDS, scene, score


def _timed(fn: Any, repeat: int) -> tuple[np.ndarray, float]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def run(size: int, n_stars: int, n_rays: int, lacosmic: bool, repeat: int = 5, kind: str = "straight") -> dict[str, Any]:
    sc = scene(size, n_stars, n_rays, kind=kind, fwhm=2.7 if kind == "compact" else 3.0)
    result: dict[str, Any] = {"size": size, "stars": n_stars, "rays": n_rays, "kind": kind}
    found, seconds = _timed(lambda: cosmics.detect(sc.data, mask=sc.hot), repeat)
    # a bare numpy bound for scale: the calibration arithmetic of the same frame
    bias, dark, flat = (np.full(sc.data.shape, v, np.float32) for v in (1000.0, 10.0, 1.0))
    _, bound = _timed(lambda: (sc.data - bias - dark * np.float32(0.7)) / flat, repeat)
    result["fast"] = {**score(sc, found), "ms": round(1e3 * seconds, 1), "calibration_arithmetic_ms": round(1e3 * bound, 1),
                      "ratio_to_calibration_arithmetic": round(seconds / bound, 2)}
    gained, _ = _timed(lambda: cosmics.detect(sc.data, mask=sc.hot, gain=synth.Camera().gain), 1)
    result["fast_known_gain"] = score(sc, gained)
    if lacosmic and cosmics.lacosmic_available():
        found, seconds = _timed(lambda: cosmics.detect_lacosmic(sc.data, mask=sc.hot), 1)
        result["lacosmic"] = {**score(sc, found), "ms": round(1e3 * seconds, 1)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--stars", type=int, default=2500)
    p.add_argument("--rays", type=int, default=300)
    p.add_argument("--kind", choices=KINDS, default="straight")
    p.add_argument("--lacosmic", action="store_true")
    args = p.parse_args()
    print(json.dumps(run(args.size, args.stars, args.rays, args.lacosmic, kind=args.kind)))


if __name__ == "__main__":
    main()
