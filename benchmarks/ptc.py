"""Cost of the gain measured from the flats (`ccdwatch.ptc`): a master flat's job with and without it.

Run as ``python -m benchmarks.ptc [--size 2048] [--flats 5] [--repeat 5]``. Writes a synthetic
master bias (with its RDNOIADU) and raw flats into a temporary directory, runs the real job
(`tasks.build_master`) in this process, alternating ``measure_gain`` on and off, times
`ptc.photon_transfer_gain` alone on the same bias-subtracted flats, and prints one JSON line:
median wall times (ms), their ratio and the gain measured against the truth.
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

from ccdwatch import calib, noise, ptc, synth
from ccdwatch.fitsio import sha256_file
from ccdwatch.jobs import tasks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--flats", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    camera = synth.Camera(shape=(args.size, args.size), gain=1.5)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        biases = [synth.quantise(synth.expose(camera, kind="bias", exptime=0.0, rng=rng)).astype(np.float32)
                  for _ in range(5)]
        bias = calib.combine(biases, method="sigma_clip")
        rn = noise.pair_noise(biases)
        fits.PrimaryHDU(np.asarray(bias, np.float32), header=fits.Header({"RDNOIADU": rn})).writeto(root / "bias.fits")
        paths = []
        for i in range(args.flats):
            raw = synth.quantise(synth.expose(camera, kind="flat", exptime=3.0, rng=rng))
            paths.append(synth.write_fits(root / f"flat_{i}.fits", raw, {"IMAGETYP": "Flat Field"}))
        frames = tuple(((str(q),), sha256_file(q)) for q in paths)
        times: dict[bool, list[float]] = {True: [], False: []}
        gain = None
        for _ in range(args.repeat):
            for measure in (False, True):
                spec = tasks.MasterSpec(
                    kind="flat", frames=frames, bias_path=str(root / "bias.fits"), dark_path=None, dark_scale=None,
                    method="median", sigma=3.0, memory_budget=1 << 30, hot_pixel_sigma=5.0,
                    out_path=str(root / f"master_{measure}.fits"), header={},
                    inputs_table=tuple((Path(q[0]).name, h) for q, h in frames), workdir=str(root / "w"),
                    max_data_bytes=1 << 30, allow_compressed=False, preview_path=None, preview_title="",
                    measure_gain=measure)
                t0 = time.perf_counter()
                result = tasks.build_master(spec)
                times[measure].append(time.perf_counter() - t0)
                gain = result.gain if measure else gain
        subtracted = [np.asarray(fits.getdata(q), dtype=np.float32) - bias for q in paths]
        alone = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ptc.photon_transfer_gain(subtracted, read_noise=rn)
            alone.append(1000 * (time.perf_counter() - t0))
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(json.dumps({
            "size": args.size, "flats": args.flats,
            "build_master_ms": {"without": round(ms[False], 1), "with": round(ms[True], 1)},
            "ratio": round(ms[True] / ms[False], 3),
            "photon_transfer_gain_ms": round(statistics.median(alone), 1),
            "gain": gain, "true_gain": camera.gain,
        }))


if __name__ == "__main__":
    main()
