"""A job's strips spread over forked processes instead of threads.

A lone stack gets both cores (`ccdwatch.pipeline.runner`), and its combination ran its strips on
that many threads. numpy and OpenCV release the GIL in their loops, but a stack makes many small
calls per strip and frame (reading rows, warping, clipping): its threads held the GIL about half
the time, and two threads took 4.4 s of wall and 7.4 s of CPU where one took 6.3 s of both (40
frames of 2k). Page faults of the two threads also contend in one address space (200k against 73k
on one thread). Forked processes share none of that: the parent forks, each child combines its
share of the strips into output arrays in shared memory, the parent combines the first share and
waits. Every strip is computed by the same code on the same inputs whoever computes it: the
result is the same bytes as with threads or one thread.

Used only where the job's process is one of the pool's workers (`allow`, called as each starts):
a single-threaded process whose numeric libraries run one thread each. A Dask worker runs tasks
on threads beside its event loop, and OpenCV's own thread pool, once used, hangs a forked child:
there the strips stay on threads. A child dies with its parent (a worker killed for its time
limit takes its children along), never returns into the caller's stack and never runs the
parent's exit handlers.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import signal
import sys
import traceback
from collections.abc import Callable

import numpy as np

__all__ = ["Forked", "allow", "forked"]

#: The end of a child's traceback passed back to the parent (a pipe holds 64 KiB unread).
_MESSAGE_BYTES = 8000
_allowed = False  # this process is a pool worker (`allow`)


class Forked:
    """Run ``fn(0)`` here and ``fn(1)`` ... ``fn(width - 1)`` in forked children, side by side;
    output arrays they all write come from `empty` (anonymous shared memory: not private memory,
    so not counted by a worker's RLIMIT_DATA, which each child inherits for its own share)."""

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array in memory shared with the children forked later."""
        dt = np.dtype(dtype)
        count = math.prod(shape)
        buf = mmap.mmap(-1, max(1, count * dt.itemsize))  # MAP_SHARED | MAP_ANONYMOUS
        return np.frombuffer(buf, dtype=dt, count=count).reshape(shape)

    @staticmethod
    def run(fn: Callable[[int], None], width: int) -> None:
        """``fn(k)`` for every ``k`` in ``range(width)``, ``fn(0)`` in this process; returns when all
        have; raises if any failed (a child's error names its traceback's end), after the other
        children have ended."""
        children: list[tuple[int, int]] = []  # (pid, read end of its error pipe)
        parent = os.getpid()
        here = [0]  # the shares run in this process: the first, and any no child could take
        try:
            for k in range(1, width):
                r, w = os.pipe()
                try:
                    pid = os.fork()
                except OSError:  # no process to be had (EAGAIN, ENOMEM): this one does the rest
                    os.close(r)
                    os.close(w)
                    here.extend(range(k, width))
                    break
                if pid == 0:  # the child: never returns
                    os.close(r)
                    _child(fn, k, w, parent)
                os.close(w)
                children.append((pid, r))
            for k in here:
                fn(k)
        except BaseException:
            for pid, _ in children:
                _kill(pid)
            raise
        finally:
            failures = _reap_all(children)
        failed = [f for f in failures if f]
        if failed:
            message = f"{len(failed)} of {len(children)} forked strip workers failed: {failed[0]}"
            if failed[0].startswith("MemoryError"):  # said in words by the job (`memory.explain`)
                raise MemoryError(message)
            raise RuntimeError(message)


def _child(fn: Callable[[int], None], k: int, w: int, parent: int) -> None:
    code = 1
    try:
        _die_with(parent)
        fn(k)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, whatever it was
        text = traceback.format_exc().rstrip("\n")
        if isinstance(exc, MemoryError):  # the last line the parent reads says so, whatever the type's
            text += f"\nMemoryError: {exc}"  # name (numpy's is numpy._core._exceptions._ArrayMemoryError)
        try:
            os.write(w, text.encode(errors="replace")[-_MESSAGE_BYTES:])
        except OSError:
            pass
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:
    """SIGKILL this child when the process that forked it exits (Linux), and exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap_all(children: list[tuple[int, int]]) -> list[str]:
    """`_reap` every child, in turn. If that is interrupted (a signal's exception, in the wait),
    the children not reaped yet are killed and reaped, the signals held off meanwhile, before the
    exception goes on: none is left running, a zombie, or with its pipe open."""
    failures: list[str] = []
    for i, (pid, r) in enumerate(children):
        try:
            failures.append(_reap(pid, r))
        except BaseException:
            rest = children[i:]
            for other, _ in rest:
                _kill(other)
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                for other, fd in rest:
                    with contextlib.suppress(OSError):
                        _reap(other, fd)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            raise
    return failures


def _reap(pid: int, r: int) -> str:
    """Wait for child ``pid``; its error ("" when it succeeded)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:  # already reaped (e.g. by a SIGCHLD handler): its pipe tells
            status = -1
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
    try:
        message = b""
        while chunk := os.read(r, 65536):
            message += chunk
    finally:
        os.close(r)
    if status == 0 or (status == -1 and not message):
        return ""
    if message:
        return message.decode(errors="replace").strip().splitlines()[-1]
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def allow() -> None:
    """This process is a pool worker (`ccdwatch.jobs.pool`): its jobs may fork (`forked`)."""
    global _allowed
    _allowed = True


def forked(width: int) -> Forked | None:
    """A `Forked` fanout for ``width`` > 1 runners in a pool worker (`allow`) that can fork, else
    None (threads)."""
    return Forked() if _allowed and width > 1 and hasattr(os, "fork") and sys.platform != "darwin" else None
