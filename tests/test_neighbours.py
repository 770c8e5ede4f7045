"""`ccdwatch.neighbours` against scipy's k-d tree, which it replaces in `ccdwatch.align`."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ccdwatch import neighbours
from ccdwatch.neighbours import PointGrid, nearest_k


@pytest.fixture(params=["cells", "every distance"])
def way(request, monkeypatch):
    """Both ways of answering: the cells, and every distance measured (few pairs)."""
    monkeypatch.setattr(neighbours, "_BRUTE_FORCE", -1 if request.param == "cells" else 1 << 40)
    return request.param


def _points(rng: np.random.Generator, n: int) -> np.ndarray:
    """A star field's worth of points: spread over 2k px, some in tight pairs and some repeated."""
    xy = rng.uniform(0, 2048, (n, 2))
    xy[: n // 10] = xy[n // 10: 2 * (n // 10)] + rng.normal(0, 0.8, (n // 10, 2))  # close pairs
    xy[-3:] = xy[:3]  # the same point twice
    return xy


@pytest.mark.parametrize("seed", range(5))
def test_nearest_within_a_radius_is_the_k_d_trees(seed, way):
    rng = np.random.default_rng(seed)
    pts = _points(rng, 2000)
    queries = np.concatenate([pts[:500] + rng.normal(0, 1.0, (500, 2)),  # near a point, or not
                              rng.uniform(-500, 2600, (300, 2)),  # beyond the field too
                              [[1e12, -1e12], [np.nan, 3.0]]])
    for radius in (0.5, 1.5, 2.0):
        grid = PointGrid(pts, cell=2.0)
        d, j = grid.nearest(queries, radius)
        d_ref, j_ref = cKDTree(pts).query(np.nan_to_num(queries[:-1]), k=1, distance_upper_bound=radius)
        found = np.isfinite(d_ref)
        assert np.array_equal(np.isfinite(d[:-1]), found)
        assert np.allclose(d[:-1][found], d_ref[found], rtol=0, atol=1e-12)
        # one of several points at the same distance (the repeated ones) may differ: same place
        assert np.allclose(pts[j[:-1][found]], pts[j_ref[found]], atol=1e-12)
        assert (j[:-1][~found] == len(pts)).all() and j[-1] == len(pts) and d[-1] == np.inf
        assert found.sum() > 50  # the test means something


@pytest.mark.parametrize("seed", range(3))
def test_pairs_within_a_radius_are_the_k_d_trees(seed, way):
    rng = np.random.default_rng(seed)
    inv = rng.uniform(1, 3, (600, 2))  # triangle invariants: side ratios
    queries = np.concatenate([inv[:200] + rng.normal(0, 0.05, (200, 2)), rng.uniform(0, 5, (100, 2))])
    grid = PointGrid(inv, cell=0.1)
    qs, ps = grid.pairs(queries, 0.1)
    want = cKDTree(inv).query_ball_point(queries, r=0.1)
    assert list(zip(qs.tolist(), ps.tolist(), strict=True)) == [(i, j) for i, w in enumerate(want) for j in sorted(w)]
    assert len(qs) > 200


def test_nearest_k_is_the_k_d_trees_set():
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 2048, (50, 2))
    got = nearest_k(xy, 5, block=16)  # several blocks
    _, want = cKDTree(xy).query(xy, 5)
    assert (got[:, 0] == np.arange(50)).all()  # itself first
    assert [set(g) for g in got] == [set(w) for w in want]


def test_empty_sets_and_bad_arguments(way):
    empty = PointGrid(np.zeros((0, 2)), cell=1.0)
    d, j = empty.nearest([[0.0, 0.0]], 1.0)
    assert d[0] == np.inf and j[0] == 0
    assert [len(a) for a in empty.pairs([[0.0, 0.0], [1.0, 1.0]], 1.0)] == [0, 0]
    grid = PointGrid([[0.0, 0.0], [3.0, 4.0]], cell=1.0)
    assert grid.nearest(np.zeros((0, 2)), 1.0)[0].shape == (0,)
    with pytest.raises(ValueError, match="exceeds"):
        grid.nearest([[0.0, 0.0]], 2.0)
    with pytest.raises(ValueError, match="positive"):
        PointGrid([[0.0, 0.0]], cell=0.0)
    with pytest.raises(ValueError, match="finite"):
        PointGrid([[np.nan, 0.0]], cell=1.0)
    with pytest.raises(ValueError, match="k must be"):
        nearest_k([[0.0, 0.0]], 2)


def test_the_bound_is_exclusive_for_the_nearest_and_inclusive_for_pairs(way):
    """As scipy's tree: ``query(distance_upper_bound=r)`` finds points closer than ``r``,
    ``query_ball_point(r=r)`` points at ``r`` too."""
    pts = np.array([[0.0, 0.0], [10.0, 0.0]])
    grid = PointGrid(pts, cell=2.0)
    at_bound = np.array([[2.0, 0.0], [8.5, 0.0]])
    d, j = grid.nearest(at_bound, 2.0)
    d_ref, j_ref = cKDTree(pts).query(at_bound, distance_upper_bound=2.0)
    assert d.tolist() == [np.inf, 1.5] and j.tolist() == [2, 1]
    assert d_ref.tolist() == d.tolist() and j_ref.tolist() == j.tolist()
    qs, ps = grid.pairs(at_bound, 2.0)
    assert list(zip(qs.tolist(), ps.tolist(), strict=True)) == [(0, 0), (1, 1)]
    assert cKDTree(pts).query_ball_point(at_bound, r=2.0).tolist() == [[0], [1]]


def test_points_too_far_apart_to_number_their_cells_are_still_answered(way):
    pts = np.array([[0.0, 0.0], [1e30, 3.0], [0.5, 0.5]])
    grid = PointGrid(pts, cell=1.0)
    d, j = grid.nearest([[0.4, 0.4], [1e30, 3.5], [5.0, 5.0]], 1.0)
    assert j.tolist() == [2, 1, 3] and d[2] == np.inf
    qs, ps = grid.pairs([[0.2, 0.2]], 1.0)
    assert ps.tolist() == [0, 2]
