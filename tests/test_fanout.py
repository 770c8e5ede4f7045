"""Strips combined in forked processes (`ccdwatch.jobs.fanout`): the same bytes as one thread,
a child's failure reported by the parent, no child left behind."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from ccdwatch import noise
from ccdwatch.jobs import fanout

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="no fork here")


def _frames(n=9, shape=(300, 170), seed=4):
    rng = np.random.default_rng(seed)
    frames = [(100.0 + rng.normal(0, 5, shape)).astype(np.float32) for _ in range(n)]
    frames[3][10:20, 30:40] = 5000.0  # a satellite trail to clip
    frames[5][200:, :] = np.nan  # a frame that does not reach the last rows
    variances = [np.full(shape, 25.0 + i, np.float32) for i in range(n)]
    return frames, variances


@pytest.mark.parametrize("method", ["sigma_clip", "median", "mean"])
def test_forked_strips_give_the_bytes_of_one_thread(method):
    frames, variances = _frames()
    args = (frames, variances, [1.0 + 0.1 * i for i in range(len(frames))], [60.0] * len(frames))
    one = noise.combine_weighted(*args, method=method, rows=16, coverage=True)
    forked = noise.combine_weighted(*args, method=method, rows=16, coverage=True, threads=3,
                                    fanout=fanout.Forked())
    for name in ("image", "sigma", "used", "expmap", "covered"):
        a, b = getattr(one, name), getattr(forked, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert np.isnan(one.image[200:]).sum() == 0  # the other frames still cover the rows frame 5 misses
    assert one.used[15, 35] == len(frames) - (method == "sigma_clip")  # the trail clipped, in both


def _children() -> set[int]:
    """Pids of this process's children (Linux /proc), zombies included."""
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                found.add(int(entry))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_failing_child_is_reported_and_reaped():
    out = fanout.Forked.empty((4,), np.int64)
    out[:] = 0
    before = _children()

    def work(k):
        if k == 2:
            raise MemoryError("strip 2 needs more than it has")
        out[k] = 10 + k

    with pytest.raises(MemoryError, match=r"1 of 3 forked strip workers failed: MemoryError: strip 2 needs"):
        fanout.Forked.run(work, 4)  # a MemoryError still (the job says it in words)
    assert out.tolist() == [10, 11, 0, 13]  # the others' shares written to the shared array
    assert _children() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_parent_failing_ends_its_children():
    before = _children()
    started = fanout.Forked.empty((1,), np.int64)
    started[0] = 0

    def work(k):
        if k == 0:
            while started[0] < 1:  # the child is running
                pass
            raise KeyboardInterrupt
        started[0] += 1
        while True:  # would never end by itself
            pass

    with pytest.raises(KeyboardInterrupt):
        fanout.Forked.run(work, 2)
    assert _children() == before


def test_only_a_pool_worker_forks(monkeypatch):
    """Outside the pool's workers (this process, a Dask worker) the strips stay on threads."""
    monkeypatch.setattr(fanout, "_allowed", False)
    assert fanout.forked(2) is None
    fanout.allow()
    assert isinstance(fanout.forked(2), fanout.Forked)
    assert fanout.forked(1) is None  # one runner: nothing to fork


def test_a_pool_workers_stack_forks_its_strips(tmp_path):
    """The pool's worker initialiser allows it (`pool._worker_init`), in a process of its own."""
    import subprocess

    code = ("import os\nfrom ccdwatch.jobs import fanout, pool\nassert fanout.forked(2) is None\n"
            "pool._worker_init(0, 0, os.getpid())\nprint(type(fanout.forked(2)).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "Forked"


def test_no_fork_to_be_had_runs_every_share_here(monkeypatch):
    """When the system gives no process (fork fails), this process runs the remaining shares."""
    out = fanout.Forked.empty((3,), np.int64)
    out[:] = 0
    pid = os.getpid()

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)

    def work(k):
        assert os.getpid() == pid
        out[k] = 1 + k

    fanout.Forked.run(work, 3)
    assert out.tolist() == [1, 2, 3]


def test_a_child_that_fails_otherwise_is_a_runtime_error():
    def work(k):
        if k == 1:
            raise ValueError("no reference frame")

    with pytest.raises(RuntimeError, match="1 of 1 forked strip workers failed: ValueError: no reference frame"):
        fanout.Forked.run(work, 2)


class _ArrayOutOfMemory(MemoryError):
    """As numpy's ``_ArrayMemoryError``: a MemoryError whose type's name says nothing of it."""


def test_a_child_out_of_memory_is_a_memory_error_whatever_its_type_is_called():
    def work(k):
        if k == 1:
            raise _ArrayOutOfMemory("Unable to allocate 100. MiB for an array")

    with pytest.raises(MemoryError, match="1 of 1 forked strip workers failed: MemoryError: Unable to allocate"):
        fanout.Forked.run(work, 2)  # said in words by the job, naming workers.memory_limit_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_signal_while_the_children_are_awaited_ends_them_all():
    """A signal whose handler raises (Ctrl-C, a stop) while the parent waits for its children:
    the children still running are killed and reaped, their pipes closed, before it goes on."""
    import signal

    before, fds = _children(), len(os.listdir("/proc/self/fd"))

    def work(k):
        while k:  # the children would never end by themselves
            pass

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            fanout.Forked.run(work, 3)  # this process's share ends at once: it waits for the two others
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert _children() == before
    assert len(os.listdir("/proc/self/fd")) == fds
