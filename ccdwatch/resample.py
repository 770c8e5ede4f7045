"""Resampling of a frame onto a reference pixel grid (`warp`), with its missing pixels.

OpenCV's ``warpAffine`` (bilinear, bicubic or Lanczos; the warp Siril uses too), several times
faster than ``scipy.ndimage.affine_transform``, which remains for spline orders and frames
beyond OpenCV's size limit. Missing (NaN) input pixels blank the output pixels whose bilinear
footprint covers them, whatever the kernel. `ccdwatch.align` finds the transform and
re-exports `warp`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

if TYPE_CHECKING:
    from ccdwatch.align import Transform

__all__ = ["METHODS", "Holes", "warp", "warp_with_holes"]


def _touched_by_missing(
    missing: np.ndarray,
    m: np.ndarray,
    a: np.ndarray,
    offset: np.ndarray,
    output_shape: tuple[int, int],
    where: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Output pixels (rows, cols) whose bilinear interpolation gives a missing input pixel a
    weight above 1e-6: the same pixels as bilinearly warping the missing mask and thresholding
    it at 1e-6, found from the (few) missing pixels instead of resampling a whole mask frame.

    ``m`` maps frame (x, y) to reference (x, y); ``a`` and ``offset`` map output (row, col) to
    input (row, col) as for `scipy.ndimage.affine_transform`; ``where``: the missing pixels' (rows,
    cols), if already found.
    """
    ny_in, nx_in = missing.shape
    ny_out, nx_out = output_shape
    rows, cols = where if where is not None else np.nonzero(missing)
    # an output pixel uses input pixels less than 1 px away along each axis, so it lies less than
    # |m[1, 0]| + |m[1, 1]| rows (and |m[0, 0]| + |m[0, 1]| columns) from the forward-mapped
    # missing pixel (1e-6 more for rounding): after a similarity of scale ~1, 4 rows and 4 columns
    xo = m[0, 0] * cols + m[0, 1] * rows + m[0, 2]
    yo = m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
    steps_r, steps_c = (np.arange(math.floor(-reach) + 1, math.ceil(reach) + 1)
                        for reach in (abs(m[1, 0]) + abs(m[1, 1]) + 1e-6, abs(m[0, 0]) + abs(m[0, 1]) + 1e-6))
    cand_r = (np.floor(yo)[:, None, None] + steps_r[None, :, None]).astype(np.int64)
    cand_c = (np.floor(xo)[:, None, None] + steps_c[None, None, :]).astype(np.int64)
    cand_r, cand_c = np.broadcast_arrays(cand_r, cand_c)
    inside = (cand_r >= 0) & (cand_r < ny_out) & (cand_c >= 0) & (cand_c < nx_out)
    flat = np.sort(cand_r[inside] * nx_out + cand_c[inside])
    flat = flat[np.concatenate(([True], flat[1:] != flat[:-1]))] if flat.size else flat
    r_out, c_out = np.divmod(flat, nx_out)
    yi = a[0, 0] * r_out + a[0, 1] * c_out + offset[0]
    xi = a[1, 0] * r_out + a[1, 1] * c_out + offset[1]
    # ndimage ("constant" mode) gives cval outside [0, n - 1]: the output there is NaN anyway
    domain = (yi >= 0) & (yi <= ny_in - 1) & (xi >= 0) & (xi <= nx_in - 1)
    r_out, c_out, yi, xi = r_out[domain], c_out[domain], yi[domain], xi[domain]
    y0 = np.floor(yi).astype(np.int64)
    x0 = np.floor(xi).astype(np.int64)
    fy = yi - y0
    fx = xi - x0
    weight = np.zeros(yi.shape)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            ty = np.minimum(y0 + dy, ny_in - 1)
            tx = np.minimum(x0 + dx, nx_in - 1)
            weight += np.where(missing[ty, tx], wy * wx, 0.0)
    hit = weight > 1e-6
    return r_out[hit], c_out[hit]


def _few(missing: np.ndarray) -> int:
    """Up to this many missing pixels are handled one by one (hot pixels), more with whole-frame filters."""
    return max(4096, missing.size // 64)


def _footprint_bounds(inv: np.ndarray, ny_out: int, shape_in: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each output row, the first and last output column whose sample position (under the
    output -> input map ``inv``) lies inside ``[0, n - 1]`` on both input axes, boundaries
    included (ndimage's "constant" mode). Empty rows give ``lo > hi``."""
    y = np.arange(ny_out, dtype=np.float64)
    lo = np.full(ny_out, -np.inf)
    hi = np.full(ny_out, np.inf)
    eps = 1e-9  # a sample exactly on the last pixel is inside
    for (c_x, c_y, c_0), n in (((inv[0, 0], inv[0, 1], inv[0, 2]), shape_in[1]),
                               ((inv[1, 0], inv[1, 1], inv[1, 2]), shape_in[0])):
        base = c_y * y + c_0  # sample coordinate at column 0; grows by c_x per column
        if abs(c_x) < 1e-12:
            out = (base < -eps) | (base > n - 1 + eps)
            lo[out], hi[out] = np.inf, -np.inf
            continue
        a, b = (-eps - base) / c_x, (n - 1 + eps - base) / c_x
        lo = np.maximum(lo, np.minimum(a, b))
        hi = np.minimum(hi, np.maximum(a, b))
    return np.ceil(lo), np.floor(hi)


def _ndimage_matrix(inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``inv`` (reference (x, y) -> frame (x, y), 3x3) as ndimage's matrix and offset, which work
    in (row, col) = (y, x) order: input index = A @ output index + offset."""
    return np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]]), np.array([inv[1, 2], inv[0, 2]])


#: OpenCV interpolation per method (kernel support: 2x2, 4x4, 8x8 pixels).
_CV_METHODS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
#: `warp`'s methods (``stack.interpolation``).
METHODS = tuple(_CV_METHODS)


def _filled(src: np.ndarray, missing: np.ndarray, n_missing: int, *, local: bool,
            where: tuple[np.ndarray, np.ndarray] | None = None, in_place: bool = False) -> np.ndarray:
    """``src`` with its missing pixels filled: by zero, which reaches only output pixels that are
    blanked anyway (bilinear: OpenCV's weights are multiples of 1/1024, so a pixel they give any
    weight to is one `_touched_by_missing` finds), or (``local``: kernels wider than the blanked
    footprint) by the mean of the valid pixels in the 5x5 box around each (the frame's subsampled
    median where the box has none). ``in_place``: ``src`` is the caller's to overwrite, and a few
    missing pixels (``where``) are filled in it instead of in a copy of the whole frame."""
    few = n_missing <= missing.size // 64
    if in_place and where is not None and (few or not local):
        src[where] = np.float32(0.0)
        out = src
    else:
        out = np.where(missing, np.float32(0.0), src)
    if not local:
        return out
    if not few:  # many: two box filters over the frame
        total = cv2.boxFilter(out, -1, (5, 5), normalize=False, borderType=cv2.BORDER_CONSTANT)
        count = cv2.boxFilter((~missing).astype(np.float32), -1, (5, 5), normalize=False,
                              borderType=cv2.BORDER_CONSTANT)
        local_mean = np.where(count > 0, total / np.maximum(count, 1.0),
                              _median_fill(src, missing) if (count == 0).any() else 0)
        return np.where(missing, local_mean, out).astype(np.float32)
    ny, nx = src.shape
    rows, cols = where if where is not None else np.nonzero(missing)
    d = np.arange(-2, 3)
    yy = np.clip(rows[:, None, None] + d[None, :, None], 0, ny - 1)
    xx = np.clip(cols[:, None, None] + d[None, None, :], 0, nx - 1)
    weight = ~missing[yy, xx].reshape(len(rows), -1)
    total = (out[yy, xx].reshape(len(rows), -1) * weight).sum(axis=1)
    count = weight.sum(axis=1)
    none = count == 0
    out[rows, cols] = np.where(none, _median_fill(src, missing) if none.any() else 0, total / np.maximum(count, 1.0))
    return out


def _median_fill(src: np.ndarray, missing: np.ndarray) -> np.float32:
    """The frame's median (of every 4th pixel each way, the valid ones; 0 if none is valid)."""
    sample = src[::4, ::4][~missing[::4, ::4]]
    if sample.size == 0:
        sample = src[~missing]
    return np.float32(np.median(sample)) if sample.size else np.float32(0.0)


class _Geometry(NamedTuple):
    """What a warp derives from its transform for an input and output shape (`_geometry`)."""

    inv: np.ndarray  # reference (x, y) -> frame (x, y)
    a: np.ndarray  # and as ndimage's matrix and offset (`_ndimage_matrix`)
    offset: np.ndarray
    area: float  # the transform's area scale
    bounds: tuple[np.ndarray, np.ndarray]  # each output row's columns that sample the input (`_footprint_bounds`)


#: `_geometry` keeps those of outputs up to this many rows (strips; 16 bytes a row).
_KEPT_ROWS = 1024


def _geometry(matrix: bytes, shape_in: tuple[int, int], shape_out: tuple[int, int]) -> _Geometry:
    """`_Geometry` of the 3x3 float64 ``matrix`` (its bytes); for a strip, kept for the next warp of
    the same shapes by the same transform: a stack warps each strip of a frame's variance after
    the strip of its image, each the same way (`_kept_geometry`)."""
    return (_kept_geometry if shape_out[0] <= _KEPT_ROWS else _new_geometry)(matrix, shape_in, shape_out)


@functools.lru_cache(maxsize=256)  # all the frames of a stack's strip in between; at most ~4 MB
def _kept_geometry(matrix: bytes, shape_in: tuple[int, int], shape_out: tuple[int, int]) -> _Geometry:
    geometry = _new_geometry(matrix, shape_in, shape_out)
    for array in (geometry.inv, geometry.a, geometry.offset, *geometry.bounds):
        array.flags.writeable = False  # shared by every warp that finds it here
    return geometry


def _new_geometry(matrix: bytes, shape_in: tuple[int, int], shape_out: tuple[int, int]) -> _Geometry:
    m = np.frombuffer(matrix, dtype=np.float64).reshape(3, 3)
    inv = np.linalg.inv(m)
    a, offset = _ndimage_matrix(inv)
    bounds = _footprint_bounds(inv, shape_out[0], shape_in)
    return _Geometry(inv, a, offset, abs(float(np.linalg.det(m[:2, :2]))), bounds)


def _warp_bilinear(src: np.ndarray, inv: np.ndarray, output_shape: tuple[int, int],
                   method: str = "bilinear", bounds: tuple[np.ndarray, np.ndarray] | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Bilinear resampling with OpenCV's ``warpAffine`` (the warp Siril uses too), several times
    faster than ``scipy.ndimage.affine_transform``. Sample positions are quantised to 1/32 px
    (OpenCV's INTER_BITS), i.e. at most 1/64 px off, far below the alignment error. As with
    ndimage's "constant" mode, output pixels that sample outside ``[0, n - 1]`` are NaN (OpenCV
    would also blank samples on the last row or column, so the footprint is computed here). The
    input must be NaN-free (`warp` fills missing pixels). ``bounds``: `_footprint_bounds`, if known;
    ``out``: the array to write (float32, C-contiguous, ``output_shape``), if the caller has one."""
    ny, nx = output_shape
    if max(ny, nx, *src.shape) >= 32767:  # OpenCV's remap limit (SHRT_MAX)
        from scipy import ndimage

        a, offset = _ndimage_matrix(inv)
        warped = ndimage.affine_transform(src, a, offset=offset, output_shape=output_shape,
                                          output=np.float32 if out is None else out,
                                          order=1 if method == "bilinear" else 3, mode="constant", cval=np.nan,
                                          prefilter=method != "bilinear")
        return warped if out is None else out
    warped = cv2.warpAffine(
        np.ascontiguousarray(src, dtype=np.float32),
        np.ascontiguousarray(inv[:2], dtype=np.float64),
        (nx, ny),
        dst=out,
        flags=_CV_METHODS[method] | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    if out is None:
        out = warped
    elif warped is not out:  # OpenCV wrote elsewhere (it does not for a fitting array)
        out[...] = warped
    _blank_outside(out, *(bounds if bounds is not None else _footprint_bounds(inv, ny, src.shape)))
    return out


def _blank_outside(out: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Set to NaN the columns of each row ``r`` of ``out`` below ``lo[r]`` or above ``hi[r]``
    (integral or infinite bounds; ``lo > hi``: the whole row), looking only at the two bands of
    columns where some row is blanked (a few pixels wide for a dithered frame), not every pixel."""
    nx = out.shape[1]
    empty = lo > hi
    out[empty] = np.nan
    if empty.all():
        return
    first = np.clip(lo, 0, nx)[~empty].astype(np.int64)  # each row's first kept column
    stop = np.clip(hi + 1, 0, nx)[~empty].astype(np.int64)  # and one past its last
    rows = out[~empty] if empty.any() else out
    left, right = int(first.max()), int(stop.min())
    if left > 0:
        band = rows[:, :left]
        band[np.arange(left)[None, :] < first[:, None]] = np.nan
    if right < nx:
        band = rows[:, right:]
        band[np.arange(right, nx)[None, :] >= stop[:, None]] = np.nan
    if empty.any():
        out[~empty] = rows


def _missing_blanked(missing: np.ndarray, n_missing: int, m: np.ndarray, a: np.ndarray, offset: np.ndarray,
                     shape: tuple[int, int], *, direct: bool,
                     where: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
    """The output pixels whose interpolation touches a missing input pixel: their (rows, cols), or
    a boolean map of the output (many missing pixels)."""
    if direct and n_missing <= _few(missing):
        # few missing pixels (hot pixels): find the output pixels they reach directly
        return _touched_by_missing(missing, m, a, offset, shape, where)
    from scipy import ndimage

    touched = ndimage.affine_transform(missing.astype(np.float32), a, offset=offset, output_shape=shape,
                                       output=np.float32, order=1, mode="constant", cval=0.0, prefilter=False)
    return (touched > 1e-6,)


@dataclass(frozen=True)
class Holes:
    """A frame's missing pixels and the output pixels they blank, as `warp_with_holes` found them for
    one transform and output shape: another frame with the same missing pixels (the variance of
    the same rows) warped the same way reuses them instead of finding them again."""

    missing: np.ndarray  # bool, the input's shape
    n_missing: int
    where: tuple[np.ndarray, np.ndarray] | None  # (rows, cols) of the missing pixels when few
    blanked: tuple[np.ndarray, ...]  # the output pixels to blank: (rows, cols) or (bool map,)
    key: tuple[object, ...]  # the transform, output shape and method they were found for

    def fits(self, src: np.ndarray, key: tuple[object, ...], missing: np.ndarray | None = None) -> bool:
        """Are these ``src``'s holes (the same missing pixels, the same warp)? ``missing``: where
        ``src`` is missing, when known (`warp_with_holes`)."""
        if key != self.key or src.shape != self.missing.shape:
            return False
        if missing is not None:
            return missing is self.missing or np.array_equal(missing, self.missing)
        if self.where is not None and np.isfinite(src[self.where]).any():
            return False
        missing = ~np.isfinite(src)
        return int(np.count_nonzero(missing)) == self.n_missing and (
            self.where is not None or np.array_equal(missing, self.missing))


def _found_holes(missing: np.ndarray, key: tuple[object, ...]) -> Holes | None:
    """The `Holes` of a frame missing the pixels ``missing`` (None when none is), their output
    pixels not yet found."""
    n_missing = int(np.count_nonzero(missing))
    if not n_missing:
        return None
    # few missing pixels (hot pixels): found once, for the fill and the blanking
    where = np.divmod(np.flatnonzero(missing), missing.shape[1]) if n_missing <= _few(missing) else None
    return Holes(missing, n_missing, where, (), key)


def warp(
    data: np.ndarray, transform: Transform, *, output_shape: tuple[int, int], order: int = 1,
    method: str = "bilinear",
) -> np.ndarray:
    """Resample a frame onto the reference pixel grid.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Frame (image units). NaN marks missing pixels. Not modified.
    transform : Transform
        Frame -> reference coordinates.
    output_shape : (ny, nx)
        Shape of the reference image.
    order : int
        Spline order of the interpolation (1 = bilinear, 3 = cubic), with ``method="bilinear"``.
    method : {"bilinear", "bicubic", "lanczos"}
        ``"bicubic"`` (OpenCV's 4x4 cubic convolution, a = -0.75) and ``"lanczos"`` (8x8) keep
        stars sharp where bilinear interpolation broadens them (and smooths the noise of the
        stack); see benchmarks/warp.py. Whatever the kernel, a missing pixel blanks only the
        output pixels whose bilinear footprint covers it; the rest of the kernel sees the mean
        of its valid 5x5 neighbours in its place.

    Returns
    -------
    ndarray of float32, shape ``output_shape``
        The frame on the reference grid. NaN outside the frame's footprint and on every output
        pixel whose interpolation touches a missing input pixel. Values are divided by the
        transform's area scale so that point-source fluxes are conserved.

    Notes
    -----
    Flux of an isolated star (aperture sum) is conserved to ~1e-8 for any rotation and shift,
    with either order. With a scale change, bilinear resampling errs by about
    ``15 * (scale - 1)**2`` (0.2 % at 1 %, 1.2 % at 3 %; the kernel's column sums beat with the
    new pixel pitch), cubic (``order=3``) by < 1e-5 even at 3 %. Frames of one camera differ in
    scale by ~1e-4, where either is exact for all purposes.
    """
    return warp_with_holes(data, transform, output_shape=output_shape, order=order, method=method)[0]


def warp_with_holes(data: np.ndarray, transform: Transform, *, output_shape: tuple[int, int], order: int = 1,
                    method: str = "bilinear", holes: Holes | None = None, missing: np.ndarray | None = None,
                    overwrite: bool = False, out: np.ndarray | None = None) -> tuple[np.ndarray, Holes | None]:
    """`warp`, and the frame's `Holes` (None when no pixel is missing); ``holes``: those of a frame
    warped the same way before, used when they are this frame's (`Holes.fits`), else found again.
    The warp is the same either way. ``missing``: where ``data`` is missing, when the caller knows
    (bool, ``data``'s shape; every non-finite pixel and any other to ignore): the warp is that of
    ``data`` with NaN there, without looking for them. ``overwrite``: ``data`` (float32) is the
    caller's scratch, its missing pixels may be filled in place. ``out``: the array to warp into
    (float32, C-contiguous, ``output_shape``; returned), if the caller has one."""
    if np.ndim(data) != 2:
        raise ValueError(f"expected a 2-D image, got shape {np.shape(data)}")
    ny, nx = output_shape
    shape = (ny, nx)
    m = np.ascontiguousarray(transform.array, dtype=np.float64)
    src = np.asarray(data, dtype=np.float32)
    inv, a, offset, area, bounds = _geometry(m.tobytes(), (int(src.shape[0]), int(src.shape[1])), shape)
    if method not in _CV_METHODS:
        raise ValueError(f"unknown warp method {method!r}; use one of {', '.join(_CV_METHODS)}")
    direct = order == 1 or method != "bilinear"
    key = (m.tobytes(), shape, direct)
    if holes is None or not holes.fits(src, key, missing):
        holes = _found_holes(~np.isfinite(src) if missing is None else missing, key)
    if holes is not None:
        src = _filled(src, holes.missing, holes.n_missing, local=method != "bilinear", where=holes.where,
                      in_place=overwrite and src is data)
    if method != "bilinear":
        # only the output pixels whose bilinear footprint covers a missing pixel are blanked (as
        # for bilinear: holes no larger than the kernel's core); the rest of the kernel's support
        # sees the missing pixel's local estimate with weights < 0.1
        out = _warp_bilinear(src, inv, shape, method, bounds, out)
    elif order == 1:
        out = _warp_bilinear(src, inv, shape, bounds=bounds, out=out)
    else:
        from scipy import ndimage  # splines: a costly import, only for order > 1

        warped = ndimage.affine_transform(
            src,
            a,
            offset=offset,
            output_shape=shape,
            output=np.float32 if out is None else out,
            order=order,
            mode="constant",
            cval=np.nan,
            prefilter=True,
        )
        out = warped if out is None else out
    if holes is not None:
        if not holes.blanked:
            holes = replace(holes, blanked=_missing_blanked(holes.missing, holes.n_missing, m, a, offset, shape,
                                                            direct=direct, where=holes.where))
        out[holes.blanked] = np.nan
    if abs(area - 1.0) > 1e-9:
        out /= np.float32(area)
    return out, holes
