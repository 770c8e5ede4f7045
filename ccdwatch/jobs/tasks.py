"""The jobs: work done in worker processes, files in, files out, no catalogue.

Each job takes a small picklable spec, reads what it needs, writes its product atomically and
returns a small picklable result; the pipeline, in the daemon process, does every catalogue
write. A file that crashes or hangs the parser can therefore kill a worker but never the daemon
(see :mod:`ccdwatch.jobs.pool`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import math
import os
import resource
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from astropy.io import fits

from ccdwatch import calib, colour, cosmics, evidence, faults, qa, stack
from ccdwatch.fitsio import (
    ProductGone,
    RejectedFile,
    read_product_hdus,
    read_raw,
    write_product,
)
from ccdwatch.headers import (
    PixelEvidence,
    header_to_jsonable,
    normalise,
)
from ccdwatch.jobs import fanout, memory, pool, stackinputs, uncertainty
from ccdwatch.jobs.raws import RawGone as RawGone  # re-exported: where the pipeline has always found them
from ccdwatch.jobs.raws import load_raw as load_raw
from ccdwatch.jobs.raws import overscan_cards
from ccdwatch.jobs.raws import prepare as prepare_raw
from ccdwatch.jobs.specs import (
    CalibrateResult,
    CalibrateSpec,
    IngestResult,
    IngestSpec,
    MasterResult,
    MasterSpec,
    StackJobResult,
    StackSpec,
)
from ccdwatch.jobs.stackcards import stack_cards, width
from ccdwatch.products import to_fits_header
from ccdwatch.scratch import ScratchArrays

logger = logging.getLogger(__name__)

R = TypeVar("R")


def _explained(job: Callable[[Any], R]) -> Callable[[Any], R]:
    """``job`` with any ``MemoryError`` (or ENOMEM) turned into a `memory.OutOfMemory` that says
    what ran out, the sizes involved and the setting that limits the worker."""

    @functools.wraps(job)
    def run(spec: Any) -> R:
        pool.heap_for(job.__name__, spec)
        memory.room_for(spec, _MASTERS.clear)  # WorkerFull: the pool runs it again on fresh workers
        try:
            return job(spec)
        except memory.OutOfMemory:
            raise
        except MemoryError as exc:
            raise memory.explain(exc, _subject(job.__name__, spec), spec) from None
        except OSError as exc:
            if exc.errno != errno.ENOMEM:
                raise
            raise memory.explain(exc, _subject(job.__name__, spec), spec) from None
        finally:
            release_masters()

    return run


def _subject(name: str, spec: Any) -> str:
    what = {"build_master": "building a master", "calibrate_light": "calibrating a light",
            "stack_group": "stacking a group", "ingest": "reading a raw file"}.get(name, name)
    where = getattr(spec, "out_path", None) or getattr(spec, "path", None)
    return f"{what} ({where})" if where else what


# ---------------------------------------------------------------------------------- ingest
@_explained
def ingest(spec: IngestSpec) -> IngestResult:
    """Read and validate one raw file and normalise its header (raises RejectedFile)."""
    faults.point("ingest", spec.path)
    _check_room(spec.path)
    raw = read_raw(spec.path, max_data_bytes=spec.max_data_bytes, allow_compressed=spec.allow_compressed,
                   unwritten_grace=spec.unwritten_grace, now=spec.now)
    pixels = _pixel_evidence(raw.data, spec.path)
    info = normalise(raw.header, filename=spec.relpath or Path(spec.path).name, rules=spec.rules,
                     timezone=spec.timezone, night_start_hour=spec.night_start_hour, pixels=pixels,
                     bayer_pattern=spec.bayer_pattern, bayer_instruments=dict(spec.bayer_instruments),
                     overscan=spec.overscan, setpoint_tolerance=spec.setpoint_tolerance)
    return IngestResult(raw.sha256, raw.size, raw.mtime_ns, raw.inode, raw.hdu_index, info,
                        header_to_jsonable(raw.header), pixels.to_json() if pixels is not None else None)


def _pixel_evidence(data: np.ndarray | None, path: str) -> PixelEvidence | None:
    """The pixels' statistics for classification; never a reason to lose a frame."""
    if data is None or data.ndim != 2 or min(data.shape) < 2:
        return None
    try:
        return evidence.measure(data)
    except Exception as exc:  # noqa: BLE001 - classification then goes by header and path
        logger.warning("%s: pixel statistics failed (%s: %s); classified by header and path", path,
                       type(exc).__name__, exc)
        return None


def _check_room(path: str) -> None:
    """Refuse, before reading a byte of data, a file no worker has room to read (its size on disk
    stands for its data: a file smaller than its header declares is refused anyway). A file that
    only this worker cannot read, for what earlier jobs left (its masters' cache, the heap), is
    read once those are let go, or on fresh workers (`memory.WorkerFull`): refused, it stayed
    quarantined until the file changed."""
    try:
        size = os.lstat(path).st_size
    except OSError:
        return  # read_raw says what is wrong with it
    need = memory.ingest(size)
    memory.make_room(need, _MASTERS.clear)
    room = memory.headroom()
    if room is not None and need > room:
        limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
        raise RejectedFile("too-large", (
            f"{path}: reading its {memory.gib(size)} needs ~{memory.gib(need)} of memory, more than the worker has "
            f"left ({memory.gib(room)}) under workers.memory_limit_mb = {limit / memory.MiB:g}: raise it to at least "
            f"{memory.required_limit_mb(need)} to read such files, or lower ingest.max_data_mb to refuse them "
            "at once"))


# ---------------------------------------------------------------------------------- masters
_MASTERS: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}


def load_master(path: str, sha256: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A master image (and its hot-pixel map), cached in the worker: the lights of a night all
    use the same three. See :func:`use_masters` and :func:`release_masters` for how long.

    ``sha256``: its catalogue row's, checked as it is read into the cache (once per master and
    worker: ~1 ms per MB, 16 ms for a 2k master). Raises :class:`ProductGone` when its file is
    gone or is not that: the master's fault, not the job's."""
    if path in _MASTERS:
        return _MASTERS[path]
    try:
        hdus = read_product_hdus(path, sha256=sha256)
    except ProductGone:
        raise
    except FileNotFoundError:
        raise ProductGone(path, f"{path} is missing") from None
    data = np.asarray(hdus[0].data, dtype=np.float32)
    hot = np.asarray(hdus["HOTPIX"].data).astype(bool) if "HOTPIX" in hdus else None
    uncertainty.remember(path, hdus[0].header)
    del hdus
    _MASTERS[path] = (data, hot)
    return data, hot


def use_masters(*paths: str | None) -> None:
    """A job starts that needs these masters: forget every other one the worker holds."""
    wanted = {p for p in paths if p}
    uncertainty.forget(list(wanted))
    for path in [p for p in _MASTERS if p not in wanted]:
        del _MASTERS[path]


def release_masters() -> None:
    """The job is done with its masters: keep them for the next job only when they take at most
    `memory.MASTER_CACHE_BYTES` together (a job's memory estimate counts on this)."""
    held = sum(d.nbytes + (h.nbytes if h is not None else 0) for d, h in _MASTERS.values())
    if held > memory.MASTER_CACHE_BYTES:
        _MASTERS.clear()


@_explained
def build_master(spec: MasterSpec) -> MasterResult:
    """Calibrate each input (kept in RAM or spilled to scratch files), combine them in strips,
    write the master."""
    faults.point("master-build", spec.out_path)
    use_masters(spec.bias_path, spec.dark_path)
    sums = spec.checksums
    masters = {"dark": load_master(spec.dark_path, sums.get(spec.dark_path))[0] if spec.dark_path else None,
               "bias": load_master(spec.bias_path, sums.get(spec.bias_path))[0] if spec.bias_path else None}

    levels: list[float | None] = [None] * len(spec.frames)
    rejected: dict[int, str] = {}  # input index -> why it is left out (a flat's level)

    def prepare(i: int) -> tuple[np.ndarray, float] | None:
        paths, sha = spec.frames[i]
        raw = load_raw(paths, sha, max_data_bytes=spec.max_data_bytes, allow_compressed=spec.allow_compressed)
        image, section, levels[i] = prepare_raw(raw, spec.overscan)  # the overscan first, then trimmed
        del raw
        data = calib.calibrate(image, bias=masters["bias"], dark=masters["dark"], dark_scale=spec.dark_scale or 1.0)
        del image
        why = _flat_problem(spec, section, data)
        del section
        if why is not None:
            rejected[i] = why
            return None
        scale = 1.0
        if spec.kind == "flat" and spec.bayer_pattern:  # each colour to median 1: twilight changes colour
            return scratch.keep(colour.normalise_flat(data, spec.bayer_pattern)), scale
        if spec.kind == "flat":
            # the median of a regular subsample (<= 1 M pixels) is the scale to ~1e-4
            med = calib.robust_median(data)
            if not np.isfinite(med) or med <= 0:
                raise ValueError(f"flat input {paths[0]} has a non-positive median ({med:g})")
            scale = 1.0 / med
        return scratch.keep(data), scale

    # one more thread: the preview is drawn beside the statistics and the write (whose fsync leaves the core
    # idle); with cores to share, the noise cards (float64 subsamples, <= ~50 MB) also read the inputs
    # beside the combination (else before it)
    with ThreadPoolExecutor(max_workers=1) if spec.threads > 1 or spec.preview_path \
            else contextlib.nullcontext() as side:
        with ScratchArrays(spec.workdir, count=len(spec.frames), budget=spec.memory_budget // 4,
                           prefix="master-") as scratch:
            first = prepare(0)  # the first input decides: all in RAM, or all in scratch files
            rest = range(1, len(spec.frames))
            if spec.threads > 1:  # reading, checksums and calibration release the GIL for the most part
                with ThreadPoolExecutor(max_workers=spec.threads) as readers:
                    everyone = [first, *readers.map(prepare, rest)]
            else:
                everyone = [first, *map(prepare, rest)]
            prepared = [p for p in everyone if p is not None]
            del everyone, first
            refused = tuple(sorted(rejected.items()))
            if refused and len(prepared) < max(1, spec.min_frames):  # too few left: no master
                return MasterResult(None, math.nan, math.nan, None, None,
                                    tuple(levels) if spec.overscan is not None else (), None, refused)
            spec = _without(spec, rejected)
            arrays = [a for a, _ in prepared]
            scales = [k for _, k in prepared] if spec.kind == "flat" and not spec.bayer_pattern else []
            del prepared
            masters.clear()
            release_masters()  # large masters are not held through the combination
            cards = functools.partial(uncertainty.master_cards, spec.kind, arrays, scales, spec.method,
                                      bias_path=spec.bias_path, measure_gain=spec.measure_gain)
            pending = side.submit(cards) if side is not None and spec.threads > 1 else None
            noise_cards = cards() if pending is None else {}
            with pool.keeping_freed_memory(spec):  # each strip takes its temporaries again
                combined = np.asarray(calib.combine(arrays, method=spec.method, sigma=spec.sigma,
                                                    scales=scales or None, memory_budget=spec.memory_budget,
                                                    threads=spec.threads))
            noise_cards = pending.result() if pending is not None else noise_cards
            del arrays, cards, pending  # the inputs: `cards` holds them too
        if spec.kind == "flat":
            combined = colour.normalise_flat(combined, spec.bayer_pattern, floor=spec.flat_floor)
            if spec.flat_floor > 0:
                spec = dataclasses.replace(spec, header={**spec.header, "FLATMIN": (
                    spec.flat_floor, "pixels below this (relative) are blank"), "NFLATLOW": (
                    int(np.count_nonzero(np.isnan(combined))), "blank pixels (below FLATMIN or no data)")})
        result = _write_master(spec, combined, noise_cards, tuple(levels) if spec.overscan is not None else (), side)
        return dataclasses.replace(result, rejected=refused)


def _flat_problem(spec: MasterSpec, section: np.ndarray, data: np.ndarray) -> str | None:
    """Why a flat input (its raw data section, and calibrated) must stay out of the master: its
    level, against the raw saturation level the lights use (`saturation_level`), or its signal
    (`ccdwatch.flatcheck.judge`). None: it is used (and for any other kind, or without limits)."""
    limits = spec.flat_limits
    if spec.kind != "flat" or limits is None:
        return None
    from ccdwatch import flatcheck

    return flatcheck.judge(section, data, saturation_level(section, spec.saturation), max_level=limits.max_level,
                           max_saturated=limits.max_saturated, min_signal=limits.min_signal,
                           channels=colour.channel_sites(spec.bayer_pattern) if spec.bayer_pattern else None,
                           names=colour.CHANNELS)


def _without(spec: MasterSpec, rejected: dict[int, str]) -> MasterSpec:
    """``spec`` as the master is written without the ``rejected`` inputs: its count, its INPUTS
    table and its preview's title name only those it combines."""
    if not rejected:
        return spec
    n = len(spec.frames) - len(rejected)
    header = {**spec.header, "NCOMBINE": n, "NREJECT": (len(rejected), "inputs rejected for their level")}
    return dataclasses.replace(
        spec, header=header, inputs_table=tuple(t for i, t in enumerate(spec.inputs_table) if i not in rejected),
        preview_title=spec.preview_title.replace(f"{len(spec.frames)} frames", f"{n} frames"))


def _write_master(spec: MasterSpec, combined: np.ndarray, cards: dict[str, Any],
                  levels: tuple[float | None, ...] = (), side: ThreadPoolExecutor | None = None) -> MasterResult:
    """The master's FITS file (image, INPUTS table, hot-pixel map of a dark) and preview (drawn in
    ``side``, which `build_master` gives whenever the spec asks for a preview, while this goes on)."""
    pattern = spec.bayer_pattern
    drawing = None
    if spec.preview_path and side is not None:
        from ccdwatch import previews  # matplotlib: only where previews are drawn

        drawing = previews.master_preview_beside(side, combined, title=spec.preview_title, pattern=pattern)
    level, noise = colour.mosaic_stats(combined, pattern) if pattern else calib.robust_stats(combined)
    hot = calib.hot_pixel_mask(combined, nsigma=spec.hot_pixel_sigma, stats=None if pattern else (level, noise)) \
        if spec.kind == "dark" else None  # a monochrome dark's statistics are the threshold's: measured once
    extra = {"HOTPIX": (int(hot.sum()), "hot pixels in the HOTPIX extension")} if hot is not None else {}
    header = to_fits_header({**spec.header, **extra, **cards})
    for ch, (med, sig) in (colour.channel_stats(combined, pattern) if pattern else {}).items():
        header[f"LEVEL_{ch}"] = (med, f"median of the {ch} pixels")
        header[f"NOISE_{ch}"] = (sig, f"robust sigma of the {ch} pixels")
    known = [v for v in levels if v is not None]
    overscan_cards(header, spec.overscan, float(np.mean(known)) if known else None, combined.shape,
                   what=" (inputs' mean)")
    table = fits.BinTableHDU.from_columns(  # content, not catalogue ids: the same bytes in any order
        [fits.Column(name="FILE", format=f"{width(n for n, _ in spec.inputs_table)}A",
                     array=np.array([n for n, _ in spec.inputs_table])),
         fits.Column(name="SHA256", format="64A", array=np.array([h for _, h in spec.inputs_table]))],
        name="INPUTS")
    hdus = fits.HDUList([fits.PrimaryHDU(np.asarray(combined, dtype=np.float32), header=header), table])
    if hot is not None:
        hdus.append(fits.ImageHDU(hot.astype(np.uint8), name="HOTPIX"))
    sha = write_product(spec.out_path, hdus, min_free_bytes=spec.min_free_bytes, compression=spec.compression)
    # written once the master is
    preview = previews.write_png(spec.preview_path, drawing.result()) if drawing and spec.preview_path else None
    gain = (cards["GAINMEAS"][0], cards["GAINMERR"][0]) if "GAINMEAS" in cards else None
    return MasterResult(sha, level, noise, int(hot.sum()) if hot is not None else None, preview, levels, gain)


def _light_preview(data: np.ndarray, path: str, title: str, pattern: str | None = None) -> str | None:
    """A calibrated light's preview (``report.light_previews``); a failure is logged, never raised."""
    from ccdwatch import previews

    try:
        return str(previews.image_preview(data, path, title=title, pattern=pattern))
    except Exception:  # a preview must never cost a product
        logger.exception("preview %s failed", path)
        return None


# ---------------------------------------------------------------------------------- lights
def saturation_level(raw: np.ndarray, configured: float | None) -> float:
    """Raw saturation: header/config value, else a ceiling where pixels pile up, else the type's max.

    NaN and infinite pixels (a float raw frame) are no ceiling."""
    if configured:
        return float(configured)
    ceiling = np.max(raw, initial=-np.inf, where=np.isfinite(raw)) if raw.dtype.kind == "f" else raw.max()
    top = float(ceiling)
    # compared in the raw's own type (a Python float would cast every pixel to float64 first)
    if top > 1000 and np.count_nonzero(raw == ceiling) >= 5:  # pixels piled up at a ceiling
        return top
    return 65535.0 if raw.dtype.kind in "ui" else float("inf")


def _at_or_above(raw: np.ndarray, level: float) -> np.ndarray:
    """``raw >= level``, compared in an integer raw's own type: the level's ceiling (a Python float
    would cast every pixel to float64 first), and no comparison at all beyond the type's range."""
    if raw.dtype.kind not in "ui" or not math.isfinite(level):
        return np.asarray(raw >= level)
    info = np.iinfo(raw.dtype)
    if level > info.max:
        return np.zeros(raw.shape, dtype=bool)
    if level <= info.min:
        return np.ones(raw.shape, dtype=bool)
    return np.asarray(raw >= raw.dtype.type(math.ceil(level)))


def _pixel_masks(raw: np.ndarray, data: np.ndarray, saturation: float,
                 hot: np.ndarray | None) -> tuple[np.ndarray, float, int]:
    """The pixels the quality measurement ignores (saturated in the raw frame, hot, or not
    finite), their saturated fraction, and how many raw pixels were NaN or infinite (set to
    NaN in ``data``, in place)."""
    saturated = _at_or_above(raw, saturation)
    nonfinite = 0
    if raw.dtype.kind == "f":
        bad = ~np.isfinite(raw)
        nonfinite = int(np.count_nonzero(bad))
        if nonfinite:
            data[bad] = np.nan
            saturated &= ~bad
        del bad
    fraction = float(np.count_nonzero(saturated)) / max(1, saturated.size)
    if hot is not None:
        saturated |= hot
    return saturated, fraction, nonfinite


@_explained
def calibrate_light(spec: CalibrateSpec) -> CalibrateResult:
    """(raw - bias - dark*scale) / flat, frame quality and sources, written with provenance.

    The raw frame and (unless small enough to stay cached) the masters are let go before the
    quality measurement, the job's largest phase (see `memory.calibration`).
    """
    faults.point("calibrate", spec.raw_paths[0])
    use_masters(spec.bias_path, spec.dark_path, spec.flat_path)
    # the masters first, the dark (two images) first of them: reading a product holds three times
    # its size for a moment, best done while little else is held
    sums = spec.checksums
    dark, hot = load_master(spec.dark_path, sums.get(spec.dark_path)) if spec.dark_path else (None, None)
    bias = load_master(spec.bias_path, sums.get(spec.bias_path))[0] if spec.bias_path else None
    flat = load_master(spec.flat_path, sums.get(spec.flat_path))[0] if spec.flat_path else None
    # the light's last read tonight: its cached pages go (once its flats are in, a light is not read
    # again; the product written next takes the pages they free)
    raw = load_raw(spec.raw_paths, spec.raw_sha256, max_data_bytes=spec.max_data_bytes,
                   allow_compressed=spec.allow_compressed, last_read=True)
    image, raw, level = prepare_raw(raw, spec.overscan)  # the overscan first; raw: its data section
    data = calib.calibrate(image, bias=bias, dark=dark, dark_scale=spec.dark_scale, flat=flat)
    # the Poisson term counts what the pixel collected: the overscan-subtracted, trimmed frame
    unc = uncertainty.light_noise(spec.noise, image, data, masters={"bias": bias, "dark": dark, "flat": flat},
                                  paths={"bias": spec.bias_path, "dark": spec.dark_path, "flat": spec.flat_path},
                                  dark_scale=spec.dark_scale)
    del bias, dark, flat, image
    release_masters()
    saturation = saturation_level(raw, spec.saturation)
    mask, saturated_fraction, nonfinite = _pixel_masks(raw, data, saturation, hot)
    del raw
    rays = None if spec.bayer_pattern else cosmics.find(data, spec.cosmic_rays, mask=mask,
                                                            gain=spec.noise.gain if spec.noise else None)
    if rays is not None:  # kept out of the sources and the quality, like hot pixels
        mask |= rays.mask
    if spec.bayer_pattern:
        quality, sources = colour.measure(data, spec.bayer_pattern, mask=mask, detect_sigma=spec.detect_sigma,
                                          method=spec.demosaic)
    else:
        quality, sources = qa.measure(data, saturation=None, detect_sigma=spec.detect_sigma, mask=mask)
    del mask
    columns = {n: np.array(getattr(sources, n), dtype=np.float32) for n in ("x", "y", "flux", "fwhm", "elongation")}
    cards, planes = unc.finish(data, columns["flux"])  # quality (catalogue) in ADU, the product in BUNIT
    badpix = cosmics.bad_pixel_plane(hot, rays.mask if rays is not None else None)
    if not spec.bayer_pattern:  # what its stack measures first, measured here on the planes in memory
        cards.update(stackinputs.level_cards(data, badpix, next((h.data for h in planes if h.name == "UNCERT"), None)))
    extra = {**cards, "SATLEVEL": (float(saturation), "raw saturation level used, ADU")}
    if rays is not None:
        extra["NCOSMIC"] = (rays.hits, f"cosmic-ray hits masked (BADPIX bit {cosmics.BAD_COSMIC}), {spec.cosmic_rays}")
    header = to_fits_header({**spec.header, **extra})
    overscan_cards(header, spec.overscan, level, data.shape)
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name=n.upper(), format="E", array=a) for n, a in columns.items()], name="SOURCES")
    hdus = fits.HDUList([fits.PrimaryHDU(data, header=header), table])
    if badpix is not None:
        hdus.append(fits.ImageHDU(badpix, name="BADPIX"))
    hdus.extend(planes)
    sha = write_product(spec.out_path, hdus, min_free_bytes=spec.min_free_bytes, compression=spec.compression,
                        sync=spec.sync)
    if spec.preview_path:
        _light_preview(data, spec.preview_path, f"calibrated {Path(spec.out_path).stem}", spec.bayer_pattern)
    return CalibrateResult(spec.frame_id, sha, quality, float(saturation), saturated_fraction, nonfinite,
                           rays.hits if rays is not None else None, level)


# ---------------------------------------------------------------------------------- stacks
@_explained
def stack_group(spec: StackSpec) -> StackJobResult:
    """Align the calibrated frames on the reference (sources detected at calibration) and combine."""
    faults.point("stack", spec.out_path)
    use_masters()
    Path(spec.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=spec.workdir) as tmp:
        if spec.bayer_pattern:  # mosaics demosaiced and warped whole
            sources, units = stackinputs.source_lists(spec.products)
            whole = stackinputs.WholeFrames(spec.products)
            load, variance, mapped, levels = whole.load, whole.variance, None, None
        else:  # warped strip by strip from the products' planes as the combination reads them
            inputs = stackinputs.strip_inputs(spec.products, Path(tmp))
            sources, units, mapped, levels = inputs.sources, inputs.units, inputs.mapped, inputs.levels
            load, variance = (lambda fid: inputs.mapped[fid].rows(0, inputs.mapped[fid].shape[0])), None
        result = stack.align_and_stack(list(spec.products), load, sources, spec.reference, method=spec.method,
                                       sigma=spec.sigma, memory_budget=spec.memory_budget, workdir=tmp,
                                       threads=spec.threads, planes=_demosaicer(spec.bayer_pattern, spec.demosaic),
                                       interpolation=spec.interpolation, variance=variance, weights=spec.weights,
                                       exposures={fid: t for fid, _, t in spec.members}, fwhm=spec.fwhm,
                                       mapped=mapped, levels=levels, fanout=fanout.forked(spec.threads),
                                       scale_flux=spec.scale_flux)
    header, table = stack_cards(spec, result)
    header["BUNIT"] = (units.get(result.reference, "adu"), "unit of the image and of UNCERT")
    with ThreadPoolExecutor(max_workers=1) if spec.preview_path else contextlib.nullcontext() as side:
        # the preview is drawn (matplotlib: ~0.3 s at 2k) while the product is written, from a
        # display-sized copy taken first (`previews.image_preview_beside`)
        drawing = None
        if side is not None:
            from ccdwatch import previews  # matplotlib: only where previews are drawn

            drawing = previews.image_preview_beside(side, result.image, title=spec.preview_title)
        hdus = fits.HDUList([fits.PrimaryHDU(result.image, header=header),
                             fits.ImageHDU(result.count, name="NFRAMES"), table,
                             *uncertainty.stack_planes(result.sigma, result.expmap, header["BUNIT"])])
        sha = write_product(spec.out_path, hdus, min_free_bytes=spec.min_free_bytes, compression=spec.compression)
        del hdus
        result.sigma = result.expmap = None
        preview = previews.write_png(spec.preview_path, drawing.result()) if drawing and spec.preview_path else None
    return StackJobResult(sha, result.reference, {k: v.to_json() for k, v in result.transforms.items()},
                          dict(result.failed), preview,
                          {k: (v.value, v.n_stars, v.reason) for k, v in result.scales.items()},
                          {k: v if isinstance(v, float) else v[0] for k, v in result.offsets.items()})


def _demosaicer(pattern: str | None, method: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """A stack's ``planes``: the calibrated mosaics into R, G, B (None: monochrome frames)."""
    if not pattern:
        return None
    return functools.partial(colour.demosaic, pattern=pattern, method=method)
