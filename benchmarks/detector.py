"""Detector steps of issue 16: overscan and trim, and compressed products; their cost per frame.

Run as ``python -m benchmarks.detector [--size 2048] [--repeat 3] [--night]``. Prints one JSON line:

* ``overscan``: seconds per ``size`` x ``size`` frame to calibrate a raw frame (bias, scaled dark,
  flat) as before, and with its 32-column overscan strip subtracted (``median``, ``fit``) and
  trimmed first, and their ratios (one run, one machine: compare the ratios);
* ``compress``: for a calibrated float32 frame (sky, stars, noise) and a uint16 raw frame of that
  size, the product file's size and its write (``write_product``) and read (``read_product_hdus``)
  time, plain, ``gzip`` and ``rice``;
* ``night`` (with ``--night``): the frame-to-frame spread (rms and peak to peak, ADU) of the sky
  level of identical exposures on a synthetic night whose bias drifts, reduced with and without
  the overscan (the pipeline end to end, as ``tests/test_overscan_night.py``).
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

from ccdwatch import calib, synth
from ccdwatch.fitsio import Compression, read_product, read_product_hdus, write_product
from ccdwatch.headers.sections import OverscanPlan

OVERSCAN = 32


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def overscan_cost(size: int, repeat: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    raw = np.clip(rng.normal(1400.0, 20.0, (size, size + OVERSCAN)), 0, 65535).astype(np.uint16)
    bias = rng.normal(0.0, 2.0, (size, size)).astype(np.float32)
    dark = rng.normal(5.0, 1.0, (size, size)).astype(np.float32)
    flat = rng.normal(1.0, 0.01, (size, size)).astype(np.float32)
    whole = np.ascontiguousarray(raw[:, :size])
    sections = {"biassec": f"[{size + 1}:{size + OVERSCAN},1:{size}]", "trimsec": f"[1:{size},1:{size}]"}
    plans = {m: OverscanPlan(method=m, order=1, **sections) for m in ("median", "fit")}

    def plain() -> None:
        calib.calibrate(whole, bias=bias, dark=dark, dark_scale=0.5, flat=flat)

    def corrected(plan: OverscanPlan) -> None:
        image, _ = plan.apply(raw)
        calib.calibrate(image, bias=bias, dark=dark, dark_scale=0.5, flat=flat)

    steps = {"calibrate_s": plain}
    for method, plan in plans.items():
        steps[f"overscan_{method}_s"] = lambda p=plan: corrected(p)
        steps[f"overscan_{method}_only_s"] = lambda p=plan: p.apply(raw)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeat):  # interleaved: a busy neighbour slows every step alike
        for key, fn in steps.items():
            times[key].append(_best(fn, 1))
    out = {k: min(v) for k, v in times.items()}
    for method in plans:
        out[f"ratio_{method}"] = out[f"overscan_{method}_s"] / out["calibrate_s"]
    return {k: round(v, 4) for k, v in out.items()}


def compress_cost(size: int, repeat: int, work: Path) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(2)
    stars = synth.star_field((size, size), 300, rng=rng, flux_range=(200.0, 20000.0))
    light = synth.render_stars((size, size), stars, fwhm=3.0, exptime=1.0) + 400.0
    images = {"calibrated_float32": (light + rng.normal(0.0, np.sqrt(light * 0.7 + 64.0))).astype(np.float32),
              "raw_uint16": np.clip(light + 1000.0 + rng.normal(0.0, 20.0, light.shape), 0, 65535).astype(np.uint16)}
    out: dict[str, dict[str, float]] = {}
    for label, image in images.items():
        for method in ("none", "gzip", "rice"):
            how = Compression(method, 16.0) if method != "none" else None
            path = work / f"{label}-{method}.fits"
            write = _best(lambda i=image, h=how, p=path: write_product(p, fits.HDUList([fits.PrimaryHDU(i)]),
                                                                       compression=h), repeat)
            read = _best(lambda p=path: read_product_hdus(p), repeat)
            back = read_product(path)[1]
            err = float(np.max(np.abs(back.astype(np.float64) - image)))
            out[f"{label}/{method}"] = {"mb": round(path.stat().st_size / 1e6, 2), "write_s": round(write, 3),
                                        "read_s": round(read, 3), "max_error": round(err, 4)}
    return out


def night_spread(work: Path) -> dict[str, float]:
    from sqlalchemy import select

    from ccdwatch.catalog import Catalog
    from ccdwatch.config import Config, MastersConfig, PathsConfig, StackConfig, WatchConfig
    from ccdwatch.config_data import OverscanConfig
    from ccdwatch.daemon.watch import Watcher
    from ccdwatch.models import Calibrated, Frame
    from ccdwatch.pipeline import Pipeline

    camera = synth.Camera(shape=(160, 224), overscan=OVERSCAN)
    out: dict[str, float] = {}
    for label, use_header in (("with_overscan", True), ("without", False)):
        root = work / label
        cfg = Config(paths=PathsConfig(incoming=root / "in", products=root / "products", database=str(root / "c.db")),
                     watch=WatchConfig(rescan_interval=0.0), masters=MastersConfig(settle_seconds=0.0),
                     stack=StackConfig(quiet_minutes=0.0), overscan=OverscanConfig(use_header=use_header))
        truth = synth.make_night(cfg.paths.incoming, camera=camera, seed=21, n_bias=5, n_dark=5, n_flat=5,
                                 filters=("V",), n_light=6, light_exptime=200.0, dark_exptime=300.0, sky=2.0,
                                 n_stars=40, bias_drift=8.0)
        with Catalog(cfg.paths.database) as cat:
            with Pipeline(cfg, cat) as pipe:
                Watcher(cfg, pipe, progress=False).run_once()
            with cat.reader() as s:
                paths = s.scalars(select(Calibrated.path).join(Frame, Frame.id == Calibrated.frame_id)
                                  .where(Calibrated.current).order_by(Frame.date_obs)).all()
        levels = [float(np.nanmedian(read_product(p)[1][:, :camera.shape[1]])) for p in paths]
        out[f"{label}_rms_adu"] = round(statistics.pstdev(levels), 3)
        out[f"{label}_ptp_adu"] = round(max(levels) - min(levels), 3)
        out["bias_drift_rms_adu"] = round(statistics.pstdev(truth.bias_offsets["light"]), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--night", action="store_true", help="also reduce the drifting-bias night twice")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"size": args.size, "overscan": overscan_cost(args.size, args.repeat),
                  "compress": compress_cost(args.size, args.repeat, Path(tmp))}
        if args.night:
            result["night"] = night_spread(Path(tmp) / "night")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
