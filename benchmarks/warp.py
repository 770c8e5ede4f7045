"""Warp interpolation: stacked star width and cost, bilinear against Lanczos.

Run as ``python -m benchmarks.warp [--size 2048] [--frames 8] [--fwhm 2.5]``. Renders the same
star field (known positions) into dithered, rotated frames with sky and noise, aligns each on the
first with ``align.find_transform``, warps it with each method, stacks by mean, and measures the
FWHM of the stack (``qa.measure``) against a single frame's, and the warp's time per frame.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from ccdwatch import align, qa, synth


def frames(size: int, n: int, fwhm: float, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (size, size)
    stars = synth.star_field(shape, 150, rng=rng, flux_range=(200.0, 20000.0), margin=40)
    out = []
    for i in range(n):
        moved = synth.transform_stars(stars, dx=float(rng.uniform(-6, 6)), dy=float(rng.uniform(-6, 6)),
                                      rotation_deg=0.3 * i)
        image = synth.render_stars(shape, moved, fwhm=fwhm, exptime=1.0) + 100.0
        out.append((image + rng.normal(0.0, np.sqrt(image + 25.0))).astype(np.float32))
    return out


def run(size: int, n: int, fwhm: float) -> dict[str, object]:
    images = frames(size, n, fwhm)
    ref_quality, ref_sources = qa.measure(images[0])
    result: dict[str, object] = {"size": size, "frames": n, "true_fwhm": fwhm, "single_fwhm": ref_quality.fwhm}
    transforms = []
    for img in images[1:]:
        q, src = qa.measure(img)
        transforms.append(align.find_transform(src, ref_sources))
    for method in ("bilinear", "bicubic", "lanczos"):
        times, warped = [], [images[0]]
        for img, t in zip(images[1:], transforms, strict=True):
            start = time.perf_counter()
            warped.append(align.warp(img, t, output_shape=img.shape, method=method))
            times.append(time.perf_counter() - start)
        stacked = np.nanmean(np.stack(warped), axis=0)
        q, _ = qa.measure(stacked)
        result[method] = {"stack_fwhm": q.fwhm, "fwhm_ratio": q.fwhm / ref_quality.fwhm,
                          "warp_ms": 1e3 * statistics.median(times), "stack_sky_noise": q.sky_noise}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--fwhm", type=float, default=2.5)
    args = p.parse_args()
    print(json.dumps(run(args.size, args.frames, args.fwhm)))


if __name__ == "__main__":
    main()
