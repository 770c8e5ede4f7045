"""Memory: every job's need estimated from the frame size before it runs, refused in words when it
cannot fit ``workers.memory_limit_mb``; out-of-memory errors explained; NaN and infinite pixels
and header values. The 61 Mpix measurement itself is ``python -m benchmarks.bigframes``."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import calib, synth
from ccdwatch.catalog import Catalog
from ccdwatch.config import load_config
from ccdwatch.daemon.watch import Watcher
from ccdwatch.detector import NoiseSpec
from ccdwatch.fitsio import read_product, sha256_file
from ccdwatch.jobs import memory, tasks
from ccdwatch.models import Calibrated, Event, Frame, FrameState, Master
from ccdwatch.pipeline import Pipeline
from ccdwatch.products import to_fits_header

from .conftest import make_config

ROOT = Path(__file__).resolve().parents[1]
CAMERA = synth.Camera(shape=(192, 256))
MiB = 2**20


def run_once(cfg) -> Catalog:
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    return cat


# ------------------------------------------------------------------------------ the estimates
def test_shipped_configuration_fits_61_mpix_frames_and_refuses_100():
    """By the estimates, the shipped workers.memory_limit_mb fits every job of a night of
    9576x6388 uint16 frames (the runner gives a master fewer threads if that is what fits), within
    the unit's MemoryMax= for all workers; a 102 Mpix frame's calibration does not fit."""
    cfg = load_config(ROOT / "systemd" / "ccdwatch.toml")
    limit = int(cfg.workers.memory_limit_mb * MiB)
    big = memory.FrameSize(6388, 9576, 16)
    budget = int(cfg.masters.memory_budget_mb * MiB)
    needs = {
        "calibration": memory.calibration(big, bias=True, dark=True, flat=True),
        "bias": memory.master(big, kind="bias", n=cfg.masters.min_frames["bias"], threads=1, budget=budget,
                              bias=False, dark=False),
        "flat": memory.master(big, kind="flat", n=cfg.masters.min_frames["flat"], threads=1, budget=budget,
                              bias=True, dark=True),
        "stack": memory.stack(big, n=max(3, cfg.stack.min_frames), threads=1, budget=budget),
    }
    for job, need in needs.items():
        assert memory.WORKER_BASE + need <= limit, (job, need / MiB)
    # the per-frame arrays dominate: a calibration holds ~21 bytes a pixel at its peak
    assert 19 * big.pixels < needs["calibration"] < 23 * big.pixels + memory.SLACK
    huge = memory.FrameSize(8750, 11664, 16)
    assert memory.WORKER_BASE + memory.calibration(huge, bias=True, dark=True, flat=True) > limit


def test_a_master_gets_fewer_threads_when_that_is_what_fits():
    spec = tasks.MasterSpec(
        kind="flat", frames=tuple(((f"/x/{i}.fits",), "0" * 64) for i in range(5)), bias_path="/b", dark_path="/d",
        dark_scale=0.01, method="median", sigma=3.0, memory_budget=512 * MiB, hot_pixel_sigma=5.0,
        out_path="/o.fits", header={}, inputs_table=(), workdir="/w", max_data_bytes=1 << 30, allow_compressed=False,
        preview_path=None, preview_title="", threads=2, shape=(6388, 9576, 16))
    two, one = memory.need(spec), memory.need(dataclasses.replace(spec, threads=1))
    assert one is not None and two is not None and two > one
    fitted, need = memory.fitting(spec, memory.WORKER_BASE + one + MiB)
    assert fitted is not None and fitted.threads == 1 and need == one
    refused, need = memory.fitting(spec, memory.WORKER_BASE + one - MiB)
    assert refused is None and need == one
    unsized, need = memory.fitting(dataclasses.replace(spec, shape=None), 1)
    assert unsized is not None and need is None  # no size known: run unchecked


MEASURE = textwrap.dedent(
    """
    import json, pickle, sys
    from ccdwatch.jobs import forkserver, tasks
    forkserver.warm_imports()  # what a worker has loaded before its first job

    def status():
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                if line.startswith(("VmRSS", "VmHWM"))}

    name, spec = pickle.load(open(sys.argv[1], "rb"))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the resident high-water mark
    before = status()
    getattr(tasks, name)(spec)
    print(json.dumps({"growth": status()["VmHWM"] - before["VmRSS"]}))
    """
)

#: Three biases (the master whose estimate is checked), one dark and one flat: their masters only
#: feed the calibration, whose inputs have the same planes whatever the number of frames behind them.
NIGHT = textwrap.dedent(
    """
    import sys
    from ccdwatch import synth
    synth.make_night(sys.argv[1], camera=synth.Camera(shape=(int(sys.argv[2]), int(sys.argv[3]))), n_bias=3,
                     n_dark=1, n_flat=1, filters=("V",), n_light=1, n_stars=40, seed=11)
    """
)


def measured_peak(tmp_path: Path, name: str, spec: object) -> int:
    """Growth of the resident set's peak over a warm worker's, running one job in a fresh process
    (large frames are never handled in the test process: its own peak would show in every child's
    ru_maxrss afterwards)."""
    spec_file = tmp_path / f"{name}.pickle"
    spec_file.write_bytes(pickle.dumps((name, spec)))
    out = subprocess.run([sys.executable, "-c", MEASURE, str(spec_file)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["growth"])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset: Linux")
def test_estimates_within_a_factor_of_the_measured_peaks(tmp_path):
    """A master bias of 3 and a light's calibration (bias, dark, flat) at 3072x4096: the estimate
    is at least the measured peak and at most 1.5 times it (measured: 1.26 and 1.12)."""
    shape = (3072, 4096)
    night = tmp_path / "night"
    subprocess.run([sys.executable, "-c", NIGHT, str(night), *map(str, shape)], timeout=600, cwd=ROOT, check=True)
    common = dict(max_data_bytes=1 << 30, allow_compressed=False, shape=(*shape, 16))

    def master(kind: str, method: str, bias: Path | None = None, dark: Path | None = None) -> tasks.MasterSpec:
        frames = tuple(((str(p),), sha256_file(p)) for p in sorted(night.glob(f"{kind}_*.fits")))
        return tasks.MasterSpec(
            kind=kind, frames=frames, bias_path=str(bias) if bias else None, dark_path=str(dark) if dark else None,
            dark_scale=3.0 / 300.0 if kind == "flat" else None, method=method, sigma=3.0, memory_budget=64 * MiB,
            hot_pixel_sigma=5.0, out_path=str(tmp_path / f"{kind}.fits"), header={},
            inputs_table=tuple((Path(p[0]).name, h) for p, h in frames), workdir=str(tmp_path / "w"),
            preview_path=str(tmp_path / f"{kind}.png"), preview_title=kind, **common)

    bias, dark, flat = (tmp_path / f"{k}.fits" for k in ("bias", "dark", "flat"))
    ratios = {}
    spec: object = master("bias", "sigma_clip")
    ratios["bias"] = memory.need(spec) / measured_peak(tmp_path, "build_master", spec)
    measured_peak(tmp_path, "build_master", master("dark", "median", bias=bias))
    measured_peak(tmp_path, "build_master", master("flat", "median", bias=bias, dark=dark))
    light = night / "M51_V_001.fits"
    spec = tasks.CalibrateSpec(
        frame_id=1, raw_paths=(str(light),), raw_sha256=sha256_file(light), bias_path=str(bias), dark_path=str(dark),
        dark_scale=200.0 / 300.0, flat_path=str(flat), out_path=str(tmp_path / "light.fits"), header={},
        saturation=None, detect_sigma=5.0, noise=NoiseSpec(1.5, "test", 12.0, "test"), **common)
    ratios["calibration"] = memory.need(spec) / measured_peak(tmp_path, "calibrate_light", spec)
    assert all(1.0 <= r <= 1.5 for r in ratios.values()), ratios


# ------------------------------------------------------------------------------ refusals
@pytest.fixture
def small_night(tmp_path):
    cfg = make_config(tmp_path, workers={"processes": 0}, masters={"min_frames": {"bias": 3, "dark": 3, "flat": 3}})
    truth = synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=5, n_bias=3, n_dark=3, n_flat=3, filters=("V",),
                             n_light=3, n_stars=40)
    return cfg, truth


def test_a_calibration_that_cannot_fit_is_refused_in_words_and_not_retried(small_night, monkeypatch, caplog):
    """Lights whose calibration is estimated at 3 GiB under a 2 GiB limit: an ERROR names
    workers.memory_limit_mb and the value that would do, the lights end failed with that reason
    without a single try, a second pass logs nothing new; `retry` with the limit raised calibrates
    them."""
    cfg = dataclasses.replace(small_night[0], workers=dataclasses.replace(small_night[0].workers, memory_limit_mb=2048))
    monkeypatch.setattr(memory, "calibration", lambda size, **kw: 3 << 30)
    caplog.set_level(logging.INFO)
    cat = run_once(cfg)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3 and all("more than workers.memory_limit_mb = 2048" in e for e in errors), errors
    # WORKER_BASE (400 MiB) + 3 GiB = 3472 MiB, rounded up to 64 MiB
    assert all(e.startswith("calibrating frame ") and "raise it to at least 3520" in e for e in errors)
    with cat.reader() as s:
        lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
        assert {f.state for f in lights} == {FrameState.FAILED}
        assert all("needs ~3.4 GiB" in f.state_reason and f.tries == 0 for f in lights)
        assert s.scalar(select(Master).where(Master.kind == "flat")) is not None  # the masters fit
    caplog.clear()
    with Pipeline(cfg, cat) as pipe:
        pipe.tick(final=True)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    monkeypatch.undo()
    roomy = dataclasses.replace(cfg, workers=dataclasses.replace(cfg.workers, memory_limit_mb=4096))
    with Pipeline(roomy, cat) as pipe:
        assert pipe.retry() == 3
        pipe.tick(final=True)
    with cat.reader() as s:
        states = s.scalars(select(Frame.state).where(Frame.imagetyp == "light")).all()
        assert set(states) <= {FrameState.CALIBRATED, FrameState.STACKED} and len(states) == 3
    cat.close()


def test_a_stack_that_cannot_fit_tells_its_members_once(small_night, monkeypatch, caplog):
    """A group whose stack cannot fit: its calibrated lights stay calibrated, with the refusal as
    their reason; the refusal is logged once, however often the group comes due."""
    cfg = small_night[0]
    monkeypatch.setattr(memory, "stack", lambda size, **kw: 8 << 30)
    caplog.set_level(logging.INFO)
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
        pipe.tick(final=True)
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(refusals) == 1 and refusals[0].startswith("stacking group ") and "workers.memory_limit_mb" in refusals[0]
    assert refusals[0].endswith("then restart the daemon")
    with cat.reader() as s:
        lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
        assert {f.state for f in lights} == {FrameState.CALIBRATED}
        assert all(f.state_reason == refusals[0] for f in lights)
    cat.close()


# ------------------------------------------------------------------------------ out of memory
def test_a_memory_error_in_a_job_says_what_and_how_big(tmp_path, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(tasks, "load_raw", exhausted)
    spec = tasks.CalibrateSpec(
        frame_id=7, raw_paths=("/nowhere/light.fits",), raw_sha256="0" * 64, bias_path=None, dark_path=None,
        dark_scale=1.0, flat_path=None, out_path=str(tmp_path / "out.fits"), header={}, saturation=None,
        detect_sigma=5.0, max_data_bytes=1 << 30, allow_compressed=False, shape=(6388, 9576, 16))
    with pytest.raises(memory.OutOfMemory) as info:
        tasks.calibrate_light(spec)
    text = str(info.value)
    assert text.startswith(f"calibrating a light ({tmp_path / 'out.fits'}) ran out of memory")
    assert "no detail from the allocator" in text and "for frames of 9576x6388" in text
    need = memory.WORKER_BASE + memory.calibration(memory.FrameSize(6388, 9576), bias=False, dark=False, flat=False)
    assert f"estimated to need ~{memory.gib(need)}" in text
    assert isinstance(info.value, MemoryError)  # still a MemoryError for whoever counts tries


ROOM = textwrap.dedent(
    """
    import resource, sys
    from ccdwatch.jobs import tasks
    from ccdwatch.fitsio import RejectedFile
    vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmData'))
    cap = vm + (96 << 20)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    try:
        tasks.ingest(tasks.IngestSpec(sys.argv[1], 1 << 30, False, (), "UTC", 12.0))
        print("read")
    except RejectedFile as exc:
        print(exc.reason)
        print(exc.message)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmData: Linux")
def test_a_file_too_big_for_the_worker_is_refused_before_it_is_read(tmp_path):
    """A 64 MB frame in a worker with ~96 MiB to spare: refused (quarantined as too large) with
    the setting and the value that would read it, instead of a MemoryError with no text."""
    path = tmp_path / "big.fits"
    fits.PrimaryHDU(np.zeros((4096, 8192), dtype=np.int16)).writeto(path)
    out = subprocess.run([sys.executable, "-c", ROOM, str(path)], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, check=True).stdout.splitlines()
    assert out[0] == "too-large", out
    assert "workers.memory_limit_mb" in out[1] and "raise it to at least" in out[1] and "64 MiB" in out[1]


# ------------------------------------------------------------------------------ non-finite values
def test_headers_never_get_non_finite_values():
    header = to_fits_header({"SATLEVEL": (math.inf, "raw saturation level used, ADU"), "FWHM": float("nan"),
                             "SKY": np.float32(-np.inf), "GAIN": (1.5, "e-/ADU"), "OBJECT": "M51", "NCOMBINE": 5})
    assert list(header.keys()) == ["GAIN", "OBJECT", "NCOMBINE", "COMMENT", "COMMENT", "COMMENT"]
    assert [header["GAIN"], header["OBJECT"], header["NCOMBINE"]] == [1.5, "M51", 5]
    assert header.comments["GAIN"] == "e-/ADU"
    assert [str(c) for c in header["COMMENT"]] == [f"{k} left out: not a finite number ({v})" for k, v in
                                                   (("SATLEVEL", "inf"), ("FWHM", "nan"), ("SKY", "-inf"))]
    fits.PrimaryHDU(np.zeros((2, 2), np.float32), header=header).writeto(io.BytesIO())  # a valid header


def test_a_light_with_nan_and_inf_pixels_is_calibrated_with_them_masked(tmp_path, caplog):
    """A float32 light with a NaN block and +-inf pixels: calibrated (not failed), those pixels NaN
    in the product and said so in the log and the events, every other pixel exactly as the
    masters calibrate it, and its measured seeing the synthetic camera's."""
    cfg = make_config(tmp_path, masters={"min_frames": {"bias": 3, "dark": 3, "flat": 3}})
    truth = synth.make_night(cfg.paths.incoming, camera=CAMERA, seed=9, n_bias=3, n_dark=3, n_flat=3, filters=("V",),
                             n_light=3, n_stars=40)
    path = truth.files["light"][1]
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
        raw = hdul[0].data.astype(np.float32)
    raw[10:20, 30:50] = np.nan
    bad_inf = [(100, 100), (150, 60), (5, 250)]
    for k, (y, x) in enumerate(bad_inf):
        raw[y, x] = np.inf if k % 2 == 0 else -np.inf
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    fits.PrimaryHDU(raw, header=header).writeto(path, overwrite=True)
    caplog.set_level(logging.INFO)
    cat = run_once(cfg)
    with cat.reader() as s:
        frame = s.scalar(select(Frame).where(Frame.path == str(path)))
        assert frame.state in (FrameState.CALIBRATED, FrameState.STACKED), (frame.state, frame.state_reason)
        product = s.scalar(select(Calibrated).where(Calibrated.frame_id == frame.id, Calibrated.current))
        product_path, dark_scale = product.path, product.dark_scale
        masters = {m.kind: m.path for m in s.scalars(select(Master))}
        events = [e.detail for e in s.scalars(select(Event).where(Event.frame_id == frame.id, Event.kind == "masked"))]
        fwhm = frame.fwhm
    assert events == [f"{20 * 10 + 3} raw pixel(s) were NaN or infinite: masked (NaN in the calibrated frame, left out "
                      "of its quality measurement and of stacks)"]
    assert any(r.levelno == logging.WARNING and "were NaN or infinite" in r.getMessage() for r in caplog.records)
    head, data = read_product(product_path)
    assert all(not isinstance(v, float) or math.isfinite(v) for v in head.values())
    bad = ~np.isfinite(raw)
    assert np.isnan(data[bad]).all()
    expected = calib.calibrate(np.where(bad, 0.0, raw), bias=read_product(masters["bias"])[1],
                               dark=read_product(masters["dark"])[1], dark_scale=dark_scale,
                               flat=read_product(masters["flat"])[1])
    expected *= np.float32(head["GAIN"])  # in electrons (the header's EGAIN)
    assert head["BUNIT"] == "electron" and np.array_equal(data[~bad], expected[~bad])
    assert fwhm == pytest.approx(truth.fwhm, rel=0.15)
    cat.close()


def _full_the_first_time(marker: str) -> int:
    """A job that finds its (first) worker too full, as `memory.room_for` would say."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        raise memory.WorkerFull("the worker holds 1.6 GiB from earlier jobs")
    return os.getpid()


def _always_full(_: str) -> int:
    raise memory.WorkerFull("the worker holds 1.6 GiB from earlier jobs")


def test_a_job_its_worker_has_no_room_for_runs_again_on_a_fresh_worker(tmp_path):
    from ccdwatch.jobs.pool import Workers

    workers = Workers(processes=1, memory_limit=0)
    try:
        marker = tmp_path / "first"
        [done] = workers.map(_full_the_first_time, [str(marker)], timeout=120)
        assert done.result() != int(marker.read_text())  # another worker ran it: a fresh one
        # once only: a job that finds even a fresh worker too full says so as its own error
        [again] = workers.map(_always_full, ["x"], timeout=120)
        assert isinstance(again.exception(), memory.WorkerFull)
    finally:
        workers.close()


def test_room_for_a_job_frees_the_caches_first_then_asks_for_a_fresh_worker(monkeypatch):
    spec = object()
    monkeypatch.setattr(memory, "need", lambda s: 1200 * memory.MiB)
    monkeypatch.setattr(memory, "_data_limit", lambda: 1792 * memory.MiB)
    held = {"data": 1641 * memory.MiB}
    monkeypatch.setattr(memory, "headroom", lambda: memory._data_limit() - held["data"])
    released = []
    memory.room_for(spec, lambda: released.append(1) or held.update(data=450 * memory.MiB))
    assert released == [1]  # the caches were enough: the job runs here
    held["data"] = 1641 * memory.MiB
    with pytest.raises(memory.WorkerFull, match="1.6 GiB from earlier jobs"):
        memory.room_for(spec, lambda: None)  # nothing to free: fresh workers (400 MiB base) would fit
    monkeypatch.setattr(memory, "need", lambda s: 1500 * memory.MiB)
    memory.room_for(spec, lambda: None)  # more than even a fresh worker has: the job runs and says so itself



def test_ingest_lets_go_of_what_earlier_jobs_left_before_refusing_a_file_as_too_large(tmp_path, monkeypatch):
    """A file this worker has no room for, for what earlier jobs left it holding (a 2k night's
    calibrations), is read once the masters' cache is let go, or on fresh workers (WorkerFull):
    refused as too large, it stayed quarantined until the file changed. A file not even a fresh
    worker could read is refused, as before."""
    from ccdwatch.fitsio.rejected import RejectedFile

    path = tmp_path / "frame.fits"
    fits.PrimaryHDU(np.zeros((64, 64), np.int16)).writeto(path)
    need = memory.ingest(path.stat().st_size)
    held = {"data": memory.WORKER_BASE + need}  # this worker's room: half the need
    monkeypatch.setattr(memory, "_data_limit", lambda: memory.WORKER_BASE + need + need // 2)
    monkeypatch.setattr(memory, "headroom", lambda: memory._data_limit() - held["data"])

    class Cache(dict):  # the masters a worker keeps: letting them go frees ``frees`` bytes
        frees = 0

        def clear(self) -> None:
            held["data"] -= self.frees
            super().clear()

    cache = Cache({"a master": None})
    monkeypatch.setattr(tasks, "_MASTERS", cache)
    with pytest.raises(memory.WorkerFull, match="from earlier jobs"):
        tasks._check_room(str(path))  # the cache let go, still short: fresh workers read it
    assert cache == {}
    cache["a master"], cache.frees = None, need
    tasks._check_room(str(path))  # the cache let go is enough: read here
    held["data"] = memory.WORKER_BASE + need
    monkeypatch.setattr(memory, "_data_limit", lambda: memory.WORKER_BASE + need // 2)  # not even a fresh one
    with pytest.raises(RejectedFile, match="raise it to at least") as refused:
        tasks._check_room(str(path))
    assert refused.value.reason == "too-large"


_MALLINFO_PROBE = r'''
import ctypes
import numpy as np
from ccdwatch.jobs import pool

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mmapped_by_a_frame():
    before = libc.mallinfo2().hblks
    frame = np.ones(4 << 20, np.float32)  # a 2k frame: 16 MiB
    n = libc.mallinfo2().hblks - before
    del frame
    return n

class Spec:
    def __init__(self, shape):
        self.shape = shape

pool.give_back_freed_memory()  # as a worker starts
seen = [mmapped_by_a_frame()]
for job, shape in (("stack_group", (6388, 9576, 16)), ("calibrate_light", (2048, 2048, 16)),
                   ("stack_group", (2048, 2048, 16)), ("calibrate_light", (6388, 9576, 16))):
    pool.heap_for(job, Spec(shape))
    seen.append(mmapped_by_a_frame())

def kept_after(job, shape):
    """Whether a frame freed at the heap's top stays there for the next job (glibc's arena size)."""
    pool.heap_for(job, Spec(shape))
    frame = np.ones(4 << 20, np.float32)
    del frame
    return libc.mallinfo2().arena >= 16 << 20

def kept_in_combination(shape):
    """Whether a master's combination keeps a freed frame at the heap's top (`pool.keeping_freed_memory`),
    and whether the heap still holds it after the combination."""
    pool.heap_for("build_master", Spec(shape))
    with pool.keeping_freed_memory(Spec(shape)):
        frame = np.ones(4 << 20, np.float32)
        del frame
        inside = libc.mallinfo2().arena >= 16 << 20
    return inside, libc.mallinfo2().arena >= 16 << 20

combining = [kept_in_combination(shape) for shape in ((2048, 2048, 16), (6388, 9576, 16))]
kept = [kept_after(job, shape) for job, shape in (
    ("calibrate_light", (2048, 2048, 16)), ("build_master", (2048, 2048, 16)), ("stack_group", (2048, 2048, 16)),
    ("stack_group", (6388, 9576, 16)))]
print(seen, kept, combining)
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_jobs_take_frame_sized_temporaries_from_the_heap():
    """A worker starts with a 1 MiB mmap threshold (a 61 Mpix night's freed strips go back to the
    system); a job on 2k frames then takes a frame-sized block from the heap (a fresh mmap costs
    page faults and zeroing at every allocation: a light's job ~1.6x), a stack of 61 Mpix frames
    does not, and a light job does whatever its frames (glibc's own count of mmapped blocks); and
    the heap keeps a freed frame at its top for the next job after a light or a stack of 2k frames,
    not after a master (whose peak must stay within its estimate) nor a stack of 61 Mpix frames
    (glibc's arena size); a master of 2k frames keeps it during its combination only, one of 61 Mpix
    frames not even then."""
    import ctypes

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("not glibc >= 2.33")
    out = subprocess.run([sys.executable, "-c", _MALLINFO_PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[1, 1, 0, 0, 0] [True, False, True, False] [(True, False), (False, False)]"


def test_every_job_sets_the_allocator_for_itself(monkeypatch):
    """The jobs' wrapper sets the allocator for the job before it runs (`pool.heap_for`)."""
    from ccdwatch.jobs import pool, tasks

    calls = []
    monkeypatch.setattr(pool, "heap_for", lambda job, spec: calls.append((job, spec)))

    def calibrate_light(spec):
        return spec

    spec = object()
    assert tasks._explained(calibrate_light)(spec) is spec
    assert calls == [("calibrate_light", spec)]
