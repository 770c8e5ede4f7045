"""Detection on a 2 x 2-binned frame, mapped back to the full-resolution pixels: what a large frame's
quality measurement needs of `sep.extract` and its background.

Pure numerics: arrays in, new values out.

A large frame's sources are found on the mean of each 2 x 2 block (a quarter of the pixels for the
background and for ``sep.extract``); everything the catalogue records (centroids, FWHM, fluxes, the
sky) is still measured on the full-resolution frame (`ccdwatch.qa.frame`). What the detection hands
on is put back into full-resolution pixels here: within each binned footprint, sep's own
full-resolution isophote (the 3 x 3-smoothed pixels above the threshold) gives the barycentres, the
second moments and, grown on the sky's subgrid, the sources the sky leaves out; the peaks are the
brightest full-resolution pixels near the binned ones (for the hot-pixel test and the peak S/N);
the objects owning a saturated pixel come from the binned map.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["bin2", "block_any", "grown_on_grid", "owners_of", "to_full_resolution"]


def bin2(img: np.ndarray) -> np.ndarray:
    """Mean of each 2 x 2 block of the float32 ``img`` (a last odd row or column left out)."""
    ny, nx = img.shape[0] // 2, img.shape[1] // 2
    return cv2.resize(img[: 2 * ny, : 2 * nx], (nx, ny), interpolation=cv2.INTER_AREA)


def block_any(mask: np.ndarray) -> np.ndarray:
    """True for the 2 x 2 blocks (as `bin2`) holding at least one True pixel of the bool ``mask``."""
    ny, nx = mask.shape[0] // 2, mask.shape[1] // 2
    rows = np.ascontiguousarray(mask[0 : 2 * ny : 2, : 2 * nx] | mask[1 : 2 * ny : 2, : 2 * nx])
    return rows.view(np.uint16) != 0  # each pair of bytes (columns) at once


def _full_resolution_peaks(sub: np.ndarray, xb: np.ndarray, yb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column and row of the brightest pixel of ``sub`` in the 4 x 4 pixels around each binned pixel
    ``(xb, yb)`` (its block and one pixel on every side: a star centred on the block's edge peaks
    next to it); the first such pixel on a tie."""
    ny, nx = sub.shape
    offsets = np.arange(-1, 3)
    ys = np.clip(2 * yb[:, None, None] + offsets[None, :, None], 0, ny - 1)
    xs = np.clip(2 * xb[:, None, None] + offsets[None, None, :], 0, nx - 1)
    ys, xs = np.broadcast_arrays(ys, xs)
    values = sub[ys, xs].reshape(xb.size, 16)
    best = np.argmax(values, axis=1)
    return xs.reshape(xb.size, 16)[np.arange(xb.size), best], ys.reshape(xb.size, 16)[np.arange(xb.size), best]


#: sep's default detection kernel (3 x 3, FWHM ~2 px), normalised to a sum of 1.
KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


#: A pixel whose 8 neighbours hold on average less than this fraction of it is a spike (a hot pixel, a
#: one-pixel cosmic-ray hit; a star of FWHM 1.3 px has 0.15): it and its neighbours stay out of a
#: footprint's second moments.
SPIKE_CONTRAST = 0.1


def _smoothed(sub: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sub`` convolved with `KERNEL` at the pixels ``(ys, xs)`` (pixels beyond the frame count 0),
    and which of those pixels are spikes (`SPIKE_CONTRAST`)."""
    ny, nx = sub.shape
    smooth = np.zeros(ys.size)
    around = np.zeros(ys.size)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            y, x = ys + dy, xs + dx
            inside = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
            v = sub[y[inside], x[inside]]
            smooth[inside] += KERNEL[dy + 1, dx + 1] * v
            if dx or dy:
                around[inside] += v
    value = sub[ys, xs]
    return smooth, (value > 0) & (around < 8.0 * SPIKE_CONTRAST * value)


def _moments(label: np.ndarray, xs: np.ndarray, ys: np.ndarray, w: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Per label (of ``n``): the ``w``-weighted barycentre and the semi-axes ``a, b`` of the second
    moments about it (NaN for a label with no weight)."""
    total = np.bincount(label, w, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.bincount(label, w * xs, n) / total
        my = np.bincount(label, w * ys, n) / total
        dx, dy = xs - mx[label], ys - my[label]
        x2 = np.bincount(label, w * dx * dx, n) / total
        y2 = np.bincount(label, w * dy * dy, n) / total
        xy = np.bincount(label, w * dx * dy, n) / total
    # as sep, a star within one pixel gets a pixel's own variance (1/12 px^2) so the axes stay finite
    singular = (x2 * y2 - xy * xy < 1.0 / 144.0) & np.isfinite(x2)
    x2 = np.where(singular, x2 + 1.0 / 12.0, x2)
    y2 = np.where(singular, y2 + 1.0 / 12.0, y2)
    mean = 0.5 * (x2 + y2)
    half = np.sqrt((0.5 * (x2 - y2)) ** 2 + xy**2)
    return mx, my, np.sqrt(np.maximum(mean + half, 1e-6)), np.sqrt(np.maximum(mean - half, 1e-6))


def _footprint_moments(segmap: np.ndarray, sub: np.ndarray, n: int, floor: float) -> tuple[np.ndarray, ...]:
    """Barycentre ``x, y`` and second-moment semi-axes ``a, b`` (pixels) of the ``n`` objects of the
    binned ``segmap`` (index + 1) from the full-resolution pixels under each object's footprint, as
    sep computes them at full resolution: from `KERNEL`-smoothed values, over the pixels where those
    exceed ``floor`` (sep's isophote: the detection threshold). Moments of the binned pixels would
    add the 2 px box of the binning, which is large against an undersampled star and, varying with
    where the star falls in its block, elongates it (FWHM 1.6 px: median a/b 1.09 instead of 1.02);
    and the windowed centroid does not move from a binned pixel's centre onto a hot pixel next to
    it (the hot-pixel test looks there). A binned footprint is larger than sep's full-resolution
    one, which deblends a hot pixel off a star: the moments leave out spikes and their neighbours
    (3000 hot pixels on a 1.5 Mpix frame made the median a/b 1.58 instead of 1.03). Also returns
    which objects are mostly spikes (a hot pixel, or two in neighbouring blocks): less than half
    their weight is left; an object with no pixel left gets NaN. Last, the rows and columns of
    every pixel above ``floor`` (the objects' full-resolution isophotes)."""
    points = cv2.findNonZero((segmap > 0).view(np.uint8))  # (x, y) pairs, row by row
    if points is None:
        empty = np.zeros(0, dtype=np.intp)
        return (*(np.full(n, np.nan),) * 4, np.zeros(n, dtype=bool), empty, empty)
    points = points.reshape(-1, 2).astype(np.intp)
    xb, yb = points[:, 0], points[:, 1]
    label = np.repeat(segmap[yb, xb].astype(np.intp) - 1, 4)
    ys = (2 * yb[:, None] + np.array([0, 0, 1, 1])).ravel()
    xs = (2 * xb[:, None] + np.array([0, 1, 0, 1])).ravel()
    w, spike = _smoothed(sub, ys, xs)
    keep = w > floor
    label, xs, ys, w, spike = label[keep], xs[keep], ys[keep], w[keep], spike[keep]
    isophote = ys, xs
    spiky = np.zeros(n, dtype=bool)
    if spike.any():
        nx = sub.shape[1]
        where = ys * nx + xs
        near = (where[spike][:, None] + (np.array([-nx, 0, nx])[:, None] + np.array([-1, 0, 1])).ravel()).ravel()
        clean = ~np.isin(where, near)
        spiky = np.bincount(label[clean], w[clean], n) < 0.5 * np.bincount(label, w, n)
        label, xs, ys, w = label[clean], xs[clean], ys[clean], w[clean]
    x, y, a, b = _moments(label, xs, ys, w, n)
    return x, y, a, b, spiky, *isophote


def to_full_resolution(
    objects: np.ndarray, segmap: np.ndarray, sub: np.ndarray, floor: float
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A copy of sep's ``objects`` found on the `bin2` of ``sub`` (the background-subtracted frame),
    in full-resolution pixels: barycentres and axes ``a, b`` from the full-resolution pixels above
    ``floor`` (`_footprint_moments`; an object that is mostly spikes is placed on its peak pixel,
    which the windowed centroid then keeps, and one with no pixel left gets the binned values
    scaled: the centre of block ``i`` is pixel ``2 i + 0.5``), the peak pixel and its value in
    ``sub``, the total flux; and the rows and columns of the objects' full-resolution isophotes."""
    out = objects.copy()
    if out.size == 0:
        return out, (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp))
    x, y, a, b, spiky, *isophote = _footprint_moments(segmap, sub, objects.size, floor)
    xp, yp = _full_resolution_peaks(sub, objects["xpeak"].astype(np.intp), objects["ypeak"].astype(np.intp))
    found = np.isfinite(x) & np.isfinite(y) & np.isfinite(a) & np.isfinite(b) & ~spiky
    out["x"] = np.where(found, x, np.where(spiky, xp, 2.0 * objects["x"] + 0.5))
    out["y"] = np.where(found, y, np.where(spiky, yp, 2.0 * objects["y"] + 0.5))
    out["a"] = np.where(found, a, 2.0 * objects["a"])
    out["b"] = np.where(found, b, 2.0 * objects["b"])
    out["xpeak"], out["ypeak"] = xp, yp
    out["peak"] = sub[yp, xp]
    out["flux"] = 4.0 * objects["flux"]
    return out, (isophote[0], isophote[1])


def owners_of(segmap: np.ndarray, pixels: np.ndarray, n: int) -> np.ndarray:
    """Which of the ``n`` objects of the binned ``segmap`` (index + 1) own one of the True
    full-resolution ``pixels``."""
    owned = np.zeros(n, dtype=bool)
    if not pixels.any():
        return owned
    ys, xs = np.nonzero(pixels)
    inside = (ys // 2 < segmap.shape[0]) & (xs // 2 < segmap.shape[1])
    labels = np.unique(segmap[ys[inside] // 2, xs[inside] // 2])
    owned[labels[labels > 0] - 1] = True
    return owned


def grown_on_grid(
    pixels: tuple[np.ndarray, np.ndarray], grid: tuple[slice, slice], shape: tuple[int, int], radius: int
) -> np.ndarray:
    """On the regular subgrid ``grid`` of a frame of ``shape``: True within ``radius`` steps of the
    4-connected cross (a diamond, as `ccdwatch.qa.frame._grow`) of one of the ``(rows, columns)``
    ``pixels``, computed from the pixels alone (no frame-sized map to dilate)."""
    ys, xs = pixels
    rows, cols = np.arange(shape[0])[grid[0]], np.arange(shape[1])[grid[1]]
    out = np.zeros((rows.size, cols.size), dtype=bool)
    if ys.size == 0 or rows.size == 0 or cols.size == 0:
        return out
    (y0, sy), (x0, sx) = (int(rows[0]), int(grid[0].step or 1)), (int(cols[0]), int(grid[1].step or 1))
    k_first = -((y0 - ys + radius) // sy)  # the first grid row at or after ys - radius
    l_first = -((x0 - xs + radius) // sx)
    for i in range(2 * radius // sy + 1):
        k = k_first + i
        dy = np.abs(y0 + k * sy - ys)
        for j in range(2 * radius // sx + 1):
            lc = l_first + j
            near = (k >= 0) & (k < rows.size) & (lc >= 0) & (lc < cols.size)
            near &= dy + np.abs(x0 + lc * sx - xs) <= radius
            out[k[near], lc[near]] = True
    return out
