"""Neighbours of 2-D points, exact, with numpy alone: what aligning star lists asks.

`ccdwatch.align` asks three questions of its point sets (a few dozen control points, their
triangle invariants, or every source of a frame: up to a few thousand points): each point's k
nearest (the triangles), every point within a radius (matching invariants), and the nearest
point within a radius (matching stars). scipy's k-d tree answered them, but importing
``scipy.spatial`` cost every worker's fork server ~0.2 s of its start-up, before
the night's first job could run. Here a grid of square cells as large as the radius answers the
radius questions (a point's neighbours lie in its own cell or one of the eight around it), and
every distance is measured where there are few (`_BRUTE_FORCE` pairs: the 50 control points of a
pattern). The answers are a k-d tree's (scipy's ``cKDTree``: the nearest point strictly closer
than the bound, every point within the radius, bound included), except that of several points at
the same distance the lowest index is given, where a tree gives any; the k-nearest question is
answered by brute force, in blocks of rows, for the small sets it is asked of. Pure numerics.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["PointGrid", "nearest_k"]

#: Up to this many (query, point) pairs, every distance is measured (faster than the cells' bookkeeping
#: for the few dozen control points of a star pattern: `ccdwatch.align`'s queries of 50 points).
_BRUTE_FORCE = 1 << 18
#: Cells are numbered in int64 keys only below this (cell numbers and their count).
_MOST_CELLS = float(1 << 60)
#: The nine cells a radius query looks in: offsets from the query's own, in x and y.
_DX = np.repeat(np.arange(-1, 2, dtype=np.int64), 3)
_DY = np.tile(np.arange(-1, 2, dtype=np.int64), 3)


class PointGrid:
    """Fixed 2-D points in square cells of side ``cell``, for queries of radius ``<= cell``.

    ``points``: (n, 2) finite coordinates (copied as float64). Cells are counted from the lowest
    occupied one; a query far outside them has no neighbour and costs nothing.
    """

    def __init__(self, points: np.ndarray, cell: float) -> None:
        if not cell > 0:
            raise ValueError(f"cell size must be positive, got {cell}")
        self.points = np.array(points, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(self.points).all():
            raise ValueError("points must be finite")
        self.cell = float(cell)
        n = len(self.points)
        cells = np.floor(self.points / self.cell) if n else np.zeros((0, 2))
        low, high = (cells.min(axis=0), cells.max(axis=0)) if n else (np.zeros(2), np.zeros(2))
        span = high - low + 1
        # cells too many to number in int64 keys (points ~1e9 cells apart both ways, or ~1e18 one
        # way): every distance is measured instead
        self._cells = bool(n) and float(np.abs(cells).max()) < _MOST_CELLS and float(span[0] * span[1]) < _MOST_CELLS
        if not self._cells:
            cells, low, span = np.zeros((0, 2)), np.zeros(2), np.zeros(2)
        self._low, self._span = low.astype(np.int64), span.astype(np.int64)
        keys = self._keys(cells.astype(np.int64) - self._low)
        self._order = np.argsort(keys, kind="stable")  # points of one cell: in index order
        self._keys_sorted = keys[self._order]
        self._most = int(np.bincount(np.unique(keys, return_inverse=True)[1]).max()) if len(keys) else 0

    def __len__(self) -> int:
        return len(self.points)

    def _keys(self, cells: np.ndarray) -> np.ndarray:
        return cells[:, 0] * int(self._span[1]) + cells[:, 1]

    def _small(self, q: np.ndarray, radius: float) -> bool:
        """Measure every distance: few (query, point) pairs (`_BRUTE_FORCE`), no points, or points
        too far apart to number their cells."""
        if radius > self.cell:
            raise ValueError(f"radius {radius} exceeds the grid's cell ({self.cell})")
        return not self._cells or len(q) * len(self.points) <= _BRUTE_FORCE

    def _squared_distances(self, q: np.ndarray) -> np.ndarray:
        """(queries, points) squared distances; NaN (never within a radius) for a query not finite."""
        with np.errstate(invalid="ignore", over="ignore"):
            d2 = np.subtract.outer(q[:, 0], self.points[:, 0])
            d2 *= d2
            dy = np.subtract.outer(q[:, 1], self.points[:, 1])
            dy *= dy
            d2 += dy
        return d2

    def _candidates(self, queries: np.ndarray, radius: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The points in the nine cells around each query: for each place in a cell (the first
        point of every cell, then the second...), the query rows that have a point there, the
        point's index and its distance (a generator of arrays). ``radius <= cell``: `_small` checks."""
        q = np.asarray(queries, dtype=np.float64).reshape(-1, 2)
        if not len(self.points) or not len(q):
            return
        finite = np.asarray(np.isfinite(q).all(axis=1))
        with np.errstate(invalid="ignore", over="ignore"):
            own = np.floor(np.where(finite[:, None], q, 0.0) / self.cell) - self._low
        # far outside the occupied cells (or not finite): nothing to look at, and no overflow
        near = finite & (own >= -1).all(axis=1) & (own <= self._span).all(axis=1)
        rows = np.flatnonzero(near)
        own = own[rows].astype(np.int64)
        cx = (own[:, 0][None, :] + _DX[:, None]).ravel()  # the nine cells of every query at once
        cy = (own[:, 1][None, :] + _DY[:, None]).ravel()
        r = np.tile(rows, len(_DX))
        inside = (cx >= 0) & (cx < self._span[0]) & (cy >= 0) & (cy < self._span[1])
        r, key = r[inside], cx[inside] * int(self._span[1]) + cy[inside]
        lo = np.searchsorted(self._keys_sorted, key, side="left")
        hi = np.searchsorted(self._keys_sorted, key, side="right")
        for j in range(self._most):
            has = lo + j < hi
            if not has.any():
                break
            idx = self._order[lo[has] + j]
            yield r[has], idx, np.hypot(*(self.points[idx] - q[r[has]]).T)

    def nearest(self, queries: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """The nearest point closer than ``radius`` to each query: (distances, indices), with ``inf``
        and ``len(self)`` where there is none (a k-d tree's ``query(k=1, distance_upper_bound)``)."""
        q = np.asarray(queries, dtype=np.float64).reshape(-1, 2)
        if self._small(q, radius):  # every distance at once: a few numpy calls
            d2 = self._squared_distances(q)
            index = np.argmin(d2, axis=1) if len(self.points) else np.zeros(len(q), np.intp)
            dist = np.sqrt(d2[np.arange(len(q)), index]) if len(self.points) else np.full(len(q), np.inf)
            none = ~(dist < radius)
            dist[none], index[none] = np.inf, len(self.points)
            return dist, index.astype(np.intp)
        dist = np.full(len(q), np.inf)
        index = np.full(len(q), len(self.points), dtype=np.intp)
        for r, idx, d in self._candidates(q, radius):
            # one query row may come several times in one pass (from different cells): the nearest,
            # then the lowest index, is written last
            order = np.lexsort((-idx, -d))
            r, idx, d = r[order], idx[order], d[order]
            closer = (d < radius) & ((d < dist[r]) | ((d == dist[r]) & (idx < index[r])))
            dist[r[closer]], index[r[closer]] = d[closer], idx[closer]
        return dist, index

    def pairs(self, queries: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Every (query, point) within ``radius`` of each other: their indices, ordered by query,
        then point (a k-d tree's ``query_ball_point`` of several points, flattened)."""
        q = np.asarray(queries, dtype=np.float64).reshape(-1, 2)
        if self._small(q, radius):
            qs, ps = np.nonzero(self._squared_distances(q) <= radius * radius)  # in (query, point) order
            return qs.astype(np.intp), ps.astype(np.intp)
        found_q, found_p = [np.zeros(0, np.intp)], [np.zeros(0, np.intp)]
        for r, idx, d in self._candidates(q, radius):
            ok = d <= radius
            found_q.append(r[ok])
            found_p.append(idx[ok])
        qs, ps = np.concatenate(found_q).astype(np.intp), np.concatenate(found_p).astype(np.intp)
        order = np.lexsort((ps, qs))
        return qs[order], ps[order]


def nearest_k(points: np.ndarray, k: int, *, block: int = 512) -> np.ndarray:
    """(n, k) indices of each point's ``k`` nearest points (itself among them, at distance 0),
    nearest first, ties by index; ``k`` at most ``n``. Brute force in blocks of ``block`` rows:
    meant for the few dozen control points of a star pattern."""
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(xy)
    if not 0 < k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    out = np.empty((n, k), dtype=np.intp)
    for start in range(0, n, block):
        part = xy[start:start + block]
        d2 = ((part[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
        out[start:start + block] = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return out
