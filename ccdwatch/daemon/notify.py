"""systemd's notify protocol (sd_notify(3)): one datagram per message to ``$NOTIFY_SOCKET``.

The protocol is stable and tiny, so it is implemented here rather than through a dependency:
``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``. Outside systemd (no
``NOTIFY_SOCKET``) every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

logger = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages; rate-limits WATCHDOG to half of ``$WATCHDOG_USEC``."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]  # abstract namespace socket
        elif addr.startswith("/"):
            self.address = addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        if pid.isdigit() and int(pid) != os.getpid():
            self.watchdog_interval = None
        self._last_watchdog = 0.0
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        if self.address is None:
            return False
        try:
            # Non-blocking: a notify socket whose reader has fallen behind must never stall the
            # worker loop (a full datagram queue would block a plain send indefinitely).
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.connect(self.address)
                sock.send(message.encode("utf-8", "replace"))
            return True
        except OSError as exc:
            logger.debug("sd_notify %r failed: %s", message, exc)
            return False

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self, *, force: bool = False) -> None:
        """Keep-alive; call only from the loop that does the work, and only while it is healthy."""
        now = time.monotonic()
        interval = self.watchdog_interval if self.watchdog_interval is not None else 5.0
        if force or now - self._last_watchdog >= interval:
            self._last_watchdog = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
