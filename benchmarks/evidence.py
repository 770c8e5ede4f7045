"""CPU cost of the pixel evidence that types each ingested frame (`ccdwatch.evidence.measure`).

Run as ``python -m benchmarks.evidence [--size 2048] [--repeat 15] [--big]``, one core (OpenCV
limited to one thread, as the pool's workers are). Times `measure` on synthetic uint16 frames of
``ccdwatch.synth`` - a bias, a dark with cosmic rays, a flat and a light star field - best CPU time
(``time.process_time``) of ``--repeat`` calls each; ``--big`` adds one 6388x9576 (61 Mpix) light.
Prints one JSON line: ms per frame by kind. To compare two versions, run it in each checkout.
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np

from ccdwatch import evidence, synth


def _frames(shape: tuple[int, int], kinds: tuple[str, ...]) -> dict[str, np.ndarray]:
    cam = synth.Camera(shape=shape)
    rng = np.random.default_rng(1)
    shots = {
        "bias": lambda: synth.expose(cam, kind="bias", exptime=0.0, rng=rng),
        "dark": lambda: synth.expose(cam, kind="dark", exptime=300.0, rng=rng, cosmic_rays=50),
        "flat": lambda: synth.expose(cam, kind="flat", exptime=1.0, rng=rng),
        "light": lambda: synth.expose(cam, kind="light", exptime=60.0, rng=rng, sky=5.0, cosmic_rays=50,
                                      stars=synth.star_field(shape, 400, rng=rng, flux_range=(200.0, 20000.0))),
    }
    return {kind: synth.quantise(shots[kind]()) for kind in kinds}


def _best_ms(data: np.ndarray, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        evidence.measure(data)
        best = min(best, time.process_time() - t)
    return round(best * 1e3, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--big", action="store_true", help="also one 6388x9576 light")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    result = {kind: _best_ms(data, args.repeat)
              for kind, data in _frames((args.size, args.size), ("bias", "dark", "flat", "light")).items()}
    if args.big:
        result["light_61mpix"] = _best_ms(_frames((6388, 9576), ("light",))["light"], max(3, args.repeat // 5))
    print(json.dumps({"size": args.size, "ms_per_frame": result}))


if __name__ == "__main__":
    main()
