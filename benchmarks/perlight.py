"""Per-light A/B: the daemon's calibration job of two ccdwatch trees, alternated light by light.

``python -m benchmarks.perlight --a TREE_A --b TREE_B`` (``--night small``, ``--lights 32``): on the
2k benchmark night, the masters and a calibrated product made by ``watch --once`` with tree A, two
server processes (this file run as a script with ``PYTHONPATH`` = one tree each, one thread per
library as the pool's workers) each calibrate light ``i`` when asked, in the order ABBA..., each job
followed in its process by the numpy bound on the same light (read, calibrate in float32, write the
same planes: image, SOURCES, BADPIX, UNCERT). Prints one JSON line: per side the medians of the job and
of the bound and their ratio, B/A of the job, and how many products were byte-identical between A and
B. On a shared machine this is the figure to trust: both sides see the same load, light by light.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_THREADS = {var: "1" for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
#: Header cards the job writes itself (the rest of a product's primary header is the planned header).
_JOB_CARDS = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BUNIT", "GAIN", "RDNOISE", "SATLEVEL",
              "NCOSMIC", "GAINSET"}


def serve(manifest: str, products: str, out: str) -> None:  # pragma: no cover - run in a subprocess
    """Read light indices from stdin; calibrate each with the tree on ``PYTHONPATH``, then the bound."""
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # run as a script: not this folder
    import cv2
    import numpy as np
    from astropy.io import fits

    from ccdwatch.config import Config
    from ccdwatch.detector import detector_values
    from ccdwatch.fitsio import sha256_file
    from ccdwatch.jobs import tasks
    from ccdwatch.jobs.uncertainty import NoiseSpec

    cv2.setNumThreads(1)
    m = json.loads(Path(manifest).read_text())
    root, work = Path(products), Path(out)
    work.mkdir(parents=True, exist_ok=True)
    bias_p, dark_p, flat_p = (str(next(root.glob(f"masters/*/{k}/*.fits"))) for k in ("bias", "dark", "flat"))
    template = fits.open(next(root.glob("calibrated/*/*/*/*.fits")))
    cfg = Config()
    header = {k: v for k, v in template[0].header.items() if k not in _JOB_CARDS}
    specs = []
    for i, light in enumerate(m["lights"]):
        raw = fits.getheader(light["path"])
        specs.append(tasks.CalibrateSpec(
            frame_id=i, raw_paths=(light["path"],), raw_sha256=sha256_file(light["path"]), bias_path=bias_p,
            dark_path=dark_p, dark_scale=1.0, flat_path=flat_p, out_path=str(work / f"job_{i}.fits"), header=header,
            saturation=None, detect_sigma=cfg.stack.detect_sigma, max_data_bytes=int(cfg.ingest.max_data_mb * 2**20),
            allow_compressed=cfg.ingest.allow_compressed, cosmic_rays=cfg.calibration.cosmic_rays,
            noise=NoiseSpec(**vars(detector_values(raw, raw.get("INSTRUME"), cfg.detector)),
                            plane=cfg.calibration.uncertainty),
            sync=False))  # as the watch daemon writes its lights (`ccdwatch.pipeline.durability`)
    offset = fits.getdata(bias_p).astype(np.float32) + fits.getdata(dark_p, 0).astype(np.float32)
    hot = fits.getdata(dark_p, "HOTPIX").astype(bool)
    flat = fits.getdata(flat_p).astype(np.float32)
    rows = template["SOURCES"].data.copy()
    for line in sys.stdin:
        i = int(line) % len(specs)
        spec, bound_out = specs[i], work / "bound.fits"
        Path(spec.out_path).unlink(missing_ok=True)  # new files, as the daemon writes
        bound_out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        result = tasks.calibrate_light(spec)
        job = time.perf_counter() - t0
        with open(m["lights"][i]["path"], "rb") as fh:  # cached again for the bound (the job let it go)
            while fh.read(1 << 20):
                pass
        t1 = time.perf_counter()
        data = ((fits.getdata(m["lights"][i]["path"]) - offset) / flat).astype(np.float32, copy=False)
        fits.HDUList([fits.PrimaryHDU(data), fits.BinTableHDU(rows, name="SOURCES"),
                      fits.ImageHDU(hot.astype(np.uint8), name="BADPIX"),
                      fits.ImageHDU(np.abs(data) + np.float32(25.0), name="UNCERT")]).writeto(bound_out)
        t2 = time.perf_counter()
        print(json.dumps({"job": job, "bound": t2 - t1, "sha": result.sha256}), flush=True)


def _side(times: list[dict]) -> dict:
    job, bound = [t["job"] for t in times], [t["bound"] for t in times]
    return {"job_ms": 1e3 * statistics.median(job), "bound_ms": 1e3 * statistics.median(bound),
            "job_over_bound": statistics.median(job) / statistics.median(bound),
            "median_per_light_ratio": statistics.median(j / b for j, b in zip(job, bound, strict=True))}


def main() -> None:
    from benchmarks import night

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--a", type=Path, required=True, help="tree holding the ccdwatch package of side A")
    p.add_argument("--b", type=Path, required=True)
    p.add_argument("--night", default="small", choices=sorted(night.SHAPES))
    p.add_argument("--lights", type=int, default=32, help="jobs per side")
    p.add_argument("--workdir", type=Path, default=HERE / "results" / "nights")
    args = p.parse_args()
    work = args.workdir.absolute()
    night.night(work / "nights", "2k", args.night)
    name = night.night_dir("2k", args.night)
    manifest = work / "nights" / name / "manifest.json"
    run = work / "perlight" / name
    if not any(run.glob("products/calibrated/*/*/*/*.fits")):
        subprocess.run([sys.executable, "-m", "ccdwatch", "watch", "--once", "--incoming",
                        json.loads(manifest.read_text())["incoming"], "--products", run / "products", "--db",
                        run / "catalogue.db"], env={**os.environ, "PYTHONPATH": str(args.a.absolute())}, check=True,
                       stdout=subprocess.DEVNULL)
    procs = {side: subprocess.Popen(
        [sys.executable, __file__, "serve", str(manifest), str(run / "products"), str(run / f"out-{side}")],
        env={**os.environ, **_THREADS, "PYTHONPATH": str(tree.absolute())}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True) for side, tree in (("A", args.a), ("B", args.b))}
    times: dict[str, list[dict]] = {"A": [], "B": []}
    for i in range(args.lights):
        for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
            proc = procs[side]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{i}\n")
            proc.stdin.flush()
            times[side].append(json.loads(proc.stdout.readline()))
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    res = {"A": _side(times["A"]), "B": _side(times["B"]), "lights": args.lights,
           "B/A job": statistics.median(times["B"][i]["job"] for i in range(args.lights))
           / statistics.median(times["A"][i]["job"] for i in range(args.lights)),
           "same bytes": sum(a["sha"] == b["sha"] for a, b in zip(times["A"], times["B"], strict=True))}
    print(json.dumps(res))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(*sys.argv[2:5])
    else:
        main()
