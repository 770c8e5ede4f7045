"""Alignment of a frame onto a reference frame: star-pattern matching, the transform, the warp.

Why not ``astroalign.register``: it detects the sources of *both* images on every call, builds
the triangle invariants of both lists in pure Python and warps with scikit-image. Here sources are
detected once per frame (`ccdwatch.qa.measure`); the triangle asterisms of each list (every star
with its 4 nearest neighbours, as astroalign forms them) and their invariants are computed with
numpy, the reference's once per stack; matching triangles propose similarities that are checked
against all control points, astroalign's RANSAC being the fallback when no proposal is clear;
the match is refined by least squares over all the stars; and the image is resampled with
OpenCV's ``warpAffine`` (`ccdwatch.resample.warp`, re-exported here).
This is many times faster than ``astroalign.register`` with the same accuracy against the true
star positions (see benchmarks/README.md).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ccdwatch.neighbours import PointGrid, nearest_k
from ccdwatch.qa import Sources
from ccdwatch.resample import warp

logger = logging.getLogger(__name__)

__all__ = ["AlignmentError", "Transform", "find_transform", "warp"]


class AlignmentError(Exception):
    """A frame could not be aligned onto the reference; the message says why."""


@dataclass(frozen=True)
class Transform:
    """A 2-D similarity transform from frame pixel coordinates to reference coordinates.

    Attributes
    ----------
    matrix : tuple of 3 tuples of 3 floats
        Homogeneous matrix ``M`` with ``(x_ref, y_ref, 1) = M @ (x, y, 1)``; 0-based pixel
        coordinates, ``x`` the column.
    n_matches : int
        Number of stars matched between the frame and the reference.
    rms : float
        RMS distance (px) between the matched reference stars and the transformed frame stars.
    """

    matrix: tuple[tuple[float, ...], ...]
    n_matches: int
    rms: float

    @classmethod
    def from_array(cls, matrix: np.ndarray, *, n_matches: int, rms: float) -> Transform:
        """Build from a 3x3 array (copied into tuples)."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (3, 3):
            raise ValueError(f"transform matrix must be 3x3, got {m.shape}")
        return cls(
            matrix=tuple(tuple(float(v) for v in row) for row in m),
            n_matches=int(n_matches),
            rms=float(rms),
        )

    @classmethod
    def identity(cls, *, n_matches: int = 0) -> Transform:
        """The transform of the reference onto itself."""
        return cls.from_array(np.eye(3), n_matches=n_matches, rms=0.0)

    @property
    def array(self) -> np.ndarray:
        """The matrix as a new 3x3 float64 array."""
        return np.array(self.matrix, dtype=np.float64)

    @property
    def scale(self) -> float:
        """Linear scale factor (reference px per frame px)."""
        m = self.array
        return math.sqrt(abs(np.linalg.det(m[:2, :2])))

    @property
    def rotation_deg(self) -> float:
        """Rotation angle in degrees (counter-clockwise with y up)."""
        m = self.array
        return math.degrees(math.atan2(m[1, 0], m[0, 0]))

    @property
    def shift(self) -> tuple[float, float]:
        """Translation ``(dx, dy)`` in pixels (where the frame origin lands on the reference)."""
        m = self.array
        return float(m[0, 2]), float(m[1, 2])

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map frame coordinates to reference coordinates (new arrays)."""
        m = self.array
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON/SQL storage."""
        return {
            "matrix": [list(row) for row in self.matrix],
            "n_matches": self.n_matches,
            "rms": self.rms,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Transform:
        """Inverse of :meth:`to_json`."""
        return cls.from_array(
            np.asarray(d["matrix"], dtype=np.float64),
            n_matches=int(d["n_matches"]),
            rms=float(d["rms"]),
        )


def _fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping ``src`` (N,2) onto ``dst`` (N,2)."""
    mu_s = src.mean(axis=0)
    mu_d = dst.mean(axis=0)
    s = src - mu_s
    d = dst - mu_d
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    var_s = (s**2).sum() / len(src)
    scale = float((sv * sign).sum() / var_s) if var_s > 0 else 1.0
    m = np.eye(3)
    m[:2, :2] = scale * rot
    m[:2, 2] = mu_d - scale * rot @ mu_s
    return m


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ m[:2, :2].T + m[:2, 2]


def _refine(
    m: np.ndarray, src: np.ndarray, dst: np.ndarray, *, radius: float, iterations: int = 3
) -> tuple[np.ndarray, int, float]:
    """Match every frame star to its nearest reference star under ``m`` and refit by least squares.

    Returns the refined matrix, the number of matched pairs and their RMS residual (px).
    """
    grid = PointGrid(dst, cell=radius)
    n_pairs, rms = 0, math.inf
    for _ in range(iterations):
        dist, j = grid.nearest(_apply(m, src), radius)
        ok = np.isfinite(dist)
        # one reference star per frame star: keep the closest claim
        order = np.argsort(dist[ok], kind="stable")
        i_ok = np.flatnonzero(ok)[order]
        _, first = np.unique(j[i_ok], return_index=True)
        i_pairs = i_ok[first]
        if i_pairs.size < 3:
            break
        s, d = src[i_pairs], dst[j[i_pairs]]
        m_new = _fit_similarity(s, d)
        resid = np.hypot(*(_apply(m_new, s) - d).T)
        # one clip of gross residuals (blends, a mismatched pair) then the final fit
        keep = resid <= max(3.0 * float(np.sqrt(np.mean(resid**2))), 0.2)
        if keep.sum() >= 3 and not keep.all():
            s, d = s[keep], d[keep]
            m_new = _fit_similarity(s, d)
            resid = np.hypot(*(_apply(m_new, s) - d).T)
        m = m_new
        n_pairs, rms = len(s), float(np.sqrt(np.mean(resid**2)))
    return m, n_pairs, rms


#: Triangles are formed from each star and its 4 nearest neighbours (as astroalign does).
_NEIGHBOURS = 5
#: Two triangles match when their invariants (side ratios) are this close (astroalign's radius).
_INVARIANT_RADIUS = 0.1
#: A candidate transform counts a control point as matched within this distance, px.
_PIXEL_TOL = 2.0
#: Candidates are tried in batches of this many, best-fitting triangle pairs first.
_BATCH = 64


@dataclass(frozen=True)
class _Pattern:
    """Triangle asterisms of a list of control points: vertex indices in a canonical order
    (opposite the shortest, middle, longest side) and their similarity invariants."""

    xy: np.ndarray  # (n, 2)
    triangles: np.ndarray  # (m, 3) int
    invariants: np.ndarray  # (m, 2): (L2 / L1, L1 / L0) of the sorted sides L0 <= L1 <= L2

    # neighbour grids (`ccdwatch.neighbours`), built on first use: only the (cached) reference's are queried
    @functools.cached_property
    def invariant_grid(self) -> PointGrid:
        return PointGrid(self.invariants, cell=_INVARIANT_RADIUS)

    @functools.cached_property
    def point_grid(self) -> PointGrid:
        return PointGrid(self.xy, cell=_PIXEL_TOL)


def _pattern(xy: np.ndarray) -> _Pattern:
    """The asterisms of ``xy`` (n >= 3), vectorised where astroalign builds them in Python loops."""
    xy = np.asarray(xy, dtype=np.float64)
    k = min(len(xy), _NEIGHBOURS)
    nearest = nearest_k(xy, k)
    combos = np.array(list(itertools.combinations(range(k), 3)))
    tri = np.unique(np.sort(nearest[:, combos].reshape(-1, 3), axis=1), axis=0)
    p = xy[tri]  # (m, 3, 2)
    opposite = np.stack([np.hypot(*(p[:, 1] - p[:, 2]).T), np.hypot(*(p[:, 0] - p[:, 2]).T),
                         np.hypot(*(p[:, 0] - p[:, 1]).T)], axis=1)
    order = np.argsort(opposite, axis=1, kind="stable")
    tri = np.take_along_axis(tri, order, axis=1)
    sides = np.take_along_axis(opposite, order, axis=1)
    ok = sides[:, 0] > 1e-6  # coincident points make no triangle
    tri, sides = tri[ok], sides[ok]
    invariants = np.column_stack([sides[:, 2] / sides[:, 1], sides[:, 1] / sides[:, 0]])
    return _Pattern(xy=xy, triangles=tri, invariants=invariants)


_PATTERNS: dict[bytes, _Pattern] = {}


def _cached_pattern(xy: np.ndarray) -> _Pattern:
    """The reference's pattern is the same for every frame of a stack: build it once."""
    key = np.ascontiguousarray(xy, dtype=np.float64).tobytes()
    if key not in _PATTERNS:
        if len(_PATTERNS) >= 8:
            _PATTERNS.pop(next(iter(_PATTERNS)))
        _PATTERNS[key] = _pattern(xy)
    return _PATTERNS[key]


def _match_patterns(frame: _Pattern, ref: _Pattern, *, max_scale_change: float) -> np.ndarray | None:
    """Similarity (3x3) taking ``frame`` control points onto ``ref``'s from matching triangles.

    Every pair of triangles with close invariants proposes the similarity that maps one onto
    the other; proposals with an implausible scale or a poor three-point fit are dropped, the
    rest are tried best fit first, and the first batch whose best proposal lands at least half
    of the control points (and >= 3) within 2 px of a reference point wins. Deterministic; None
    when no proposal is good enough (the caller then falls back to astroalign's RANSAC).
    """
    if not len(frame.triangles) or not len(ref.triangles):
        return None
    i_frame, i_ref = ref.invariant_grid.pairs(frame.invariants, _INVARIANT_RADIUS)
    if not i_frame.size:
        return None
    # z -> a z + b in complex numbers, least squares over the three vertex pairs
    zf = frame.xy[frame.triangles[i_frame]] @ np.array([1.0, 1j])  # (N, 3)
    zr = ref.xy[ref.triangles[i_ref]] @ np.array([1.0, 1j])
    cf, cr = zf - zf.mean(axis=1, keepdims=True), zr - zr.mean(axis=1, keepdims=True)
    a = (cr * cf.conj()).sum(axis=1) / (np.abs(cf) ** 2).sum(axis=1)
    b = zr.mean(axis=1) - a * zf.mean(axis=1)
    fit = np.abs(a[:, None] * zf + b[:, None] - zr).max(axis=1)
    keep = (np.abs(np.abs(a) - 1.0) <= max_scale_change) & (fit <= _PIXEL_TOL)
    a, b, fit = a[keep], b[keep], fit[keep]
    if not a.size:
        return None
    order = np.argsort(fit, kind="stable")
    a, b = a[order], b[order]
    points = frame.xy @ np.array([1.0, 1j])
    ref_grid = ref.point_grid
    need = max(3, (min(len(frame.xy), len(ref.xy)) + 1) // 2)
    for start in range(0, a.size, _BATCH):
        aa_, bb = a[start:start + _BATCH], b[start:start + _BATCH]
        mapped = aa_[:, None] * points[None, :] + bb[:, None]  # (batch, n)
        dist, _ = ref_grid.nearest(np.column_stack([mapped.real.ravel(), mapped.imag.ravel()]), _PIXEL_TOL)
        matched = np.isfinite(dist).reshape(mapped.shape).sum(axis=1)
        best = int(np.argmax(matched))
        if matched[best] >= need:
            m = np.eye(3)
            m[:2, :2] = [[aa_[best].real, -aa_[best].imag], [aa_[best].imag, aa_[best].real]]
            m[:2, 2] = [bb[best].real, bb[best].imag]
            return m
    return None


def _ransac_guess(src: np.ndarray, dst: np.ndarray, max_control_points: int, n_src: int, n_dst: int) -> np.ndarray:
    """astroalign's transform of ``src`` onto ``dst`` (its RANSAC over triangles), as a 3x3 matrix."""
    import astroalign  # the fallback only: not loaded by every worker

    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate triangles
            t, _ = astroalign.find_transform(src[:max_control_points], dst[:max_control_points],
                                             max_control_points=max_control_points)
    except astroalign.MaxIterError as exc:
        raise AlignmentError(
            f"no star pattern in common with the reference ({n_src} vs {n_dst} sources): {exc}") from exc
    except Exception as exc:  # ValueError/TypeError, or astroalign internals on degenerate geometry
        raise AlignmentError(f"astroalign could not match the star lists: {exc}") from exc
    return np.asarray(t.params, dtype=np.float64)


def find_transform(
    sources: Sources,
    ref: Sources,
    *,
    max_control_points: int = 50,
    min_matches: int = 4,
    match_radius: float = 1.5,
    max_scale_change: float = 0.02,
) -> Transform:
    """Similarity transform taking a frame's pixel coordinates onto the reference's.

    astroalign matches the star patterns (triangle invariants) of the ``max_control_points``
    brightest sources of each list; the transform is then refined by least squares over every
    source of the frame that lands within ``match_radius`` of a reference source.

    Parameters
    ----------
    sources : Sources
        Sources of the frame to align (brightest first, as `ccdwatch.qa.measure` returns).
    ref : Sources
        Sources of the reference frame.
    max_control_points : int
        Brightest sources of each list given to astroalign.
    min_matches : int
        Fewest matched stars accepted.
    match_radius : float
        Matching radius (px) for the least-squares refinement.
    max_scale_change : float
        Largest accepted ``|scale - 1|``; frames of one group come from one camera, so a large
        scale change means a false match.

    Returns
    -------
    Transform

    Raises
    ------
    AlignmentError
        Too few sources, no consistent star pattern, too few matches or an implausible scale.
    """
    if len(sources) < 3:
        raise AlignmentError(f"only {len(sources)} sources detected on the frame (need >= 3)")
    if len(ref) < 3:
        raise AlignmentError(f"only {len(ref)} sources detected on the reference (need >= 3)")
    src = sources.xy
    dst = ref.xy
    guess = _match_patterns(_pattern(src[:max_control_points]), _cached_pattern(dst[:max_control_points]),
                            max_scale_change=max_scale_change)
    refined = _refine(guess, src, dst, radius=match_radius) if guess is not None else None
    if refined is None or refined[1] < min_matches:
        # no clear triangle match, or one that does not hold (a sparse field with a close pair the
        # detection did not split: the triangles agreed on a false match): astroalign's RANSAC
        logger.debug("%s; trying astroalign's RANSAC", "no clear triangle match" if refined is None
                     else f"the triangle match holds {refined[1]} stars")
        try:
            fallback = _refine(_ransac_guess(src, dst, max_control_points, len(sources), len(ref)), src, dst,
                               radius=match_radius)
        except AlignmentError:
            if refined is None:
                raise
            fallback = None
        if fallback is not None and (refined is None or fallback[1] > refined[1]):
            refined = fallback
    assert refined is not None  # the fallback's error is raised when there was nothing else
    m, n_matches, rms = refined
    if n_matches < min_matches:
        raise AlignmentError(
            f"only {n_matches} stars matched the reference within {match_radius} px (need >= {min_matches})"
        )
    result = Transform.from_array(m, n_matches=n_matches, rms=rms)
    if abs(result.scale - 1.0) > max_scale_change:
        raise AlignmentError(f"implausible scale {result.scale:.3f} relative to the reference (false match?)")
    logger.debug(
        "transform: shift (%.2f, %.2f) px, rotation %.3f deg, scale %.5f, %d stars, rms %.3f px",
        *result.shift,
        result.rotation_deg,
        result.scale,
        n_matches,
        rms,
    )
    return result
