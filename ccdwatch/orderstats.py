"""Order statistics along the frame axis of a stack of planes: sorting networks over whole
planes, the NaN-ignoring median, and the median with the median absolute deviation about it.

Pure numerics, used by the combinations of `ccdwatch.calib` and `ccdwatch.noise`; `median_1d`, the
median of one long 1-D array, by `ccdwatch.evidence`.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["NETWORK_MAX_FRAMES", "median_1d", "median_and_mad", "median_of_sorted", "median_valid", "order_statistics",
           "pixel_blocks", "sorted_planes", "sorting_network"]

#: Above this many frames the sorting network grows large; ``np.sort`` along the frames is used.
NETWORK_MAX_FRAMES = 48

#: Per-pixel work along the frames (medians, the clipping of `ccdwatch.rejection`) runs on blocks of
#: pixels whose values (all frames, float32) take about this many bytes, so that its dozens of
#: elementwise passes (a sorting network, means and spreads) work in the cache rather than on
#: strips of tens of MB: on a stack's strip of 40 2k frames (33 MB) 0.67-0.73x the CPU, on a master's
#: strip of 10 (8 MB, `strips.STRIP_CACHE_BYTES`) 0.88-0.91x (`benchmarks.rejection`). Smaller blocks
#: cost as little CPU in one thread but more calls: the stack job in two threads took 5.4-5.7 s with
#: 2 MB blocks (26k pixels), 4.8-5.0 s with 8 MB (52k), 4.9-5.2 s with whole strips.
#: A pixel's result depends on its own values only, so it does not depend on the blocks.
BLOCK_BYTES = 8 << 20
#: Bounds of a block's pixels: below, numpy's per-call overhead takes over; above, nothing is gained.
BLOCK_PIXELS = (16384, 131072)

#: `median_1d`: values sampled to bracket the middle (at most; at least every 8th value otherwise),
#: and the fewest values worth bracketing.
_BRACKET_SAMPLE = 16384
_BRACKET_MIN_SIZE = 8192


def _middle_values(a: np.ndarray, ks: list[int]) -> np.ndarray | None:
    """``np.partition(a, ks)[ks]`` of a long 1-D array (the order statistics themselves, so the same
    values), partitioning only the ~3 % of values between two bounds read off a sorted regular
    subsample; None when the bounds miss a rank (then the caller partitions everything) or when a
    value is NaN (which is in none of the three ranges).

    Each pass over ``a`` costs ~0.04 ms at 262k float32, the gathering of the values between the
    bounds ~25 ns a value: on quantised data (integer ADU binned 2x2), where thousands of values
    tie, the middle value of the subsample is first tried as the answer (two passes, nothing
    gathered)."""
    n = a.size
    sample = np.sort(a[:: max(8, n // _BRACKET_SAMPLE)])
    m = sample.size
    guess = sample[ks[0] * m // n]
    not_above = np.count_nonzero(a <= guess)
    if (np.count_nonzero(a < guess) <= ks[0] and ks[-1] < not_above
            and not_above + np.count_nonzero(a > guess) == n):  # and no NaN
        return np.full(len(ks), guess, dtype=a.dtype)
    margin = 2 * int(np.sqrt(m))  # ~4 standard deviations of a random sample's rank
    i0, i1 = ks[0] * m // n - margin, ks[-1] * m // n + margin + 1
    if i0 < 0 or i1 >= m:
        return None
    lo, hi = sample[i0], sample[i1]
    below = np.count_nonzero(a < lo)
    above = np.count_nonzero(a > hi)
    if not below <= ks[0] <= ks[-1] < n - above:
        return None
    inside = a[(a >= lo) & (a <= hi)]
    if below + inside.size + above != n:  # NaN
        return None
    ranks = [k - below for k in ks]
    return np.partition(inside, ranks)[ranks]


def order_statistics(a: np.ndarray, ks: list[int]) -> np.ndarray:
    """``np.partition(a, ks)[ks]`` of a 1-D array: the same values, bracketed (`_middle_values`)
    when ``a`` is long enough (1 M float32: ~2 ms against ~11 ms)."""
    found = _middle_values(a, ks) if a.size >= _BRACKET_MIN_SIZE else None
    return np.partition(a, ks)[ks] if found is None else found


def median_1d(a: np.ndarray) -> np.floating:
    """``np.median(a)`` of a 1-D array: the same value and type (the middle one or two order
    statistics, averaged by ``np.mean`` as numpy does), several times cheaper on long arrays
    (`_middle_values`; ``np.partition`` of 262k float32 takes 2 ms, ``np.sort`` 0.8 ms)."""
    n = a.size
    if n < _BRACKET_MIN_SIZE:
        return np.median(a)
    middle = _middle_values(a, [(n - 1) // 2, n // 2] if n % 2 == 0 else [n // 2])
    # np.mean makes 0.0 of -0.0: which of tied zeros sits at the rank does not show
    return np.median(a) if middle is None else np.mean(middle)


def median_of_sorted(srt: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Median along axis 0 of an array sorted along axis 0 with NaNs last; ``n`` valid per pixel."""
    lo = np.maximum((n - 1) // 2, 0)[None]
    hi = np.maximum(n // 2, 0)[None]
    a = np.take_along_axis(srt, lo, axis=0)[0]
    b = np.take_along_axis(srt, hi, axis=0)[0]
    med = (a + b) * srt.dtype.type(0.5)
    med[n == 0] = np.nan
    return med


@functools.lru_cache(maxsize=64)
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort for ``n`` inputs.

    Built for the next power of two and pruned of every comparator that touches an index >= n
    (those inputs are +inf padding, which such a comparator never moves).
    """
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


@functools.lru_cache(maxsize=256)
def _selection_network(n: int, outputs: tuple[int, ...]) -> tuple[tuple[int, int, bool, bool], ...]:
    """The comparators of `sorting_network` that the sorted values at ``outputs`` depend on, each
    ``(i, j, min needed, max needed)``: the others compute values nothing reads (the median of 10
    frames needs 50 of the network's 64 minima and maxima)."""
    live, kept = set(outputs), []
    for i, j in reversed(sorting_network(n)):
        if i in live or j in live:
            kept.append((i, j, i in live, j in live))
            live |= {i, j}
    return tuple(reversed(kept))


def sorted_planes(stack: np.ndarray, outputs: tuple[int, ...] | None = None, *, nan: bool = True) -> list[np.ndarray]:
    """The planes of a (nframes, ...) float32 stack sorted along axis 0, NaN last (as +inf); with
    ``outputs``, only those positions are sorted values (the others are left partly sorted).
    ``nan=False``: the caller knows no value is NaN.

    Elementwise min/max over whole planes (a sorting network) instead of ``np.sort`` along the
    strided frame axis: the same order statistics, many times faster for a handful of frames.
    A NaN sorts as +inf; callers select only among the first ``n`` valid values per pixel, so
    the result equals that of ``np.sort`` (NaNs last).
    """
    planes = [np.array(p, dtype=np.float32, copy=True) for p in stack]
    for p in planes if nan else ():
        np.copyto(p, np.float32(np.inf), where=np.isnan(p))
    tmp = np.empty_like(planes[0])
    every = tuple(range(len(planes))) if outputs is None else outputs
    for i, j, low, high in _selection_network(len(planes), every):
        a, b = planes[i], planes[j]
        if low and high:
            np.minimum(a, b, out=tmp)
            np.maximum(a, b, out=b)
            planes[i], tmp = tmp, a
        elif low:
            np.minimum(a, b, out=a)
        else:
            np.maximum(a, b, out=b)
    return planes


def pixel_blocks(nframes: int, npix: int) -> list[slice]:
    """Blocks of the ``npix`` pixels of ``nframes`` frames, each about `BLOCK_BYTES` of float32."""
    size = min(max(BLOCK_BYTES // (4 * max(1, nframes)), BLOCK_PIXELS[0]), BLOCK_PIXELS[1])
    return [slice(p, min(npix, p + size)) for p in range(0, npix, size)] or [slice(0, 0)]


def median_valid(stack: np.ndarray, n: np.ndarray) -> np.ndarray:
    """NaN-ignoring median along axis 0 with ``n`` valid values per pixel (NaN where n == 0).

    Equal to ``median_of_sorted(np.sort(stack, axis=0), n)``; computed in `pixel_blocks`.
    """
    nframes = stack.shape[0]
    values = stack.reshape(nframes, -1)
    counts = np.broadcast_to(n, stack.shape[1:]).reshape(-1)
    blocks = pixel_blocks(nframes, values.shape[1])
    if len(blocks) == 1:
        return _median_valid(stack, n)
    parts = [_median_valid(values[:, b], counts[b]) for b in blocks]
    return np.concatenate(parts).reshape(stack.shape[1:])


def _median_valid(stack: np.ndarray, n: np.ndarray) -> np.ndarray:
    """`median_valid` of one block."""
    nframes = stack.shape[0]
    if nframes > NETWORK_MAX_FRAMES:
        return median_of_sorted(np.sort(stack, axis=0), n)
    if np.all(n == nframes):  # no NaN: the middle two only
        planes = sorted_planes(stack, ((nframes - 1) // 2, nframes // 2), nan=False)
        return (planes[(nframes - 1) // 2] + planes[nframes // 2]) * np.float32(0.5)
    planes = sorted_planes(stack, tuple(range(nframes // 2 + 1)))
    lo_i = np.maximum((n - 1) // 2, 0)
    hi_i = np.maximum(n // 2, 0)
    a = planes[0].copy()
    b = planes[0].copy()
    for k in range(1, nframes // 2 + 1):
        np.copyto(a, planes[k], where=lo_i == k)
        np.copyto(b, planes[k], where=hi_i == k)
    med = (a + b) * np.float32(0.5)
    med[n == 0] = np.nan
    return med


def median_and_mad(stack: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN-ignoring median along axis 0 of a (nframes, ...) float32 stack with ``n`` valid values
    per pixel, and the median of the absolute deviations about it: the same values as
    ``median_valid(stack, n)`` and ``median_valid(np.abs(stack - median), n)``, with one sort.

    Where every value is valid, the deviations of the sorted values above the median and those
    below it are two sorted lists, and an order statistic of their union is found by
    `_kth_of_two` (~2k elementwise operations where a second sorting network takes hundreds);
    pixels with missing or infinite values are done the long way.
    """
    nframes = stack.shape[0]
    if nframes > NETWORK_MAX_FRAMES or nframes < 3 or not (n == nframes).any():
        centre = median_valid(stack, n)
        with np.errstate(invalid="ignore"):
            return centre, median_valid(np.abs(stack - centre), n)
    planes = sorted_planes(stack)
    full = np.isfinite(planes[0]) & np.isfinite(planes[-1])  # every value there, none infinite
    h = nframes // 2
    centre = (planes[(nframes - 1) // 2] + planes[h]) * np.float32(0.5)
    with np.errstate(invalid="ignore"):  # inf - inf where values are missing: those pixels are redone below
        above = [p - centre for p in planes[h:]]  # ascending, >= 0
        below = [centre - p for p in planes[h - 1 :: -1]]  # ascending, >= 0
        mad = _kth_of_two(above, below, h + 1)  # the (h+1)-th smallest deviation: the median for odd n
        if nframes % 2 == 0:  # the mean of the h-th and (h+1)-th smallest
            mad = (_kth_of_two(above, below, h) + mad) * np.float32(0.5)
    if not full.all():  # pixels with missing (or infinite) values: the general way, on those only
        part = stack[:, ~full]
        centre[~full] = median_valid(part, n[~full])
        with np.errstate(invalid="ignore"):
            mad[~full] = median_valid(np.abs(part - centre[~full]), n[~full])
    return centre, mad


def _kth_of_two(a: list[np.ndarray], b: list[np.ndarray], k: int) -> np.ndarray:
    """Elementwise k-th smallest (1-based) of the union of two lists of planes, each sorted
    ascending along the list: the smallest, over every split of k into i values from ``a`` and
    k - i from ``b``, of the larger of the last values taken."""
    best: np.ndarray | None = None
    for i in range(max(0, k - len(b)), min(k, len(a)) + 1):
        if i == 0:
            last = b[k - 1]
        elif i == k:
            last = a[k - 1]
        else:
            last = np.maximum(a[i - 1], b[k - i - 1])
        best = last.copy() if best is None else np.minimum(best, last, out=best)
    assert best is not None  # k <= len(a) + len(b)
    return best
