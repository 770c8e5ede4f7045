"""Open a local HTML page in headless Chromium (Debian's ``chromium`` package) for tests.

The report sets ``data-images-ok`` / ``data-images-total`` on ``<body>`` once the page has loaded
(see ``ccdwatch.report.IMAGE_CHECK_JS``); ``--dump-dom`` shows them. JavaScript errors and
``console`` messages appear on Chromium's stderr as ``...:CONSOLE:<line>] "message"`` lines.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")


def find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def need_chromium() -> str:
    exe = find_chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    return exe


@dataclass
class PageLoad:
    dom: str
    console: list[str]
    stderr: str

    def body_data(self, name: str) -> str | None:
        """Value of ``data-<name>`` on <body> after load, e.g. ``body_data("images-ok")``."""
        body = re.search(r"<body\b[^>]*>", self.dom)
        if body is None:
            return None
        m = re.search(rf'\bdata-{re.escape(name)}="([^"]*)"', body.group(0))
        return m.group(1) if m else None


def load(page: Path, workdir: Path, *, screenshot: Path | None = None, window: tuple[int, int] = (1200, 2000),
         timeout: float = 120.0) -> PageLoad:
    """Load ``page`` headless; return the DOM after load and the console messages.

    With ``screenshot``, a second run writes a PNG of the first ``window`` pixels.
    """
    exe = need_chromium()
    profile = workdir / "chromium-profile"
    url = page.absolute().as_uri()
    common = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"]
    run = subprocess.run([*common, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=timeout, check=False)
    console = [m.group(1) for line in run.stderr.splitlines() if (m := CONSOLE.search(line))]
    if screenshot is not None:
        subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, text=True,
                       timeout=timeout, check=False)
    return PageLoad(dom=run.stdout, console=console, stderr=run.stderr)
