"""Run a command in a child process and measure wall time, CPU time and peak memory."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Run:
    """What one child process cost.

    Attributes
    ----------
    wall : float
        Wall-clock time, s.
    user, sys : float
        CPU time of the child and its reaped descendants (``os.wait4``), s.
    maxrss_mb : float
        Peak resident set of the largest single process of the tree (``ru_maxrss``), MiB.
    tree_rss_mb : float
        Peak of the summed resident set of the whole process tree, sampled at 10 Hz, MiB.
    returncode : int
    output : str
        Last lines of stdout+stderr (for diagnosis).
    started : float
        When the child was started (epoch s), after the sync and the read-through.
    """

    name: str
    wall: float
    user: float
    sys: float
    maxrss_mb: float
    tree_rss_mb: float
    returncode: int
    output: str = ""
    extra: dict = field(default_factory=dict)
    started: float = 0.0

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def to_json(self) -> dict:
        d = asdict(self)
        d["cpu"] = self.cpu
        return d


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(stat[1]), []).append(int(entry.name))
    return kids


TICK = os.sysconf("SC_CLK_TCK")


def tree_sample(pid: int, cpu: dict[int, float] | None = None) -> int:
    """Summed resident set of ``pid`` and all its descendants, bytes (Linux /proc); records each
    process's CPU time (user+sys, s) into ``cpu`` so that workers a pool never reaps still count."""
    kids = _children_map()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * PAGE
            if cpu is not None:
                with open(f"/proc/{p}/stat", "rb") as fh:
                    f = fh.read().rsplit(b")", 1)[1].split()
                cpu[p] = max(cpu.get(p, 0.0), (int(f[11]) + int(f[12])) / TICK)
        except OSError:
            pass
        todo.extend(kids.get(p, ()))
    return total


def read_through(paths: Sequence[str | os.PathLike]) -> None:
    """Read each file to its end (into the page cache). Every tool of a night reads the same raws,
    and the first one used to read them from the disk: the machine drops files untouched for a
    while from its cache (an 8-light night's ingest once took 14 s of a 20.7 s run, its raws not
    read since the previous run 35 min before; Siril, next, found them cached and took 6 s)."""
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as fh:
                while fh.read(1 << 20):
                    pass
        except OSError:
            pass


def run(name: str, cmd: Sequence[str | os.PathLike], *, cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None, timeout: float = 3600.0, tail: int = 15,
        warm: Sequence[str | os.PathLike] = ()) -> Run:
    """Run ``cmd`` to completion and measure it; never raises on a non-zero exit. ``warm``: files
    read once first, so that the tool finds them in the page cache (`read_through`)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"ccdwatch-bench-{os.getpid()}-{name.replace(' ', '_')}.log"
    # write back what earlier tools left dirty (GBs at 4k), so that this one's fsyncs do not
    # queue behind it: a 4k ccdwatch run with 2.3 GB dirty took 29.2 s, after a sync 27.4 s
    os.sync()
    read_through(warm)
    with open(log, "wb") as out:
        t0, started = time.perf_counter(), time.time()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)
        peak = [0]
        done = threading.Event()

        cpu: dict[int, float] = {}

        def sample() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], tree_sample(proc.pid, cpu))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace").splitlines()
    log.unlink(missing_ok=True)
    # CPU of the tree: wait4 counts only descendants that were reaped; the sampled sum of every
    # process seen (own time only) catches pool workers killed without a wait
    sampled = sum(cpu.values())
    user, system = ru.ru_utime, ru.ru_stime
    if sampled > user + system:
        user = sampled - system
    return Run(name=name, wall=wall, user=user, sys=system, maxrss_mb=ru.ru_maxrss / 1024,
               tree_rss_mb=peak[0] / 2**20, returncode=proc.returncode, output="\n".join(text[-tail:]),
               extra={"wait4_cpu": ru.ru_utime + ru.ru_stime, "sampled_tree_cpu": sampled}, started=started)
