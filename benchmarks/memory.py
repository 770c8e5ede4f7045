"""Memory case: combine 30 flats of 6000x4000 with the default 1 GiB budget, as the master job does
(each raw read and prepared to a float32 ``.npy``, then combined through read-only memory maps).

Run as ``python -m benchmarks.memory FLAT_DIR WORKDIR`` (the harness measures its peak RSS).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ccdwatch import calib
from ccdwatch.config import Config
from ccdwatch.fitsio import read_raw
from ccdwatch.synth import Camera, make_night

N_FLATS = 30
SHAPE = (4000, 6000)


def flats(directory: Path) -> list[Path]:
    marker = directory / ".complete"
    if not marker.exists():
        truth = make_night(directory, camera=Camera(shape=SHAPE), n_bias=0, n_dark=0, n_flat=N_FLATS,
                           filters=("V",), n_light=0, seed=5)
        marker.touch()
        return truth.files["flat"]
    return sorted(directory.glob("flat_*.fits"))


def main(flat_dir: str, workdir: str) -> None:
    cfg = Config()
    paths = flats(Path(flat_dir))
    Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t0 = time.perf_counter()
        arrays, scales = [], []
        for i, p in enumerate(paths):
            data = calib.calibrate(read_raw(p).data)
            scales.append(1.0 / float(np.nanmedian(data)))
            np.save(Path(tmp) / f"{i}.npy", data)
            del data
            arrays.append(np.load(Path(tmp) / f"{i}.npy", mmap_mode="r"))
        t1 = time.perf_counter()
        calib.combine(arrays, method=cfg.masters.flat_method, scales=scales,
                      memory_budget=int(cfg.masters.memory_budget_mb * 2**20))
        t2 = time.perf_counter()
    print(json.dumps({"n": len(paths), "shape": SHAPE, "prepare_s": t1 - t0, "combine_s": t2 - t1,
                      "budget_mb": cfg.masters.memory_budget_mb}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--generate"]:
        flats(Path(sys.argv[2]))
    else:
        main(sys.argv[1], sys.argv[2])
