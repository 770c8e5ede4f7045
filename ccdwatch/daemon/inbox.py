"""The daemon loop's inbox: filesystem events and stop requests, woken through a self-pipe.

The observer thread and signal handlers only append an item and write one byte to a pipe; the
loop waits on the pipe with ``select``, which a signal interrupts and which resumes with the
remaining time (PEP 475). Unlike ``queue.SimpleQueue.get(timeout=...)``, which was seen to block
for ever after a signal handler ran past its deadline, a wait here always ends: by a byte, or
by its timeout.
"""

from __future__ import annotations

import collections
import os
import select
from collections.abc import Iterator


class Inbox:
    """A thread- and signal-safe queue of (kind, path) items that wakes a waiting loop."""

    def __init__(self) -> None:
        self._items: collections.deque[tuple[str, str]] = collections.deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def put(self, item: tuple[str, str]) -> None:
        """Add an item and wake the loop (any thread; never blocks)."""
        self._items.append(item)
        self.wake()

    def wake(self) -> None:
        """Wake the loop without an item (signal handlers call this; never blocks or raises)."""
        try:
            os.write(self._w, b"\0")
        except OSError:  # the pipe is full (the loop will wake anyway) or closed at exit
            pass

    def empty(self) -> bool:
        return not self._items

    def wait(self, timeout: float) -> None:
        """Return once an item or a wake-up arrived, or after ``timeout`` seconds."""
        if self._items or timeout <= 0:
            self._drain_pipe()
            return
        try:
            select.select([self._r], [], [], timeout)
        except (OSError, ValueError):  # closed under us at shutdown
            return
        self._drain_pipe()

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def take(self) -> Iterator[tuple[str, str]]:
        """Every item queued so far, oldest first."""
        while True:
            try:
                yield self._items.popleft()
            except IndexError:
                return

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
