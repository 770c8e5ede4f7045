"""Combination of a group of calibrated lights into a stack on the pixel grid of a reference frame.

`align_and_stack` aligns each frame onto the reference (`ccdwatch.align`), scales it about its sky
to the reference's flux (`ccdwatch.photscale`: the stars matched at alignment), removes its sky
offset and combines the warped frames with `ccdwatch.calib.combine`, keeping the exposure map and the
number of values that survived the rejection. Pure numerics apart from the scratch ``.npy`` files
it writes into a caller-given work directory when a group's warped frames do not fit half of
its memory budget (`ccdwatch.scratch`).

`AlignmentError`, `Transform`, `find_transform` and `warp` live in `ccdwatch.align` and
`preview_stretch` in `ccdwatch.previews`; all of them stay importable from here.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ccdwatch import calib, noise
from ccdwatch.align import AlignmentError, Transform, find_transform, warp
from ccdwatch.photscale import FluxScale, ScaledRows, flux_scale
from ccdwatch.qa import Sources
from ccdwatch.scratch import ScratchArrays
from ccdwatch.stripwarp import LEVEL_STEP, READ_BYTES_PER_PIXEL, MappedFrame, WarpedRows, frame_levels, strip_rows

if TYPE_CHECKING:  # at run time through `__getattr__`
    from ccdwatch.previews import preview_stretch

logger = logging.getLogger(__name__)

__all__ = [
    "AlignmentError",
    "MappedFrame",
    "StackResult",
    "Transform",
    "align_and_stack",
    "find_transform",
    "preview_stretch",
    "warp",
]


def __getattr__(name: str) -> Any:
    """`preview_stretch`, from `ccdwatch.previews` on first use: that module loads matplotlib,
    which the daemon's process (it imports this module for the job descriptions) never needs."""
    if name == "preview_stretch":
        from ccdwatch.previews import preview_stretch

        return preview_stretch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class StackResult:
    """Outcome of `align_and_stack`.

    Attributes
    ----------
    image : ndarray of float32
        The stack on the reference grid (image units of one frame; NaN where no frame covers):
        (ny, nx), or (n, ny, nx) for frames split into ``n`` planes (R, G, B of a colour mosaic).
    count : ndarray of uint16
        Number of frames that covered each pixel (their warped footprint, minus masked
        pixels): the exposure map, independent of the clipping.
    transforms : dict
        Frame id -> Transform of every stacked frame (identity for the reference).
    failed : dict
        Frame id -> reason, for frames that could not be aligned.
    reference : int
        Id of the reference frame.
    offsets : dict
        Frame id -> its sky level less the reference's (image units; one per plane, as a tuple, for
        frames split into planes): each frame is combined as ``scale * (value - sky) + reference sky``.
    scales : dict
        Frame id -> its `FluxScale` against the reference (1.0 for the reference; absent when not
        scaled: ``scale_flux=False``), its variance multiplied by the scale squared.
    used : ndarray of uint16 or None
        Number of values that survived the clipping at each pixel (``count`` minus the
        rejected ones; equal to ``count`` for "mean" and "median"); per plane like ``image``.
    """

    image: np.ndarray
    count: np.ndarray
    transforms: dict[int, Transform]
    failed: dict[int, str]
    reference: int
    offsets: dict[int, float | tuple[float, ...]] = field(default_factory=dict)
    used: np.ndarray | None = None
    sigma: np.ndarray | None = None
    """1-sigma uncertainty of ``image`` (`ccdwatch.noise.combine_weighted`), per plane like it."""
    expmap: np.ndarray | None = None
    """float32 seconds of exposure whose values were combined at each pixel (of the first plane)."""
    weights: dict[int, float] = field(default_factory=dict)
    """Frame id -> its weight in the combination (of the first plane)."""
    scales: dict[int, FluxScale] = field(default_factory=dict)


def _sky_level(image: np.ndarray) -> float:
    """Robust sky level of a frame: median of the finite pixels of a `LEVEL_STEP`-strided
    subsample (NaN when none is finite)."""
    return calib.robust_median(image[::LEVEL_STEP, ::LEVEL_STEP])


def align_and_stack(
    ids: Sequence[int],
    load: Callable[[int], np.ndarray],
    sources: Mapping[int, Sources],
    reference: int,
    *,
    masks: Mapping[int, np.ndarray | None] | None = None,
    method: str = "sigma_clip",
    sigma: float = 3.0,
    memory_budget: int = 1 << 30,
    workdir: str | os.PathLike[str],
    order: int = 1,
    match_background: bool = True,
    threads: int = 1,
    planes: Callable[[np.ndarray], np.ndarray] | None = None,
    interpolation: str = "bicubic",
    variance: Callable[[int], np.ndarray | None] | None = None,
    weights: str = "none",
    exposures: Mapping[int, float] | None = None,
    fwhm: Mapping[int, float] | None = None,
    mapped: Mapping[int, MappedFrame] | None = None,
    levels: Mapping[int, tuple[float, float] | None] | None = None,
    fanout: noise.Fanout | None = None,
    scale_flux: bool = True,
) -> StackResult:
    """Align frames onto a reference and combine them.

    Frames are aligned with `find_transform` (from the precomputed source lists), masked pixels set to
    NaN and warped with `warp`: with ``mapped``, each strip as the combination reads it (`ccdwatch.stripwarp`:
    nothing warped ahead, no scratch file); else loaded one at a time and warped whole, kept in memory when
    all take at most half of ``memory_budget``, else in float32 ``.npy`` scratch files under ``workdir``.

    Parameters
    ----------
    ids, reference, load : sequence of int, int, callable
        Frames to stack; the one whose pixel grid the stack uses (among ``ids``); ``load(id)``
        returns a calibrated frame as a 2-D array (not modified).
    sources, masks : mapping, optional mapping
        Frame id -> `Sources` from `ccdwatch.qa.measure` (must contain ``reference``); frame id ->
        boolean mask (True = bad pixel, e.g. hot pixels) or None: NaN before warping.
    method, sigma, memory_budget, workdir, order
        Combination method, clipping threshold (``sigma_clip``), bytes for `ccdwatch.calib.combine`,
        directory for the scratch files (the products' disk), spline order of a bilinear `warp`.
    match_background, scale_flux, threads
        Subtract each frame's sky level less the reference's before combining (a changing sky
        must not bias the clipping); scale it about its sky to the reference's flux first (thin
        cloud must not either: `ccdwatch.photscale`), its variance by the scale squared (so "ivar"
        weighs the scaled frame); threads reading, warping and combining (same result).
    planes : callable, optional
        ``planes(frame)`` splits a loaded (and masked) frame into planes of its shape, e.g.
        `ccdwatch.colour.demosaic` for a colour mosaic (R, G, B): each plane is warped with the
        frame's transform, has its own sky offset removed and is combined on its own.
    interpolation, variance, weights, exposures, fwhm
        `warp`'s kernel ("bicubic", "lanczos", "bilinear": ``stack.interpolation``);
        ``variance(id)`` (after ``load(id)``): the frame's per-pixel variance, warped like it, or None
        (then, and for planes, its robust sky variance); weights "ivar", "quality" or "none"
        (`ccdwatch.noise.frame_weight`, ``fwhm``: id -> px); ``exposures``: id -> s (exposure map).
    mapped, levels, fanout : optional
        Frame id -> `ccdwatch.stripwarp.MappedFrame` (image, bad pixels, UNCERT; memory maps of the products)
        of every frame, unused with ``planes`` (else ``load``, ``masks``, ``variance`` are); frame id -> its
        `ccdwatch.stripwarp.frame_level` when known (recorded at calibration), else None or absent: measured;
        with ``mapped``, a `noise.Fanout` to run the strips in processes instead of threads (the same result).

    Returns a `StackResult`; raises ValueError if ``reference`` is not among ``ids`` or has no source list, or nothing.
    """
    ids = list(dict.fromkeys(ids))
    if reference not in ids:
        raise ValueError(f"reference {reference} is not among the frames to stack")
    if reference not in sources:
        raise ValueError(f"no source list for the reference frame {reference}")
    if mapped is not None and planes is None:
        return _stack_in_strips(ids, mapped, sources, reference, method=method, sigma=sigma, order=order,
                                memory_budget=memory_budget, match_background=match_background, threads=threads,
                                weights=weights, interpolation=interpolation, exposures=exposures or {},
                                fwhm=fwhm or {}, levels=levels or {}, fanout=fanout, scale_flux=scale_flux)
    # all warped frames (and variances) in RAM when they take <= 1/2 of the budget, else memory-mapped
    # files; the frames in flight (`_align_group`) and the combination's strips take the other half
    n_arrays = len(ids) * (3 if planes is not None else 2 if variance is not None else 1)
    with ScratchArrays(workdir, count=n_arrays, budget=memory_budget // 2, prefix="stack-") as scratch:
        group = _align_group(ids, load, sources, reference, masks=masks, order=order,
                             match_background=match_background, scratch=scratch, planes=planes,
                             interpolation=interpolation, variance=variance, threads=threads,
                             memory_budget=memory_budget, scale_flux=scale_flux)
        if not group.frames or not group.frames[0] or group.coverage is None:  # pragma: no cover
            raise ValueError(f"nothing to stack: {group.failed}")  # the reference always stacks
        logger.info("stacking %d of %d frames onto %s (%s)", len(group.frames[0]), len(ids), reference, method)
        combined = _combine_group(group, method=method, sigma=sigma, memory_budget=memory_budget, threads=threads,
                                  weights=weights, exposures=exposures or {}, fwhm=fwhm or {})
    return StackResult(
        image=combined[0].image if planes is None else np.stack([c.image for c in combined]),
        count=group.coverage,
        used=combined[0].used if planes is None else np.stack([c.used for c in combined]),
        transforms=group.transforms,
        failed=group.failed,
        reference=reference,
        offsets=group.offsets,
        sigma=combined[0].sigma if planes is None else np.stack([c.sigma for c in combined]),
        expmap=combined[0].expmap,
        weights=group.weights,
        scales=group.scales,
    )


def _stack_in_strips(ids: Sequence[int], mapped: Mapping[int, MappedFrame], sources: Mapping[int, Sources],
                     reference: int, *, method: str, sigma: float, memory_budget: int, order: int,
                     match_background: bool, threads: int, interpolation: str, weights: str,
                     exposures: Mapping[int, float], fwhm: Mapping[int, float],
                     levels: Mapping[int, tuple[float, float] | None], fanout: noise.Fanout | None,
                     scale_flux: bool) -> StackResult:
    """`align_and_stack` of frames mapped where they lie, each strip warped as it is combined."""
    group = _strip_group(ids, mapped, sources, reference, interpolation=interpolation, order=order,
                         match_background=match_background, threads=threads, known=levels, scale_flux=scale_flux)
    logger.info("stacking %d of %d frames onto %s (%s, warped strip by strip)", len(group.frames[0]), len(ids),
                reference, method)
    ny, nx = mapped[reference].shape
    rows = strip_rows(len(group.transforms), nx, ny)
    # each thread warps a strip from the input rows it samples: of a frame turned against the
    # reference, up to all its rows; threads side by side only while those fit half the budget
    warped: list[WarpedRows] = group.frames[0]  # type: ignore[assignment]  # `_strip_group`'s
    reach = READ_BYTES_PER_PIXEL * max(f.input_pixels(rows) for f in warped)
    if threads > 1 and threads * reach > memory_budget // 2:
        threads = max(1, (memory_budget // 2) // reach)
        logger.info("frames turned against the reference: a strip reads up to %d MB of a frame, %d thread(s)",
                    reach >> 20, threads)
    combined = _combine_group(group, method=method, sigma=sigma, memory_budget=memory_budget, threads=threads,
                              weights=weights, exposures=exposures, fwhm=fwhm, rows=rows, fanout=fanout)[0]
    assert combined.covered is not None  # counted for strips (``rows``)
    return StackResult(image=combined.image, count=combined.covered, used=combined.used, transforms=group.transforms,
                       failed=group.failed, reference=reference, offsets=group.offsets, sigma=combined.sigma,
                       expmap=combined.expmap, weights=group.weights, scales=group.scales)


def _combine_group(group: _AlignedGroup, *, method: str, sigma: float, memory_budget: int, threads: int,
                   weights: str, exposures: Mapping[int, float], fwhm: Mapping[int, float],
                   rows: int | None = None, fanout: noise.Fanout | None = None) -> list[noise.Weighted]:
    """Combine each plane of the aligned ``group`` with the frames' weights (recorded in
    ``group.weights``, of the first plane); the warped frames are let go as each plane is done.
    ``rows``: fixed strips, for frames warped as they are read (their coverage is then counted)."""
    stacked = list(group.transforms)  # the frames combined, in order
    times = [float(exposures.get(i) or 0.0) for i in stacked]
    out = []
    for k, frames in enumerate(group.frames):
        var = group.variances[k]
        typical = group.typical[k]
        w = [noise.frame_weight(weights, t, fwhm.get(i)) for i, t in zip(stacked, typical, strict=True)]
        out.append(noise.combine_weighted(frames, var, w, times, method=method, sigma=sigma,
                                          memory_budget=memory_budget, threads=threads, typical=typical,
                                          rows=rows, coverage=rows is not None, fanout=fanout))
        if k == 0:
            group.weights = dict(zip(stacked, out[0].weights, strict=True))
        frames.clear()
        var.clear()
    return out


@dataclass
class _AlignedGroup:
    """The frames of a group warped onto the reference grid, and what aligning them recorded."""

    #: per plane, the warped frames in RAM or memory-mapped (`ScratchArrays`)
    frames: list[list[np.ndarray]] = field(default_factory=list)
    transforms: dict[int, Transform] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    offsets: dict[int, float | tuple[float, ...]] = field(default_factory=dict)
    coverage: np.ndarray | None = None  # uint16: frames covering each pixel
    #: per plane, each frame's warped variance plane or its sky variance (one number)
    variances: list[list[np.ndarray | float]] = field(default_factory=list)
    #: per plane, each frame's typical variance: the robust median of its warped variance plane
    #: (measured by the thread that warped it, before the plane may go to a scratch file)
    typical: list[list[float]] = field(default_factory=list)
    weights: dict[int, float] = field(default_factory=dict)  # frame id -> weight, set when combined
    scales: dict[int, FluxScale] = field(default_factory=dict)  # frame id -> its flux scale (when scaled)


@dataclass
class _Warped:
    """One frame ready to join the stack: its transform, planes' sky levels and warped planes."""

    index: int
    transform: Transform
    levels: list[float]
    planes: list[np.ndarray]
    variances: list[np.ndarray | float]  # per plane: the warped variance, or the sky's variance
    typical: list[float]  # per plane: the robust median of the warped variance, or the sky's variance


@dataclass(frozen=True)
class _How:
    """How each frame is loaded, masked, split and warped (`_prepare`)."""

    load: Callable[[int], np.ndarray]
    masks: Mapping[int, np.ndarray | None] | None
    planes: Callable[[np.ndarray], np.ndarray] | None
    order: int
    match_background: bool
    interpolation: str
    variance: Callable[[int], np.ndarray | None] | None


def _align_group(
    ids: Sequence[int],
    load: Callable[[int], np.ndarray],
    sources: Mapping[int, Sources],
    reference: int,
    *,
    masks: Mapping[int, np.ndarray | None] | None,
    order: int,
    match_background: bool,
    scratch: ScratchArrays,
    planes: Callable[[np.ndarray], np.ndarray] | None = None,
    interpolation: str = "bicubic",
    variance: Callable[[int], np.ndarray | None] | None = None,
    threads: int = 1,
    memory_budget: int = 1 << 30,
    scale_flux: bool = False,
) -> _AlignedGroup:
    """Load, align, mask (and split into ``planes``) and warp the frames, the reference first (its
    grid and sky levels are those of the stack), and keep the warped frames in ``scratch``.

    The transforms are found first, in order; then with ``threads`` > 1, and when that many frames
    in flight and the one being kept fit half of ``memory_budget`` (~16 bytes a pixel each, as
    much again for a variance), the next frames are read and warped by worker threads (reading,
    OpenCV's warp and numpy release the GIL) while this one keeps the last: the same frames, in
    the same order, as one at a time. Half: the warped frames kept in RAM take the other half
    at most, and when they do not fit it they go to scratch files and take none.
    """
    group = _AlignedGroup()
    order_ids = [reference] + [i for i in ids if i != reference]
    transforms = {i: t for i in order_ids if (t := _frame_transform(i, reference, sources, group.failed)) is not None}
    if scale_flux:
        group.scales = _flux_scales(transforms, sources, reference)
    how = _How(load, masks, planes, order, match_background or scale_flux, interpolation, variance)
    first = _prepare(reference, transforms[reference], how, None)
    output_shape = (int(first.planes[0].shape[0]), int(first.planes[0].shape[1]))
    group.frames = [[] for _ in first.planes]
    group.variances = [[] for _ in first.planes]
    group.typical = [[] for _ in first.planes]
    ref_sky = first.levels
    _keep_warped(group, first, ref_sky, scratch, match_background)
    del first
    rest = [i for i in order_ids[1:] if i in transforms]
    # ~16 bytes a pixel per plane in flight (read, masked, warped), and as much for a variance
    per_frame = 16 * output_shape[0] * output_shape[1] * (len(group.frames) + (variance is not None))
    workers = max(1, min(int(threads), len(rest)))
    if workers > 1 and (workers + 1) * per_frame > memory_budget // 2:
        workers = 1

    def prepare(i: int) -> _Warped:
        return _prepare(i, transforms[i], how, output_shape)

    if workers == 1:
        for i in rest:
            _keep_warped(group, prepare(i), ref_sky, scratch, match_background)
        return group
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[_Warped]] = deque(pool.submit(prepare, i) for i in rest[:workers])
        queued = iter(rest[workers:])
        while pending:
            done = pending.popleft().result()
            if (nxt := next(queued, None)) is not None:
                pending.append(pool.submit(prepare, nxt))
            _keep_warped(group, done, ref_sky, scratch, match_background)
            del done
    return group


def _strip_group(ids: Sequence[int], mapped: Mapping[int, MappedFrame], sources: Mapping[int, Sources],
                 reference: int, *, interpolation: str, order: int, match_background: bool,
                 threads: int, known: Mapping[int, tuple[float, float] | None],
                 scale_flux: bool = False) -> _AlignedGroup:
    """The group as frames warped strip by strip when read (`ccdwatch.stripwarp`): transforms
    found in order, the reference first; each frame's sky level and typical variance measured
    on its unwarped pixels (in ``threads``) unless ``known``, so nothing is warped before the
    combination."""
    group = _AlignedGroup()
    order_ids = [reference] + [i for i in ids if i != reference]
    transforms = {i: t for i in order_ids if (t := _frame_transform(i, reference, sources, group.failed)) is not None}
    kept = [i for i in order_ids if i in transforms]
    if scale_flux:
        group.scales = _flux_scales(transforms, sources, reference)
    levels = frame_levels([mapped[i] for i in kept], threads=threads, known=[known.get(i) for i in kept])
    shape = mapped[reference].shape
    ref_sky = levels[0][0]
    frames: list[np.ndarray] = []
    variances: list[np.ndarray | float] = []
    typicals: list[float] = []
    for i, (level, typical) in zip(kept, levels, strict=True):
        offset = _sky_offset(level, ref_sky) if match_background else 0.0
        if match_background:
            group.offsets[i] = offset
        frame = mapped[i]
        scale = group.scales[i].value if i in group.scales else 1.0
        if scale == 1.0:
            frames.append(WarpedRows(frame, transforms[i], shape, method=interpolation,  # type: ignore[arg-type]
                                     order=order, offset=offset))
            variances.append(WarpedRows(frame, transforms[i], shape, variance=True)  # type: ignore[arg-type]
                             if frame.uncert is not None else typical)
        else:
            frames.append(ScaledRows(frame, transforms[i], shape, method=interpolation, order=order,  # type: ignore[arg-type]
                                     scale=scale, subtract=_scaled_subtract(level, offset, scale)))
            variances.append(ScaledRows(frame, transforms[i], shape, variance=True, scale=scale)  # type: ignore[arg-type]
                             if frame.uncert is not None else typical * scale * scale)
        typicals.append(typical * scale * scale)
        group.transforms[i] = transforms[i]
    group.frames, group.variances, group.typical = [frames], [variances], [typicals]
    return group


def _flux_scales(transforms: Mapping[int, Transform], sources: Mapping[int, Sources],
                 reference: int) -> dict[int, FluxScale]:
    """Each aligned frame's `FluxScale` against the reference's (1.0 for the reference), logged
    when it could not be measured."""
    scales = {}
    for i, t in transforms.items():
        scales[i] = FluxScale() if i == reference else flux_scale(sources[i], sources[reference], t)
        if scales[i].reason is not None:
            logger.warning("frame %s stacked unscaled (flux scale 1.0): %s", i, scales[i].reason)
    return scales


def _scaled_subtract(level: float, offset: float, scale: float) -> float:
    """What a frame multiplied by ``scale`` then has subtracted to be ``scale`` times its values
    about its sky ``level``, less its sky ``offset``: ``(scale - 1) level + offset`` (with its
    ``match_background`` offset, ``scale * level - reference sky``; about 0 when ``level`` is not finite)."""
    return ((scale - 1.0) * level if math.isfinite(level) else 0.0) + offset


def _sky_offset(level: float, ref_sky: float) -> float:
    """A frame's additive sky offset from the reference's (0 when either level is not finite)."""
    offset = level - ref_sky
    return offset if math.isfinite(offset) else 0.0


def _prepare(i: int, t: Transform, how: _How, output_shape: tuple[int, int] | None) -> _Warped:
    """Frame ``i`` loaded, masked, split into planes, each plane's sky level, its warp and its
    variance (the frame's UNCERT squared warped bilinearly whatever the frame's kernel, so never
    negative; else the plane's robust sky variance)."""
    frame = _masked_frame(how.load, i, how.masks)
    var = how.variance(i) if how.variance is not None else None
    cube = [frame] if how.planes is None else list(how.planes(frame))
    del frame
    shape = output_shape or (int(cube[0].shape[0]), int(cube[0].shape[1]))
    # sky level measured before resampling: interpolation smooths the noise and shifts the
    # median of a star field by ~0.01 sigma, which would bias the offsets
    levels = [_sky_level(plane) if how.match_background else math.nan for plane in cube]
    variances: list[np.ndarray | float] = []
    if var is not None and how.planes is None:
        variances.append(warp(var, t, output_shape=shape, order=1))
    else:
        variances.extend(calib.robust_stats(plane[::2, ::2])[1] ** 2 for plane in cube)
    del var
    typical = [calib.robust_median(v) if isinstance(v, np.ndarray) else v for v in variances]
    warped = []
    while cube:
        warped.append(warp(cube.pop(0), t, output_shape=shape, order=how.order, method=how.interpolation))
    return _Warped(i, t, levels, warped, variances, typical)


def _keep_warped(group: _AlignedGroup, done: _Warped, ref_sky: list[float], scratch: ScratchArrays,
                 match_background: bool) -> None:
    """Add one warped frame to the group: coverage, sky offset removed, kept in ``scratch``."""
    offsets = []
    scale = group.scales[done.index].value if done.index in group.scales else 1.0
    for k, warped in enumerate(done.planes):
        if k == 0:  # a missing pixel is missing in every plane (`ccdwatch.colour.demosaic`)
            if group.coverage is None:
                group.coverage = np.zeros(warped.shape, dtype=np.uint16)
            group.coverage += np.isfinite(warped)
        v = done.variances[k]
        if scale != 1.0:  # about the plane's sky, less its offset; the variance by the scale squared
            offset = _sky_offset(done.levels[k], ref_sky[k]) if match_background else 0.0
            warped *= np.float32(scale)
            warped -= np.float32(_scaled_subtract(done.levels[k], offset, scale))
            offsets.append(offset)
            if isinstance(v, np.ndarray):
                v *= np.float32(scale * scale)
            else:
                v *= scale * scale
        elif match_background:
            offsets.append(_remove_sky_offset(warped, done.levels[k], ref_sky[k]))
        group.frames[k].append(scratch.keep(warped))
        group.variances[k].append(scratch.keep(v) if isinstance(v, np.ndarray) else v)
        group.typical[k].append(done.typical[k] * scale * scale)
    done.planes.clear()
    done.variances.clear()
    if match_background:
        group.offsets[done.index] = offsets[0] if len(offsets) == 1 else tuple(offsets)
    group.transforms[done.index] = done.transform


def _frame_transform(
    i: int, reference: int, sources: Mapping[int, Sources], failed: dict[int, str]
) -> Transform | None:
    """Frame ``i`` -> reference transform (identity for the reference); None when the frame cannot
    be aligned, the reason then recorded in ``failed`` and logged."""
    ref_sources = sources[reference]
    if i == reference:
        return Transform.identity(n_matches=len(ref_sources))
    if i not in sources:
        failed[i] = "no source list"
        logger.warning("frame %s not stacked: no source list", i)
        return None
    try:
        return find_transform(sources[i], ref_sources)
    except AlignmentError as exc:
        failed[i] = str(exc)
        logger.warning("frame %s not stacked: %s", i, exc)
        return None


def _masked_frame(
    load: Callable[[int], np.ndarray], i: int, masks: Mapping[int, np.ndarray | None] | None
) -> np.ndarray:
    """Frame ``i`` as loaded, with its masked pixels (if any) set to NaN in a new array."""
    frame = np.asarray(load(i))
    mask = masks.get(i) if masks is not None else None
    if mask is not None:
        frame = np.where(np.asarray(mask, dtype=bool), np.float32(np.nan), frame)
    return frame


def _remove_sky_offset(warped: np.ndarray, level: float, ref_sky: float) -> float:
    """Subtract in place the frame's sky ``level`` minus the reference's from ``warped``; returns
    that additive offset (0 when either level is not finite, and nothing is then subtracted)."""
    offset = _sky_offset(level, ref_sky)
    if offset != 0.0:
        warped -= np.float32(offset)
    return offset
