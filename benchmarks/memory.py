"""Memory case: the daemon's own master job (`ccdwatch.jobs.tasks.build_master`) on 30 flats of
6000x4000 with the default 1 GiB budget: each raw read and prepared to a float32 ``.npy`` (the
set is far larger than a quarter of the budget), combined in strips through read-only memory
maps, normalised, written with its preview.

Run as ``python -m benchmarks.memory FLAT_DIR WORKDIR`` (the harness measures its peak RSS).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ccdwatch.config import Config
from ccdwatch.fitsio import sha256_file
from ccdwatch.jobs import tasks as jobs
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
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    spec = jobs.MasterSpec(
        kind="flat", frames=tuple(((str(p),), sha256_file(p)) for p in paths), bias_path=None, dark_path=None,
        dark_scale=None, method=cfg.masters.flat_method, sigma=cfg.masters.sigma,
        memory_budget=int(cfg.masters.memory_budget_mb * 2**20), hot_pixel_sigma=cfg.masters.hot_pixel_sigma,
        out_path=str(work / "master_flat.fits"), header={}, inputs_table=tuple((Path(p).name, "0" * 64) for p in paths),
        workdir=str(work / "scratch"), max_data_bytes=int(cfg.ingest.max_data_mb * 2**20),
        allow_compressed=cfg.ingest.allow_compressed, preview_path=str(work / "master_flat.png"),
        preview_title="master flat (memory benchmark)")
    t0 = time.perf_counter()
    jobs.build_master(spec)
    t1 = time.perf_counter()
    print(json.dumps({"n": len(paths), "shape": SHAPE, "build_s": t1 - t0, "budget_mb": cfg.masters.memory_budget_mb}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--generate"]:
        flats(Path(sys.argv[2]))
    else:
        main(sys.argv[1], sys.argv[2])
