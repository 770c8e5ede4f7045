"""Working copies kept in RAM when they fit the budget, else in memory-mapped scratch files."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ccdwatch.scratch import ScratchArrays, release_pages


def _frames(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    frames = [rng.normal(100.0, 8.0, size=(32, 48)).astype(np.float32) for _ in range(n)]
    frames[1][3, 5] = np.nan  # missing pixels survive either way
    return frames


def test_arrays_that_fit_stay_in_memory(tmp_path: Path) -> None:
    frames = _frames()
    with ScratchArrays(tmp_path, count=len(frames), budget=len(frames) * frames[0].nbytes) as scratch:
        assert scratch.in_memory is None  # decided on the first array
        kept = [scratch.keep(f) for f in frames]
        assert scratch.in_memory is True
        assert all(k is f for k, f in zip(kept, frames, strict=True))  # no copy
        assert list(scratch.directory.iterdir()) == []
    assert list(tmp_path.iterdir()) == []


def test_arrays_that_do_not_fit_go_to_memory_mapped_files_removed_afterwards(tmp_path: Path) -> None:
    frames = _frames()
    workdir = tmp_path / "work" / "deeper"  # created when missing
    with ScratchArrays(workdir, count=len(frames), budget=len(frames) * frames[0].nbytes - 1,
                       prefix="stack-") as scratch:
        kept = [scratch.keep(f) for f in frames]
        assert scratch.in_memory is False
        assert scratch.directory.parent == workdir and scratch.directory.name.startswith("stack-")
        assert len(list(scratch.directory.glob("*.npy"))) == len(frames)
        for k, f in zip(kept, frames, strict=True):
            assert isinstance(k, np.memmap) and not k.flags.writeable
            assert k.dtype == f.dtype and k.shape == f.shape
            np.testing.assert_array_equal(k, f)  # the same values, NaN included
            release_pages(k)  # dropping the resident pages keeps the values
            np.testing.assert_array_equal(k, f)
        del kept
    assert list(workdir.iterdir()) == []


def test_the_files_are_removed_when_the_caller_fails(tmp_path: Path) -> None:
    frames = _frames()
    with pytest.raises(RuntimeError), ScratchArrays(tmp_path, count=len(frames), budget=0) as scratch:
        scratch.keep(frames[0])
        raise RuntimeError("combination failed")
    assert list(tmp_path.iterdir()) == []


def test_keep_from_several_threads_gives_distinct_files(tmp_path: Path) -> None:
    frames = _frames(12)
    with ScratchArrays(tmp_path, count=len(frames), budget=0) as scratch:
        first = scratch.keep(frames[0])
        with ThreadPoolExecutor(max_workers=4) as pool:
            kept = [first, *pool.map(scratch.keep, frames[1:])]
        assert len(list(scratch.directory.glob("*.npy"))) == len(frames)
        for k, f in zip(kept, frames, strict=True):
            np.testing.assert_array_equal(k, f)
    assert list(tmp_path.iterdir()) == []


def test_release_pages_ignores_what_is_not_a_read_only_map(tmp_path: Path) -> None:
    a = np.arange(12.0).reshape(3, 4)
    release_pages(a)
    np.save(tmp_path / "a.npy", a)
    writable = np.load(tmp_path / "a.npy", mmap_mode="r+")
    release_pages(writable)
    np.testing.assert_array_equal(writable, a)
