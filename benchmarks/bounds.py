"""Stage bounds: what bare numpy + astropy need for the same work, with nothing else around it.

Run as ``python -m benchmarks.bounds MANIFEST OUT_DIR``; prints one JSON line with the timings:

``read_per_frame``
    ``astropy.io.fits.getdata`` of every raw frame (uint16 with BZERO), s per frame.
``calibrate_per_light``
    per light: read, ``(raw - bias - dark * t/t_dark) / flat`` in float32, write float32 FITS, s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits


def main(manifest_path: str, out: str) -> None:
    m = json.loads(Path(manifest_path).read_text())
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = m["files"]
    everything = [p for kind in ("bias", "dark", "flat", "light") for p in files[kind]]
    t0 = time.perf_counter()
    for p in everything:
        fits.getdata(p)
    read = (time.perf_counter() - t0) / len(everything)

    # masters made the plainest way (untimed: the bound is per light)
    bias = np.mean([fits.getdata(p).astype(np.float32) for p in files["bias"]], axis=0, dtype=np.float32)
    dark = np.median([fits.getdata(p).astype(np.float32) - bias for p in files["dark"]], axis=0)
    flats = {}
    for filt in sorted(set(m["flat_filters"])):
        fl = np.median([(fits.getdata(p).astype(np.float32) - bias)
                        for p, f in zip(files["flat"], m["flat_filters"], strict=False) if f == filt], axis=0)
        flats[filt] = (fl / np.median(fl)).astype(np.float32)
    scale = np.float32(m["exptimes"]["light"] / m["exptimes"]["dark"])
    offset = bias + dark * scale

    times = []
    for light in m["lights"]:
        t0 = time.perf_counter()
        raw = fits.getdata(light["path"])
        data = (raw - offset) / flats[light["filter"]]
        fits.PrimaryHDU(data.astype(np.float32, copy=False)).writeto(out_dir / Path(light["path"]).name, overwrite=True)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"read_per_frame": read, "calibrate_per_light": float(np.median(times)),
                      "calibrate_per_light_all": times, "n_frames": len(everything)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
