"""CPU time of `ccdwatch.qa.measure` alone, ms per call.

``python -m benchmarks.qa`` (``--repeat 30``, ``--fwhm 3``, ``--size 2048``, or FITS files as
arguments): on a synthetic calibrated light (a 2048 x 2048 frame, 250 stars, sky 400 ADU, noise
18 ADU, as tests/test_qa.py's 2k check) or on each given file's first image (less its BADPIX
plane, as the calibration job masks it), the process CPU time
(``time.process_time``: what another load on the machine disturbs least) of each of ``--repeat``
calls after a warm-up one. Prints one JSON line: per frame the median and the best ms per call,
and what the call measured. Run it with one thread per library (OMP_NUM_THREADS=1), as the workers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def synthetic(size: int, fwhm: float) -> np.ndarray:
    from ccdwatch import synth

    shape = (size, size)
    field = synth.star_field(shape, 250 * size * size // 2048**2, rng=np.random.default_rng(21),
                             flux_range=(300.0, 60000.0))
    image = synth.render_stars(shape, field, fwhm=fwhm, exptime=1.0) + 400.0
    image += np.random.default_rng(22).normal(0.0, 18.0, shape)
    return image.astype(np.float32)


def time_measure(image: np.ndarray, repeat: int, mask: np.ndarray | None = None) -> dict:
    from ccdwatch import qa

    quality, _ = qa.measure(image, mask=mask)  # warm-up (imports, first allocations)
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        qa.measure(image, mask=mask)
        times.append(1e3 * (time.process_time() - t0))
    return {"median_ms": round(statistics.median(times), 1), "best_ms": round(min(times), 1),
            "shape": list(image.shape), **quality.to_json()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="FITS frames (default: a synthetic light)")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--fwhm", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args(argv)
    out = {}
    if args.files:
        from astropy.io import fits

        for path in args.files:
            with fits.open(path) as hdus:  # a calibrated product's bad pixels, as the job masks them
                image = np.asarray(hdus[0].data, dtype=np.float32)
                mask = np.asarray(hdus["BADPIX"].data) > 0 if "BADPIX" in hdus else None
            out[path] = time_measure(image, args.repeat, mask)
    else:
        out["synthetic"] = time_measure(synthetic(args.size, args.fwhm), args.repeat)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
