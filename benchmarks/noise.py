"""Cost of the noise model: a light's calibration job with and without its uncertainty plane, and
a stack of such lights with and without inverse-variance weighting and its own UNCERT/EXPMAP.

Run as ``python -m benchmarks.noise [--size 2048] [--repeat 5] [--frames 5]``. Writes synthetic
masters (with their noise cards) and lights into a temporary directory, runs the real jobs
(`tasks.calibrate_light`, `tasks.stack_group`) in this process, alternating the two variants, and
prints one JSON line: median wall times (ms), the extra per light (and the arithmetic of the
uncertainty alone, `noise.light_sigma`), and the product sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from ccdwatch import calib, noise, synth
from ccdwatch.detector import NoiseSpec
from ccdwatch.fitsio import sha256_file
from ccdwatch.jobs import tasks


def _masters(camera: synth.Camera, rng: np.random.Generator, root: Path) -> dict[str, str]:
    def shoot(kind: str, **kw) -> np.ndarray:
        return synth.quantise(synth.expose(camera, kind=kind, rng=rng, **kw)).astype(np.float32)

    biases = [shoot("bias", exptime=0.0) for _ in range(5)]
    bias = calib.combine(biases, method="sigma_clip")
    darks = [calib.calibrate(shoot("dark", exptime=300.0), bias=bias) for _ in range(3)]
    dark = calib.combine(darks, method="median")
    flats = [calib.calibrate(shoot("flat", exptime=3.0), bias=bias) for _ in range(3)]
    scales = [1 / calib.robust_median(f) for f in flats]
    flat = calib.normalise_flat(calib.combine(flats, method="median", scales=scales))
    cards = {"bias": {"PIXNOISE": noise.combined_noise(noise.pair_noise(biases), 5, "sigma_clip"),
                      "RDNOIADU": noise.pair_noise(biases)},
             "dark": {"PIXNOISE": noise.combined_noise(noise.pair_noise(darks), 3, "median")},
             "flat": {"PIXNOISE": noise.combined_noise(noise.pair_noise(flats, scales), 3, "median")}}
    paths = {}
    for kind, data in (("bias", bias), ("dark", dark), ("flat", flat)):
        header = fits.Header(cards[kind])
        hdus = fits.HDUList([fits.PrimaryHDU(np.asarray(data, np.float32), header=header)])
        if kind == "dark":
            hdus.append(fits.ImageHDU(calib.hot_pixel_mask(dark).astype(np.uint8), name="HOTPIX"))
        paths[kind] = str(root / f"{kind}.fits")
        hdus.writeto(paths[kind])
    return paths


def _lights(camera: synth.Camera, rng: np.random.Generator, root: Path, n: int) -> list[Path]:
    stars = synth.star_field(camera.shape, 200, rng=rng, flux_range=(50.0, 5000.0), margin=40)
    out = []
    for i in range(n):
        moved = synth.transform_stars(stars, dx=float(rng.uniform(-5, 5)), dy=float(rng.uniform(-5, 5)),
                                      rotation_deg=0.0)
        raw = synth.quantise(synth.expose(camera, kind="light", rng=rng, exptime=200.0, sky=2.0, stars=moved))
        path = root / f"light_{i}.fits"
        fits.PrimaryHDU(raw.astype(np.int32) - 32768, header=fits.Header({"BZERO": 32768})).writeto(path)
        out.append(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--frames", type=int, default=5)
    args = p.parse_args()
    camera = synth.Camera(shape=(args.size, args.size))
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        masters = _masters(camera, rng, root)
        lights = _lights(camera, rng, root, args.frames)
        variants = {"adu": None, "uncert": NoiseSpec(camera.gain, "benchmark", None, "unknown")}
        times: dict[str, list[float]] = {k: [] for k in variants}
        products: dict[str, dict[int, str]] = {k: {} for k in variants}
        for rep in range(args.repeat):
            for k, spec_noise in variants.items():
                for i, light in enumerate(lights if rep == 0 else lights[:1]):
                    out = root / f"{k}_{i}.fits"
                    spec = tasks.CalibrateSpec(
                        frame_id=i, raw_paths=(str(light),), raw_sha256=sha256_file(light), bias_path=masters["bias"],
                        dark_path=masters["dark"], dark_scale=200 / 300, flat_path=masters["flat"], out_path=str(out),
                        header={}, saturation=None, detect_sigma=5.0, max_data_bytes=1 << 30, allow_compressed=False,
                        noise=spec_noise)
                    t0 = time.perf_counter()
                    tasks.calibrate_light(spec)
                    times[k].append(time.perf_counter() - t0)
                    products[k][i] = str(out)
        stack_times: dict[str, list[float]] = {"none": [], "ivar": []}
        for _ in range(max(1, args.repeat // 2)):
            for k, src in (("none", "adu"), ("ivar", "uncert")):
                spec_s = tasks.StackSpec(
                    products=products[src], reference=0, method="sigma_clip", sigma=3.0, memory_budget=1 << 30,
                    workdir=str(root / "w"), out_path=str(root / f"stack_{k}.fits"), header={},
                    members=tuple((i, "", 200.0) for i in products[src]), rejected=(), preview_path=None,
                    preview_title="", weights=k)
                t0 = time.perf_counter()
                tasks.stack_group(spec_s)
                stack_times[k].append(time.perf_counter() - t0)
        with fits.open(lights[0]) as raw_hdus:  # the uncertainty's arithmetic alone, on the same light
            raw = np.asarray(raw_hdus[0].data)
        m = {k: np.asarray(fits.getdata(v), dtype=np.float32) for k, v in masters.items()}
        calibrated = calib.calibrate(raw, bias=m["bias"], dark=m["dark"], dark_scale=200 / 300, flat=m["flat"])
        sigma_ms = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            noise.light_sigma(raw, calibrated, gain=camera.gain, read_noise=camera.read_noise, bias=m["bias"],
                              dark=m["dark"], dark_scale=200 / 300, flat=m["flat"], bias_noise=1.0, dark_noise=1.0,
                              flat_noise=0.003, scale=camera.gain)
            sigma_ms.append(1000 * (time.perf_counter() - t0))
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        sms = {k: 1000 * statistics.median(v) for k, v in stack_times.items()}
        print(json.dumps({
            "size": args.size, "frames": args.frames,
            "calibrate_light_ms": {k: round(v, 1) for k, v in ms.items()},
            "extra_ms_per_light": round(ms["uncert"] - ms["adu"], 1),
            "light_sigma_ms": round(statistics.median(sigma_ms), 1),
            "ratio": round(ms["uncert"] / ms["adu"], 3),
            "product_mb": {k: round(Path(products[k][0]).stat().st_size / 2**20, 2) for k in products},
            "stack_group_ms": {k: round(v, 1) for k, v in sms.items()},
            "stack_ratio": round(sms["ivar"] / sms["none"], 3),
            "stack_mb": {k: round((root / f"stack_{k}.fits").stat().st_size / 2**20, 2) for k in sms},
        }))


if __name__ == "__main__":
    main()
