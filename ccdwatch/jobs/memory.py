"""What a job needs in memory, estimated from the frame sizes in the catalogue before it runs.

A job's peak is counted from what its code really allocates, phase by phase (the terms below name
the arrays of :mod:`ccdwatch.jobs.tasks`, :mod:`ccdwatch.calib`, :mod:`ccdwatch.stack`,
:mod:`ccdwatch.align` and :mod:`ccdwatch.qa`), in units of one frame: ``P`` bytes per pixel-plane
of booleans (one byte a pixel), ``4P`` a float32 working copy, ``R`` the raw frame as read (its
bytes per pixel x pixels). The runner compares ``WORKER_BASE + need`` with
``workers.memory_limit_mb`` (each worker's data limit) before the job runs: a job that cannot fit
is refused with the size it would need; a master or a stack that fits with fewer threads is given
fewer. ``benchmarks/bigframes.py`` measures the real jobs against these estimates.

Every count here is pure arithmetic on sizes: no file is opened and nothing is allocated.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ccdwatch import strips

MiB = 1 << 20

#: Data (heap and private writable mappings, what the worker's limit counts) of a warm worker
#: before its first job: the fork server's heap and the libraries' buffers (OpenBLAS, OpenCV),
#: ~392 MiB measured with numpy 2.4 / astropy 7 / OpenCV 4.12 on Linux 6.x.
WORKER_BASE = 400 * MiB

#: Masters a worker keeps between jobs (the lights of a night all use the same ones) when those
#: of a job take at most this much together; larger ones are dropped once calibrated with, and
#: read again by the next job that needs them (~0.3 s for three 61 Mpix masters).
MASTER_CACHE_BYTES = 256 * MiB

#: Small allocations on top of the frame-sized arrays: headers and tables, source lists, sep's
#: buffers, calibration row blocks, the combine's per-strip temporaries of one thread.
SLACK = 48 * MiB

#: Peak of `qa.measure` beyond its input, bytes per pixel: the float32 copy (4), the bad-pixel
#: map and its temporary (2), the saturation map (1), sep's int32 segmentation map (4), and the
#: grown source mask once that map is gone (measured 11 at 61 Mpix). Frames of >= 1024 px a side
#: are detected on their 2x2-binned image (`qa.binned`): ~7.7 measured at 36 Mpix, within this bound.
QA_PER_PIXEL = 12

#: Peak of `align.warp` beyond its input, bytes per pixel: the missing-pixel map (1), the filled
#: copy (4), the warped frame (4) and the footprint masks (3) (measured 11.5 at 61 Mpix).
WARP_PER_PIXEL = 12

#: A stack strip of a frame turned against the reference (`ccdwatch.stripwarp`) is warped from every
#: input row it samples (all of them at 90 degrees), read for the strip and let go after it: bytes
#: per pixel of those rows, in each thread, the rows as float32 (4), their missing-pixel map (1) and
#: a temporary (1) (measured 6.0 with hot pixels; `stripwarp.READ_BYTES_PER_PIXEL`). A stack runs
#: threads side by side on such strips only while their rows fit half its budget, else one.
TURNED_PER_PIXEL = 6


@dataclass(frozen=True)
class FrameSize:
    """One frame's size: ``ny`` x ``nx`` pixels of the raw data type ``bitpix`` (FITS BITPIX)."""

    ny: int
    nx: int
    bitpix: int = 16

    @property
    def pixels(self) -> int:
        return self.ny * self.nx

    @property
    def raw(self) -> int:
        """Bytes of the raw image as read (its FITS data type)."""
        return self.pixels * (abs(self.bitpix) // 8 or 1)

    @property
    def f32(self) -> int:
        """Bytes of one float32 working copy."""
        return 4 * self.pixels

    @property
    def floating(self) -> bool:
        """Floating-point raw data, which may hold NaN (integers never do)."""
        return self.bitpix < 0

    @classmethod
    def of(cls, shape: tuple[int, int, int] | None) -> FrameSize | None:
        if not shape or shape[0] <= 0 or shape[1] <= 0:
            return None
        return cls(int(shape[0]), int(shape[1]), int(shape[2]) or 16)


def raw_shape(naxis1: int | None, naxis2: int | None, bitpix: Any) -> tuple[int, int, int] | None:
    """``(ny, nx, BITPIX)`` of a catalogued frame from its NAXIS1, NAXIS2 and BITPIX cards: the
    ``shape`` of a job's spec; None when the size is not known."""
    if not naxis1 or not naxis2 or naxis1 <= 0 or naxis2 <= 0:
        return None
    try:
        code = int(bitpix)
    except (TypeError, ValueError):
        code = 16
    return int(naxis2), int(naxis1), code if code in (8, 16, 32, 64, -32, -64) else 16


def read_raw_peak(size: FrameSize) -> int:
    """`fitsio.read_raw`'s peak: the file's bytes, astropy's decoded copy and the native copy
    returned (one raw frame is left once it returns)."""
    return 3 * size.raw


def read_product_peak(size: FrameSize, *, mask: bool) -> int:
    """`fitsio.read_product_hdus`'s peak for a float32 image (and a one-byte mask): every HDU read
    from the file into its own array (the image, its UNCERT, the mask), and a frame of slack for
    astropy's temporaries (the file is no longer copied into memory first: an over-estimate by
    one float32 frame at most)."""
    return 3 * size.f32 + (size.pixels if mask else 0)


def combine_peak(size: FrameSize, n: int, *, method: str, threads: int, budget: int) -> int:
    """The working set of `calib.combine` beyond its inputs and result: each thread's strip stack
    with the method's temporaries (`strips.strip_rows`), and sigma clipping's sample of rows."""
    method = "mean" if method == "average" else method
    copies = strips.WORKING_COPIES.get(method, max(strips.WORKING_COPIES.values()))
    bytes_per_row = n * size.nx * 4 * copies + size.nx * 32
    rows = strips.strip_rows(n, size.ny, size.nx, method=method if method in strips.WORKING_COPIES else "sigma_clip",
                             memory_budget=budget, threads=max(1, threads))
    floor = 4 * n * 32 * size.nx * 4 if method == "sigma_clip" else 0
    return max(1, threads) * rows * bytes_per_row + floor


def _loads(size: FrameSize, masters: list[bool]) -> tuple[int, int]:
    """(peak, bytes held after) of loading masters one after the other; each entry says
    whether that master has a hot-pixel map (a dark)."""
    held = peak = 0
    for hot in masters:
        peak = max(peak, held + read_product_peak(size, mask=hot))
        held += size.f32 + (size.pixels if hot else 0)
    return peak, held


def calibration(size: FrameSize, *, bias: bool, dark: bool, flat: bool, overscan: bool = False,
                uncertainty: bool = False) -> int:
    """Peak bytes of `tasks.calibrate_light` for one light with the masters named.

    Phases: reading the masters (dark, bias, flat; each read holds three times its image for a
    moment), then the raw frame; calibrating (raw + masters + the float32 result, and its
    float32 uncertainty when the gain is known); measuring (the result, the uncertainty, the
    bad-pixel mask, the hot-pixel map and `qa.measure`'s arrays; the masters only when they stay
    cached, the raw frame no more). With ``overscan`` the raw frame's trimmed float32 copy is held
    beside it while calibrating (sizes are the raw frame's: the trimmed ones are less).
    """
    p = size.pixels
    load, held = _loads(size, [True] * dark + [False] * bias + [False] * flat)
    cached = held <= MASTER_CACHE_BYTES
    read = held + read_raw_peak(size)
    sigma = size.f32 if uncertainty else 0
    calibrate = held + size.raw + size.f32 * (2 if overscan else 1) + sigma
    measure = size.f32 + sigma + p + (held if cached else (p if dark else 0)) + QA_PER_PIXEL * p
    return max(load, read, calibrate, measure) + SLACK


def master(size: FrameSize, *, kind: str, n: int, threads: int, budget: int, bias: bool, dark: bool,
           method: str = "sigma_clip", overscan: bool = False) -> int:
    """Peak bytes of `tasks.build_master` combining ``n`` frames with ``threads`` threads.

    Phases: reading the masters it calibrates with (dark, then bias); preparing the inputs (each
    thread reads a raw frame and calibrates it; the inputs stay in RAM when all fit a quarter of
    ``budget``, else go to memory-mapped scratch files, which the data limit does not count; with
    ``overscan``, each raw frame's trimmed float32 copy beside it);
    combining (strips within ``budget``; large masters are let go first); finishing (the master,
    its robust statistics - the finite pixels' int64 indices when one is NaN -, a flat's
    normalised copy, a dark's hot-pixel map, the preview).
    """
    p = size.pixels
    load, held = _loads(size, [True] * dark + [False] * bias)
    kept = n * size.f32 if n * size.f32 <= budget // 4 else 0
    per_input = max(read_raw_peak(size), size.raw + size.f32 * (2 if overscan else 1))
    prepare = held + kept + max(1, threads) * per_input
    strips = combine_peak(size, n, method=method, threads=threads, budget=budget)
    combine = (held if held <= MASTER_CACHE_BYTES else 0) + kept + size.f32 + strips
    # robust statistics: the finite-pixel map, and the finite pixels' int64 indices when one is NaN
    robust = 9 * p if size.floating else p
    finish = size.f32 + max(robust, 5 * p if kind == "flat" else 0, 3 * p if kind == "dark" else 0, 2 * p)
    return max(load, prepare, combine, finish) + SLACK


def stack(size: FrameSize, *, n: int, threads: int, budget: int, method: str = "sigma_clip") -> int:
    """Peak bytes of `tasks.stack_group` aligning and combining ``n`` calibrated frames.

    Phases: reading each product (image, uncertainty and bad-pixel map) for its sources, keeping
    the images and variances when all fit an eighth of ``budget``; aligning one frame at a time, or
    several side by side when they fit (the frame and its variance read, then warped, beside the
    coverage map; the warped frames and variances in RAM when all fit half of ``budget``, else
    memory-mapped); combining (the stack, its uncertainty, exposure map and counts; each thread
    warping a strip from up to a whole frame's rows when the frames are turned against the
    reference, `TURNED_PER_PIXEL`); writing (astropy's big-endian copies) with the preview drawn beside.
    """
    p = size.pixels
    images = 2 * n * size.f32 if 2 * n * size.f32 <= budget // 8 else 0
    warped = 2 * n * size.f32 if 2 * n * size.f32 <= budget // 2 else 0
    held = images + warped + 2 * p
    read = held + read_product_peak(size, mask=True) + size.f32  # two planes read, then converted
    # `stack._align_group` reads and warps up to ``threads`` frames side by side when that many
    # and the one being kept take at most half the budget at ~32 bytes a pixel each
    # (image and variance)
    in_flight = min(threads, max(1, n - 1))
    if in_flight > 1 and (in_flight + 1) * 32 * p > budget // 2:
        in_flight = 1
    align = held + (in_flight + (in_flight > 1)) * (2 * size.f32 + WARP_PER_PIXEL * p)
    strips = combine_peak(size, 2 * n, method=method, threads=threads, budget=budget)  # frames and variances
    # a turned frame's rows for a strip, per thread; threads side by side while they fit half the budget
    turned = TURNED_PER_PIXEL * p * min(max(1, threads), max(1, (budget // 2) // (TURNED_PER_PIXEL * p)))
    combine = warped + 2 * p + 3 * size.f32 + 2 * p + strips + turned
    # written (image, UNCERT, EXPMAP, a big-endian copy) while the preview is drawn beside it
    write = 4 * size.f32 + 4 * p + preview_beside(size)
    return max(read, align, combine, write) + SLACK


def preview_beside(size: FrameSize) -> int:
    """Bytes of a preview drawn from a display-sized copy (`previews.image_preview_beside`): at most
    800 px a side (counted as 1024), its sum, stretch (float64) and output, and the figure's canvas."""
    return 16 * min(size.pixels, 1 << 20) + (4 << 20)


def ingest(data_bytes: int) -> int:
    """Peak bytes of `tasks.ingest` for a file of ``data_bytes`` of image data: its bytes,
    astropy's decoded copy and the native copy; then the frame and the pixel statistics' float32
    copy (twice a 16-bit frame)."""
    return 3 * data_bytes + SLACK


def need(spec: Any) -> int | None:
    """Bytes the job of ``spec`` needs beyond the worker's base; None when the spec does not
    say the frame size (the job then runs unchecked)."""
    from ccdwatch.jobs import specs

    size = FrameSize.of(getattr(spec, "shape", None))
    if size is None:
        return None
    if isinstance(spec, specs.CalibrateSpec):
        plane = bool(spec.noise and spec.noise.gain and spec.noise.plane)
        return calibration(size, bias=spec.bias_path is not None, dark=spec.dark_path is not None,
                           flat=spec.flat_path is not None, overscan=spec.overscan is not None,
                           uncertainty=plane)
    if isinstance(spec, specs.MasterSpec):
        return master(size, kind=spec.kind, n=len(spec.frames), threads=spec.threads, budget=spec.memory_budget,
                      bias=spec.bias_path is not None, dark=spec.dark_path is not None, method=spec.method,
                      overscan=spec.overscan is not None)
    if isinstance(spec, specs.StackSpec):
        return stack(size, n=len(spec.products), threads=spec.threads, budget=spec.memory_budget,
                     method=spec.method)
    return None


def fitting(spec: Any, limit: int) -> tuple[Any, int | None]:
    """``spec`` with as many of its threads as fit ``limit`` bytes (the worker's base included),
    and the bytes it needs; ``(None, need)`` when it cannot fit even with one thread."""
    estimate = need(spec)
    if estimate is None or limit <= 0:
        return spec, estimate
    threads = getattr(spec, "threads", 1)
    while WORKER_BASE + estimate > limit and threads > 1:
        threads -= 1
        spec = dataclasses.replace(spec, threads=threads)
        estimate = need(spec) or 0
    return (spec if WORKER_BASE + estimate <= limit else None), estimate


def gib(nbytes: float) -> str:
    """Bytes as '2.3 GiB' or '740 MiB'."""
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / MiB:.0f} MiB"


def required_limit_mb(estimate: int) -> int:
    """The smallest ``workers.memory_limit_mb`` that fits a job of ``estimate`` bytes, rounded up
    to 64 MiB."""
    return int(math.ceil((WORKER_BASE + estimate) / MiB / 64.0) * 64)


def refusal(subject: str, estimate: int, *, limit_mb: float, processes: int, then: str) -> str:
    """Why a job is not run, in words, with the setting to change, the value that would do, and
    ``then`` what to do once it is changed."""
    required = required_limit_mb(estimate)
    unit = max(1, processes) * required + 512
    return (f"{subject} needs ~{gib(WORKER_BASE + estimate)} (its arrays {gib(estimate)} + the worker's own "
            f"{gib(WORKER_BASE)}), more than workers.memory_limit_mb = {limit_mb:g}: raise it to at least "
            f"{required} (and the unit's MemoryMax= to workers.processes x that + 512 MiB = {unit}M), then {then}")


class OutOfMemory(MemoryError):
    """A job that ran out of memory, said in words: what it was doing, the sizes involved and
    the setting that limits it."""


class WorkerFull(MemoryError):
    """A job that would fit a fresh worker found its worker holding too much from earlier jobs
    (freed memory that the heap and the threads' arenas keep): the pool runs it again on fresh
    workers, without counting a try."""


def room_for(spec: Any, release: Callable[[], None]) -> None:
    """Before a job: raise :class:`WorkerFull` when this worker has less room under its data limit
    than the job needs, even after ``release`` (its caches) and trimming the heap, while a fresh
    worker (`WORKER_BASE`) would have enough."""
    make_room(need(spec), release)


def make_room(estimate: int | None, release: Callable[[], None]) -> None:
    """`room_for` a need of ``estimate`` bytes (None: unknown, nothing done)."""
    room = headroom()
    if estimate is None or room is None or room >= estimate:
        return
    release()
    gc.collect()
    malloc_trim()
    room = headroom()
    fresh = _data_limit() - WORKER_BASE
    if room is not None and room < estimate <= fresh:
        raise WorkerFull(f"the worker holds {gib(_data_limit() - room)} from earlier jobs; the job needs "
                         f"{gib(estimate)} more, a fresh worker has {gib(fresh)}")


def _data_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_DATA)[0]


def malloc_trim() -> None:
    """Give the heap's free pages back to the system (glibc); nothing elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def explain(exc: BaseException, subject: str, spec: Any) -> OutOfMemory:
    """An :class:`OutOfMemory` for a ``MemoryError`` (or ``ENOMEM``) raised by the job of ``spec``."""
    import resource

    detail = str(exc).strip() or "no detail from the allocator"
    estimate = need(spec)
    limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
    size = FrameSize.of(getattr(spec, "shape", None))
    frame = f" for frames of {size.nx}x{size.ny}" if size is not None else ""
    parts = [f"{subject} ran out of memory ({detail})"]
    if estimate is not None:
        parts.append(f"it was estimated to need ~{gib(WORKER_BASE + estimate)}{frame}")
    if limit != resource.RLIM_INFINITY:
        parts.append(f"the worker may use {gib(limit)} (workers.memory_limit_mb = {limit / MiB:g})")
    return OutOfMemory("; ".join(parts))


def headroom() -> int | None:
    """Bytes this process may still allocate under its data limit (``RLIMIT_DATA`` minus its
    ``VmData``); None without a limit or off Linux."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmData:"):
                    return limit - int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
