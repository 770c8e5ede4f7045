"""Combination of a group of calibrated lights into a stack on the pixel grid of a reference frame.

`align_and_stack` aligns each frame onto the reference (`ccdwatch.align`), removes its sky offset
and combines the warped frames with `ccdwatch.calib.combine`, keeping the exposure map and the
number of values that survived the rejection. Pure numerics apart from the scratch ``.npy`` files
it writes into a caller-given work directory when a group's warped frames do not fit a quarter of
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

from ccdwatch import calib
from ccdwatch.align import AlignmentError, Transform, find_transform, warp
from ccdwatch.qa import Sources
from ccdwatch.scratch import ScratchArrays

if TYPE_CHECKING:  # at run time through `__getattr__`
    from ccdwatch.previews import preview_stretch

logger = logging.getLogger(__name__)

__all__ = [
    "AlignmentError",
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
        Frame id -> additive background offset removed before combining (image units; one per
        plane, as a tuple, for frames split into planes).
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


def _sky_level(image: np.ndarray) -> float:
    """Robust sky level of a frame: median of the finite pixels of a 2x2-strided subsample
    (NaN when none is finite)."""
    return calib.robust_median(image[::2, ::2])


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
) -> StackResult:
    """Align frames onto a reference and combine them.

    Frames are loaded one at a time, aligned with `find_transform` (from the precomputed
    source lists), masked pixels set to NaN and warped with `warp`. The warped frames are kept
    in memory when all of them take at most a quarter of ``memory_budget``; otherwise they are
    written as float32 ``.npy`` files into a private temporary directory under ``workdir`` and
    combined through read-only memory maps, then deleted.

    Parameters
    ----------
    ids : sequence of int
        Frames to stack; must contain ``reference``.
    load : callable
        ``load(id)`` returns the calibrated frame as a 2-D array (not modified).
    sources : mapping
        Frame id -> `Sources` from `ccdwatch.qa.measure`; must contain ``reference``.
    reference : int
        Id of the frame whose pixel grid the stack uses.
    masks : mapping, optional
        Frame id -> boolean mask (True = bad pixel, e.g. hot pixels) or None. Masked pixels
        become NaN before warping, so they never reach the stack.
    method : {"sigma_clip", "median", "mean"}
        Combination method for `ccdwatch.calib.combine`.
    sigma : float
        Clipping threshold for ``method="sigma_clip"``.
    memory_budget : int
        Bytes `ccdwatch.calib.combine` may use.
    workdir : path
        Directory for the scratch files (should be on the same disk as the products).
    order : int
        Interpolation order of the warp (1 = bilinear).
    match_background : bool
        Subtract from each frame the difference between its sky level and the reference's
        (additive offset) before combining, so that a changing sky does not bias the clipping.
    threads : int
        Threads for reading and warping the frames (when that many in flight fit the budget) and
        for the combination (`ccdwatch.calib.combine`); the result does not depend on it.
    planes : callable, optional
        ``planes(frame)`` splits a loaded (and masked) frame into planes of its shape, e.g.
        `ccdwatch.colour.demosaic` for a colour mosaic (R, G, B): each plane is warped with the
        frame's transform, has its own sky offset removed and is combined on its own.

    Returns
    -------
    StackResult

    Raises
    ------
    ValueError
        If ``reference`` is not among ``ids`` or has no source list, or nothing can be stacked.
    """
    ids = list(dict.fromkeys(ids))
    if reference not in ids:
        raise ValueError(f"reference {reference} is not among the frames to stack")
    if reference not in sources:
        raise ValueError(f"no source list for the reference frame {reference}")
    # all warped frames in RAM when they take <= 1/4 of the budget, else memory-mapped scratch files
    n_planes = 1 if planes is None else 3
    with ScratchArrays(workdir, count=len(ids) * n_planes, budget=memory_budget // 4, prefix="stack-") as scratch:
        group = _align_group(ids, load, sources, reference, masks=masks, order=order,
                             match_background=match_background, scratch=scratch, planes=planes,
                             threads=threads, memory_budget=memory_budget)
        if not group.frames or not group.frames[0] or group.coverage is None:  # pragma: no cover
            raise ValueError(f"nothing to stack: {group.failed}")  # the reference always stacks
        logger.info("stacking %d of %d frames onto %s (%s)", len(group.frames[0]), len(ids), reference, method)
        images, counts = [], []
        for frames in group.frames:
            image, used = calib.combine(frames, method=method, sigma=sigma, memory_budget=memory_budget,
                                        return_count=True, threads=threads)
            # own copies, independent of the memory maps that are about to be deleted
            images.append(np.array(image, dtype=np.float32, copy=True))
            counts.append(np.array(used, dtype=np.uint16, copy=True))
            frames.clear()
    return StackResult(
        image=images[0] if planes is None else np.stack(images),
        count=group.coverage,
        used=counts[0] if planes is None else np.stack(counts),
        transforms=group.transforms,
        failed=group.failed,
        reference=reference,
        offsets=group.offsets,
    )


@dataclass
class _AlignedGroup:
    """The frames of a group warped onto the reference grid, and what aligning them recorded."""

    #: per plane, the warped frames in RAM or memory-mapped (`ScratchArrays`)
    frames: list[list[np.ndarray]] = field(default_factory=list)
    transforms: dict[int, Transform] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    offsets: dict[int, float | tuple[float, ...]] = field(default_factory=dict)
    coverage: np.ndarray | None = None  # uint16: frames covering each pixel


@dataclass
class _Warped:
    """One frame ready to join the stack: its transform, planes' sky levels and warped planes."""

    index: int
    transform: Transform
    levels: list[float]
    planes: list[np.ndarray]


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
    threads: int = 1,
    memory_budget: int = 1 << 30,
) -> _AlignedGroup:
    """Load, align, mask (and split into ``planes``) and warp the frames, the reference first (its
    grid and sky levels are those of the stack), and keep the warped frames in ``scratch``.

    The transforms are found first, in order; then with ``threads`` > 1, and when that many frames
    in flight fit a quarter of ``memory_budget`` (~16 bytes a pixel each), the next frames are
    read and warped by worker threads (reading, OpenCV's warp and numpy release the GIL) while
    this one keeps the last: the same frames, in the same order, as one at a time.
    """
    group = _AlignedGroup()
    order_ids = [reference] + [i for i in ids if i != reference]
    transforms = {i: t for i in order_ids if (t := _frame_transform(i, reference, sources, group.failed)) is not None}
    first = _prepare(reference, transforms[reference], load, masks, planes, order, match_background, None)
    output_shape = (int(first.planes[0].shape[0]), int(first.planes[0].shape[1]))
    group.frames = [[] for _ in first.planes]
    ref_sky = first.levels
    _keep_warped(group, first, ref_sky, scratch, match_background)
    del first
    rest = [i for i in order_ids[1:] if i in transforms]
    per_frame = 16 * output_shape[0] * output_shape[1] * len(group.frames)
    workers = max(1, min(int(threads), len(rest)))
    if workers > 1 and (workers + 1) * per_frame > memory_budget // 4:
        workers = 1

    def prepare(i: int) -> _Warped:
        return _prepare(i, transforms[i], load, masks, planes, order, match_background, output_shape)

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


def _prepare(
    i: int, t: Transform, load: Callable[[int], np.ndarray], masks: Mapping[int, np.ndarray | None] | None,
    planes: Callable[[np.ndarray], np.ndarray] | None, order: int, match_background: bool,
    output_shape: tuple[int, int] | None,
) -> _Warped:
    """Frame ``i`` loaded, masked, split into planes, each plane's sky level and its warp."""
    frame = _masked_frame(load, i, masks)
    cube = [frame] if planes is None else list(planes(frame))
    del frame
    shape = output_shape or (int(cube[0].shape[0]), int(cube[0].shape[1]))
    # sky level measured before resampling: interpolation smooths the noise and shifts the
    # median of a star field by ~0.01 sigma, which would bias the offsets
    levels = [_sky_level(plane) if match_background else math.nan for plane in cube]
    warped = []
    while cube:
        warped.append(warp(cube.pop(0), t, output_shape=shape, order=order))
    return _Warped(i, t, levels, warped)


def _keep_warped(group: _AlignedGroup, done: _Warped, ref_sky: list[float], scratch: ScratchArrays,
                 match_background: bool) -> None:
    """Add one warped frame to the group: coverage, sky offset removed, kept in ``scratch``."""
    offsets = []
    for k, warped in enumerate(done.planes):
        if k == 0:  # a missing pixel is missing in every plane (`ccdwatch.colour.demosaic`)
            if group.coverage is None:
                group.coverage = np.zeros(warped.shape, dtype=np.uint16)
            group.coverage += np.isfinite(warped)
        if match_background:
            offsets.append(_remove_sky_offset(warped, done.levels[k], ref_sky[k]))
        group.frames[k].append(scratch.keep(warped))
    done.planes.clear()
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
    offset = level - ref_sky
    if math.isfinite(offset) and offset != 0.0:
        warped -= np.float32(offset)
    return offset if math.isfinite(offset) else 0.0
