"""A frame's sky background from a regular subsample of its pixels: what detection needs.

Pure numerics: arrays in, values out; only the image handed to `subtract_background` is changed
(in place, as the caller asks).

The background is estimated in meshes of ``MESH`` x ``MESH`` pixels, as SExtractor and `sep` do,
but from every ``STEP``-th pixel of every ``STEP``-th row of each mesh (441 samples of a 64 px
mesh instead of 4,096): per mesh SExtractor's clipped mode estimate (see `_mesh_levels`), meshes
with fewer than half their samples valid filled with the median of the others, a 3 x 3 median
filter over the meshes (one bright star or a satellite trail does not pull its mesh), then a
bilinear map between mesh centres. At 2048 x 2048 that is about half the time of
``sep.Background`` on every pixel and its spline evaluation (benchmarks/README.md); with every
4th pixel (256 samples) the level's noise cost a faint star or two on small frames. The sky
level and noise that the catalogue records are measured separately (`ccdwatch.qa.frame`), so
this map only sets the detection threshold and the local zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Background", "background_levels", "subtract_background", "subtract_map"]

#: Mesh size (px), as sep's default.
MESH = 64
#: Sampling step inside a mesh (px): 21 x 21 samples of a 64 px mesh.
STEP = 3
#: Values this many sigma from a mesh's median are left out of its level and rms.
CLIP = 3.0
_P16, _P84 = 0.15866, 0.84134


@dataclass(frozen=True)
class Background:
    """Global level and rms of the background (image units), as ``sep.Background`` names them."""

    globalback: float
    globalrms: float


def _sample_rows(n: int, mesh: int, step: int) -> tuple[np.ndarray, int]:
    """Indices of the sampled rows (or columns) of ``n`` // ``mesh`` whole meshes, and the
    number of samples per mesh along that axis."""
    meshes = max(1, n // mesh)
    per = max(1, mesh // step)
    idx = (np.arange(meshes)[:, None] * mesh + step // 2 + np.arange(per)[None, :] * step).ravel()
    return np.minimum(idx, n - 1), per


def _pick(srt: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(srt, index[..., None], axis=-1)[..., 0]


def _mesh_levels(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per mesh, from (my, mx, k) samples (NaN = invalid): level, rms and whether the mesh had at
    least half its samples valid.

    As SExtractor: the samples are clipped at ``CLIP`` sigma about the median until that settles
    (three passes; the first sigma from the 16th-84th percentile range), then the level is the
    mode estimate ``2.5 median - 1.5 mean`` of what is kept, or the median where the two differ by
    more than 0.3 sigma (a crowded mesh); the rms is the standard deviation of what is kept.
    """
    srt = np.sort(samples, axis=-1)  # NaN last
    k = srt.shape[-1]
    n = np.count_nonzero(~np.isnan(srt), axis=-1)
    last = np.maximum(n - 1, 0)
    med = 0.5 * (_pick(srt, last // 2) + _pick(srt, (last + 1) // 2))
    sigma = 0.5 * (_pick(srt, (_P84 * last).astype(np.intp)) - _pick(srt, (_P16 * last).astype(np.intp)))
    # what is kept is a run [lo, hi) of the sorted samples: its sum and sum of squares from running
    # sums (about the first median, for precision), not from a masked copy per pass
    base = np.nan_to_num(med)
    dev = srt - base[..., None].astype(np.float64)
    sums = np.zeros(srt.shape[:-1] + (k + 1,))
    squares = np.zeros_like(sums)
    np.cumsum(dev, axis=-1, out=sums[..., 1:])
    np.cumsum(dev * dev, axis=-1, out=squares[..., 1:])
    mean = med
    for _ in range(3):
        with np.errstate(invalid="ignore"):
            lo = np.count_nonzero(srt < (med - CLIP * sigma)[..., None], axis=-1)
            hi = np.count_nonzero(srt <= (med + CLIP * sigma)[..., None], axis=-1)
        hi = np.minimum(np.maximum(hi, lo + 1), k)
        med = 0.5 * (_pick(srt, np.minimum(lo + (hi - lo - 1) // 2, k - 1))
                     + _pick(srt, np.minimum(lo + (hi - lo) // 2, k - 1)))
        m = np.maximum(hi - lo, 1)
        total = _pick(sums, hi) - _pick(sums, lo)
        mean = base + total / m
        spread = np.maximum(_pick(squares, hi) - _pick(squares, lo) - total * total / m, 0.0)
        sigma = np.sqrt(spread / np.maximum(m - 1, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        skewed = np.abs(mean - med) > 0.3 * sigma
    level = np.where(skewed, med, 2.5 * med - 1.5 * mean)
    return level, sigma, n >= max(1, k // 2)


def _median3x3(a: np.ndarray) -> np.ndarray:
    padded = np.pad(a, 1, mode="edge")
    ny, nx = a.shape
    return np.median([padded[dy:dy + ny, dx:dx + nx] for dy in range(3) for dx in range(3)], axis=0)


def _subtract_map(img: np.ndarray, level: np.ndarray, mesh_y: int, mesh_x: int, out: np.ndarray) -> None:
    """``out = img -`` the bilinear map between mesh centres (at ``i * mesh + (mesh - 1) / 2``),
    constant beyond the outer centres, a band of meshes at a time (no frame-sized map is held).

    Each band's map is one `cv2.resize` of the band's mesh rows and one more on each side (the
    same half-pixel convention, and past the outer centres the same clamping: a band's rows come
    out as the whole map's would), of which the band's own rows are kept: a third of the time
    the rows' interpolation in numpy, then OpenCV's along each row, took (8.5 -> 4.0 ms at 2k)."""
    ny, nx = img.shape
    my, mx = level.shape
    width = mx * mesh_x
    per_band = max(2, (1 << 20) // max(1, mesh_y * width))  # ~4 MB of map a band: it stays cached
    for k in range(0, my, per_band):
        first, last = max(k - 1, 0), min(k + per_band, my - 1)  # the band's meshes and their neighbours
        block = cv2.resize(level[first:last + 1], (width, (last - first + 1) * mesh_y),
                           interpolation=cv2.INTER_LINEAR)
        y0 = k * mesh_y
        y1 = ny if k + per_band >= my else y0 + per_band * mesh_y  # the last band: the rows past its meshes too
        back = block[y0 - first * mesh_y:y1 - first * mesh_y]
        n = back.shape[0]
        np.subtract(img[y0:y0 + n, :width], back, out=out[y0:y0 + n, :width])
        if y0 + n < y1:  # the rows past the last whole mesh continue the last row
            np.subtract(img[y0 + n:y1, :width], back[-1:], out=out[y0 + n:y1, :width])
        if nx > width:  # the strip past the last whole mesh continues the edge
            edge = np.concatenate([back[:, -1], np.repeat(back[-1:, -1], y1 - y0 - n)])[:, None]
            np.subtract(img[y0:y1, width:], edge, out=out[y0:y1, width:])


def background_levels(
    img: np.ndarray, ignore: np.ndarray, *, mesh: int = MESH, step: int = STEP
) -> tuple[np.ndarray, Background]:
    """The float32 mesh levels (median-filtered, one per whole ``mesh`` x ``mesh`` mesh) of ``img``
    from every ``step``-th pixel of every ``step``-th row of each mesh, ``ignore`` marking the pixels
    (bad, saturated) that must not set them, and the global level and rms. ``img`` is not changed."""
    ny, nx = img.shape
    mesh_y, mesh_x = min(mesh, ny), min(mesh, nx)
    rows, per_y = _sample_rows(ny, mesh_y, max(1, min(step, mesh_y // 8)))
    cols, per_x = _sample_rows(nx, mesh_x, max(1, min(step, mesh_x // 8)))
    grid = np.ix_(rows, cols)
    samples = img[grid]  # a float32 copy: a ninth of the frame
    samples[ignore[grid]] = np.nan
    my, mx = rows.size // per_y, cols.size // per_x
    samples = samples.reshape(my, per_y, mx, per_x).transpose(0, 2, 1, 3).reshape(my, mx, per_y * per_x)
    level, rms, valid = _mesh_levels(samples)
    if valid.any():
        fill_level, fill_rms = float(np.median(level[valid])), float(np.median(rms[valid]))
    else:  # no mesh is mostly valid: one level from every valid sample
        finite = samples[~np.isnan(samples)]
        fill_level = float(np.median(finite)) if finite.size else 0.0
        fill_rms = float(1.4826 * np.median(np.abs(finite - fill_level))) if finite.size else 0.0
    level = np.where(valid, level, fill_level)
    rms = np.where(valid, rms, fill_rms)
    if my >= 3 or mx >= 3:
        level = _median3x3(level)
    return level.astype(np.float32), Background(globalback=float(np.median(level)), globalrms=float(np.median(rms)))


def subtract_map(img: np.ndarray, level: np.ndarray, mesh: int, *, out: np.ndarray | None = None) -> None:
    """Subtract from the float32 ``img`` in place (or into ``out``, of its shape and type, ``img``
    left as it is: one pass instead of a copy and a subtraction) the bilinear map of the mesh
    ``level``s (meshes of ``mesh`` px, or the frame's size where that is smaller):
    `background_levels` of ``img`` or of ``img`` binned by a factor ``f`` with meshes of
    ``mesh // f`` px (their centres coincide)."""
    ny, nx = img.shape
    _subtract_map(img, level, min(mesh, ny), min(mesh, nx), img if out is None else out)


def subtract_background(img: np.ndarray, ignore: np.ndarray) -> Background:
    """Subtract the background map from the float32 ``img`` in place; ``ignore`` marks the
    pixels (bad, saturated) that must not set it. Returns the global level and rms."""
    level, bkg = background_levels(img, ignore)
    subtract_map(img, level, MESH)
    return bkg
