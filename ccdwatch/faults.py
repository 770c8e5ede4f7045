"""Named fault-injection points, for the crash-safety tests.

``CCDWATCH_FAULTS`` holds comma-separated ``point[@substring]=action`` entries; an entry fires
when the named point is reached with a subject containing ``substring`` (any subject when it is
omitted). Actions: ``kill`` (SIGKILL this process: a power cut), ``crash`` (``os._exit(70)``: a
segfaulting library), ``hang`` (sleep for an hour: a stuck NFS read), ``enospc`` (a full disk),
``raise`` (RuntimeError).
``action?PATH`` fires only while the file PATH exists (a disk that fills up, then frees).

Points: ``ingest`` (worker, before parsing), ``ingest-commit`` (daemon, before the new frame's
row is committed), ``master-written`` / ``calibrated-written`` /
``stack-written`` (after the product file is in place, before the catalogue commit),
``product-write`` (any product, before its temp file is written),
``master-build`` / ``calibrate`` / ``stack`` (worker, before the numerics).
With the variable unset (always, outside tests) a point costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time

_ENV = "CCDWATCH_FAULTS"


def _parse(text: str) -> list[tuple[str, str, str, str]]:
    entries = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        where, _, action = item.partition("=")
        point, _, subject = where.partition("@")
        action, _, marker = action.partition("?")
        entries.append((point, subject, action or "raise", marker))
    return entries


def point(name: str, subject: object = "") -> None:
    """Fire the configured fault for ``name`` (no-op unless ``CCDWATCH_FAULTS`` names it)."""
    text = os.environ.get(_ENV)
    if not text:
        return
    for p, sub, action, marker in _parse(text):
        if p != name or (sub and sub not in str(subject)):
            continue
        if marker and not os.path.exists(marker):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "crash":
            os._exit(70)
        elif action == "hang":
            time.sleep(3600)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(subject))
        else:
            raise RuntimeError(f"injected fault at {name} ({subject})")
