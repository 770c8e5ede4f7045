"""Large CMOS frames (61 Mpix, 9576x6388 uint16): what each job really needs, and whether the
shipped service configuration reduces such a night within the unit's memory limits.

``python -m benchmarks.bigframes jobs [--size 9576x6388] [--threads 2]``
    Each job kind (master bias / dark / flat, calibration, stack) in a fresh process: the growth of
    its resident set over the warm baseline (peak reset through ``/proc/self/clear_refs``) and of
    its address space, against `ccdwatch.jobs.memory`'s estimate.
``python -m benchmarks.bigframes once [--size 9576x6388]``
    ``ccdwatch watch --once`` with ``systemd/ccdwatch.toml`` (only the paths overridden), the peak
    resident set of the whole process tree (daemon, fork server, workers) sampled at 10 Hz,
    against the unit's ``MemoryMax=``.
``python -m benchmarks.bigframes live [--size 9576x6388] [--quiet-minutes 0.25]``
    The live daemon (``ccdwatch watch``) with ``systemd/ccdwatch.toml`` (the paths overridden, and
    ``stack.quiet_minutes`` so that the group is stacked within the run), the night's files copied
    into its camera directory one after the other once it is READY; run as root on Linux with a
    cgroup-v1 memory controller, the daemon's tree is put in a memory cgroup limited to the unit's
    ``MemoryMax=`` (a real limit: the kernel's OOM killer acts above it). Until the group is
    stacked: the tree's peak RSS (10 Hz), the cgroup's peak anonymous memory and page-cache-
    inclusive peak, its limit hits and OOM kills, then the exit time of a SIGTERM.

The night (5 bias, 3 darks, 5 flats, 3 lights; the shipped ``masters.min_frames``) is generated
once with `ccdwatch.synth` and cached under ``benchmarks/results/nights/big-<size>``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PY = sys.executable


def parse_size(text: str) -> tuple[int, int]:
    """'9576x6388' (width x height) -> (ny, nx)."""
    nx, ny = (int(v) for v in text.lower().split("x"))
    return ny, nx


def night(size: str) -> Path:
    """The cached night of ``size`` (generated on first use); its incoming directory."""
    from ccdwatch.synth import Camera, make_night

    ny, nx = parse_size(size)
    base = RESULTS / "nights" / f"big-{size}"
    marker = base / ".complete"
    if not marker.exists():
        shutil.rmtree(base, ignore_errors=True)
        print(f"generating the {size} night in {base} ...", flush=True)
        make_night(base, camera=Camera(shape=(ny, nx)), n_bias=5, n_dark=3, n_flat=5, filters=("V",), n_light=3,
                   n_stars=150, seed=61)
        marker.touch()
    return base


# ------------------------------------------------------------------------------ one job, measured
def _status() -> dict[str, int]:
    """VmRSS, VmHWM, VmSize, VmPeak of this process, bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize", "VmPeak"):
                out[key] = int(value.split()[0]) * 1024
    return out


def run_job(spec_file: str) -> None:
    """In a fresh process: run one pickled (function name, spec); print what it cost as JSON."""
    from ccdwatch.jobs import tasks

    with open(spec_file, "rb") as fh:
        name, spec = pickle.load(fh)
    fn = getattr(tasks, name)
    with open("/proc/self/clear_refs", "w") as fh:  # reset the resident high-water mark
        fh.write("5")
    before = _status()
    t0 = time.perf_counter()
    fn(spec)
    wall = time.perf_counter() - t0
    after = _status()
    print(json.dumps({"rss_growth": after["VmHWM"] - before["VmRSS"], "base_rss": before["VmRSS"],
                      "base_vsz": before["VmSize"], "vsz_growth": after["VmPeak"] - before["VmSize"], "wall": wall}))


def _measure(name: str, spec: Any, work: Path) -> dict[str, Any]:
    from ccdwatch.jobs import memory

    spec_file = work / f"{name}-{os.getpid()}.pickle"
    with open(spec_file, "wb") as fh:
        pickle.dump((name, spec), fh)
    proc = subprocess.run([PY, "-m", "benchmarks.bigframes", "_job", str(spec_file)], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["estimate"] = memory.need(spec)
    return result


def _specs(incoming: Path, work: Path, threads: int) -> list[tuple[str, str, Any]]:
    """(label, job name, spec) of each job of the night, in pipeline order (products in ``work``)."""
    from ccdwatch.config import Config
    from ccdwatch.fitsio import sha256_file
    from ccdwatch.jobs import tasks

    cfg = Config()
    budget = int(cfg.masters.memory_budget_mb * 2**20)
    common = dict(max_data_bytes=int(cfg.ingest.max_data_mb * 2**20), allow_compressed=False)

    def frames(pattern: str) -> tuple[tuple[tuple[str, ...], str], ...]:
        return tuple(((str(p),), sha256_file(p)) for p in sorted(incoming.glob(pattern)))

    def master(kind: str, pattern: str, method: str, bias: str | None = None, dark: str | None = None,
               scale: float | None = None) -> tasks.MasterSpec:
        fr = frames(pattern)
        return tasks.MasterSpec(
            kind=kind, frames=fr, bias_path=bias, dark_path=dark, dark_scale=scale, method=method, sigma=3.0,
            memory_budget=budget, hot_pixel_sigma=5.0, out_path=str(work / f"master_{kind}.fits"), header={},
            inputs_table=tuple((Path(ps[0]).name, h) for ps, h in fr), workdir=str(work / "scratch"),
            preview_path=str(work / f"master_{kind}.png"), preview_title=kind, threads=threads,
            shape=_shape(fr[0][0][0]), **common)

    bias, dark, flat = (str(work / f"master_{k}.fits") for k in ("bias", "dark", "flat"))
    specs: list[tuple[str, str, Any]] = [
        ("master bias (5, sigma_clip)", "build_master", master("bias", "bias_*.fits", "sigma_clip")),
        ("master dark (3, median)", "build_master", master("dark", "dark_*.fits", "median", bias=bias)),
        ("master flat (5, median)", "build_master",
         master("flat", "flat_*.fits", "median", bias=bias, dark=dark, scale=3.0 / 300.0)),
    ]
    lights = sorted(incoming.glob("M51_*.fits"))
    products = {}
    for i, light in enumerate(lights, start=1):
        out = work / f"light_{i}.fits"
        products[i] = str(out)
        specs.append((f"calibration {i}", "calibrate_light", tasks.CalibrateSpec(
            frame_id=i, raw_paths=(str(light),), raw_sha256=sha256_file(light), bias_path=bias, dark_path=dark,
            dark_scale=200.0 / 300.0, flat_path=flat, out_path=str(out), header={}, saturation=None,
            detect_sigma=5.0, shape=_shape(str(light)), **common)))
    specs.append(("stack (3, sigma_clip)", "stack_group", tasks.StackSpec(
        products=products, reference=1, method="sigma_clip", sigma=3.0, memory_budget=budget,
        workdir=str(work / "scratch"), out_path=str(work / "stack.fits"), header={},
        members=tuple((i, "0" * 64, 200.0) for i in products), rejected=(), preview_path=str(work / "stack.png"),
        preview_title="stack", threads=threads, shape=_shape(str(lights[0])))))
    return specs


def _shape(path: str) -> tuple[int, int, int]:
    from astropy.io import fits

    h = fits.getheader(path)
    return int(h["NAXIS2"]), int(h["NAXIS1"]), int(h["BITPIX"])


def _vm_data(_: object = None) -> int:
    """This process's VmData (heap and private writable mappings: what RLIMIT_DATA counts), bytes."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmData:"))


def worker_base() -> int:
    """VmData of a warm worker (forked from the fork server) before any job: `memory.WORKER_BASE`."""
    from ccdwatch.jobs import pool

    workers = pool.Workers(processes=1, memory_limit=0)
    try:
        return int(workers.run(_vm_data, None, timeout=120))
    finally:
        workers.close()


def jobs(size: str, threads: int) -> list[dict[str, Any]]:
    from ccdwatch.jobs import memory

    base = worker_base()
    print(f"warm worker's data before any job: {base / 2**20:.0f} MiB (memory.WORKER_BASE: "
          f"{memory.WORKER_BASE / 2**20:.0f} MiB)", flush=True)
    incoming = night(size)
    work = RESULTS / "runs" / f"big-jobs-{size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = []
    for label, name, spec in _specs(incoming, work, threads):
        r = _measure(name, spec, work)
        if label.startswith("calibration") and not label.endswith(" 1"):
            continue
        r["job"] = label
        rows.append(r)
        print(f"{label:32s} measured {r['rss_growth'] / 2**20:7.0f} MiB RSS ({r['vsz_growth'] / 2**20:7.0f} MiB "
              f"address space), estimate {r['estimate'] / 2**20:7.0f} MiB, ratio "
              f"{r['estimate'] / max(1, r['rss_growth']):.2f}, {r['wall']:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------ the whole night
def unit_memory_max(unit: Path = ROOT / "systemd" / "ccdwatch.service") -> int:
    """The unit's MemoryMax= in bytes."""
    text = unit.read_text()
    m = re.search(r"^MemoryMax=(\d+)([KMGT]?)\s*$", text, re.M)
    if m is None:
        raise ValueError(f"no MemoryMax= in {unit}")
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def once(size: str) -> dict[str, Any]:
    from benchmarks import measure

    incoming = night(size)
    work = RESULTS / "runs" / f"big-once-{size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run = measure.run("ccdwatch", [PY, "-m", "ccdwatch", "--config", ROOT / "systemd" / "ccdwatch.toml",
                                   "--incoming", incoming, "--products", work / "products", "--db",
                                   work / "catalogue.db", "watch", "--once"], tail=40)
    limit = unit_memory_max()
    result = {"size": size, "wall_s": run.wall, "tree_rss_mib": run.tree_rss_mb, "memory_max_mib": limit / 2**20,
              "returncode": run.returncode, "summary": run.output.splitlines()[-12:]}
    print(run.output)
    print(f"peak tree RSS {run.tree_rss_mb:.0f} MiB vs MemoryMax {limit / 2**20:.0f} MiB; wall {run.wall:.0f} s",
          flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return result


CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def memory_cgroup(limit: int) -> Path | None:
    """A fresh cgroup-v1 memory group limited to ``limit`` bytes (None where that cannot be made)."""
    if not (CGROUP_V1 / "cgroup.procs").exists():
        return None
    cg = CGROUP_V1 / f"ccdwatch-bench-{os.getpid()}"
    try:
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(str(limit))
    except OSError as exc:
        print(f"no memory cgroup ({exc}): measuring the tree's RSS only", flush=True)
        return None
    return cg


def _cgroup_stat(cg: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in (cg / "memory.stat").read_text().splitlines())}


def _live_config(work: Path, quiet_minutes: float) -> Path:
    text = (ROOT / "systemd" / "ccdwatch.toml").read_text()
    for key, value in (("incoming", work / "incoming"), ("products", work / "products"),
                       ("database", work / "catalogue.db")):
        text, n = re.subn(rf"^{key} = .*$", f'{key} = "{value}"', text, count=1, flags=re.M)
        assert n == 1, key
    assert "\n[stack]" not in text
    cfg = work / "ccdwatch.toml"
    cfg.write_text(text + f"\n[stack]\nquiet_minutes = {quiet_minutes}\n")
    return cfg


def _lights_stacked(db: Path) -> tuple[int, list[tuple[str, int]]]:
    import sqlite3

    if not db.exists():
        return 0, []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return (con.execute("SELECT count(*) FROM stacks").fetchone()[0],
                con.execute("SELECT state, count(*) FROM frames GROUP BY state ORDER BY state").fetchall())
    except sqlite3.Error:
        return 0, []
    finally:
        con.close()


def live(size: str, quiet_minutes: float, timeout: float) -> dict[str, Any]:
    import signal
    import threading

    from benchmarks.measure import tree_sample

    source = night(size)
    files = [p for pattern in ("bias_*", "dark_*", "flat_*", "M51_*") for p in sorted(source.glob(pattern + ".fits"))]
    work = RESULTS / "runs" / f"big-live-{size}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "incoming").mkdir(parents=True)
    cfg = _live_config(work, quiet_minutes)
    limit = unit_memory_max()
    cg = memory_cgroup(limit)
    join = (lambda: (cg / "cgroup.procs").write_text(str(os.getpid()))) if cg else None  # noqa: E731
    os.sync()
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([PY, "-m", "ccdwatch", "--config", str(cfg), "watch"], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=join)
    peak = {"tree": 0, "anon": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak["tree"] = max(peak["tree"], tree_sample(proc.pid))
            if cg is not None:
                st = _cgroup_stat(cg)
                peak["anon"] = max(peak["anon"], st["rss"])  # v1: rss includes rss_huge

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    while b"watching " not in (work / "daemon.log").read_bytes():
        assert proc.poll() is None, (work / "daemon.log").read_text()
        time.sleep(0.2)
    t0 = time.monotonic()
    for p in files:  # arriving one after the other, each closed after writing
        shutil.copy(p, work / "incoming" / p.name)
    print(f"{len(files)} files copied in {time.monotonic() - t0:.0f} s", flush=True)
    stacks, states = 0, []
    while not stacks and time.monotonic() - t0 < timeout and proc.poll() is None:
        time.sleep(2.0)
        stacks, states = _lights_stacked(work / "catalogue.db")
        if any(state == "failed" for state, _ in states):  # failed for good: no stack will come
            break
    wall = time.monotonic() - t0
    t_stop = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(180)
    exit_s = time.monotonic() - t_stop
    done.set()
    sampler.join()
    log.close()
    result: dict[str, Any] = {
        "size": size, "files": len(files), "stacked": bool(stacks), "states": states,
        "first_file_to_stack_s": round(wall, 1), "sigterm_exit_s": round(exit_s, 2), "exit_code": code,
        "tree_rss_peak_mib": round(peak["tree"] / 2**20), "memory_max_mib": limit / 2**20,
        "log_warnings_errors": [line for line in (work / "daemon.log").read_text(errors="replace").splitlines()
                                if " WARNING " in line or " ERROR " in line or "Traceback" in line]}
    if cg is not None:
        result.update({
            "cgroup_anon_peak_mib": round(peak["anon"] / 2**20),
            "cgroup_peak_with_page_cache_mib": round(int((cg / "memory.max_usage_in_bytes").read_text()) / 2**20),
            "cgroup_limit_hits": int((cg / "memory.failcnt").read_text()),
            "cgroup_oom_kills": dict(line.split() for line in (cg / "memory.oom_control").read_text().splitlines())
            .get("oom_kill", "n/a")})
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:  # the last processes are still leaving it
                time.sleep(0.2)
    print(json.dumps(result, indent=1), flush=True)
    shutil.rmtree(work / "products", ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bigframes")
    sub = p.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("jobs")
    j.add_argument("--size", default="9576x6388")
    j.add_argument("--threads", type=int, default=2, help="threads of a lone master or stack (processes=2: 2)")
    o = sub.add_parser("once")
    o.add_argument("--size", default="9576x6388")
    lv = sub.add_parser("live")
    lv.add_argument("--size", default="9576x6388")
    lv.add_argument("--quiet-minutes", type=float, default=0.25, help="stack.quiet_minutes for the run")
    lv.add_argument("--timeout", type=float, default=3600.0, help="s from the first file to give up waiting")
    s = sub.add_parser("_job")
    s.add_argument("spec_file")
    args = p.parse_args(argv)
    if args.cmd == "_job":
        run_job(args.spec_file)
        return
    if args.cmd == "live":
        out: Any = live(args.size, args.quiet_minutes, args.timeout)
    else:
        out = jobs(args.size, args.threads) if args.cmd == "jobs" else once(args.size)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bigframes-{args.cmd}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
