"""``ccdwatch demo``: a simulated camera night for someone trying ccdwatch for the first time.

A background thread plays the camera: biases and darks at dusk, lights of a star cluster in two
filters with dithers (the seeing wanders, the sky brightens as the moon rises, a cloud passes
and a satellite crosses), and flats at dawn. Each frame appears in the incoming directory when its
exposure would have ended, time running ``speed`` times faster than real, and is written the way
camera programs write: half of them to a temp name then renamed into place, the other half in
chunks into the final name and then closed. Meanwhile the main thread runs the ordinary daemon
loop (:meth:`ccdwatch.daemon.watch.Watcher.run`) on that directory. When the camera is done the daemon
finishes the night and the night report is written.

The frames come from :mod:`ccdwatch.synth`; nothing here simulates a detector of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ccdwatch import synth
from ccdwatch.config import Config, ConfigError

if TYPE_CHECKING:
    from ccdwatch.catalog import Catalog
    from ccdwatch.daemon.watch import Watcher

logger = logging.getLogger(__name__)

__all__ = ["DEMO_CAMERA", "DemoResult", "Shot", "plan_night", "run_demo", "write_like_a_camera"]

#: The demo's camera: small enough to reduce in a blink, big enough to look like a sky.
DEMO_CAMERA = synth.Camera(shape=(360, 540), read_noise=7.0, gain=1.4, dark_current=0.03,
                           instrument="ccdwatch demo camera", seed=2024)
#: Seconds between the end of one exposure and the start of the next (readout, download, dither).
OVERHEAD = 6.0
#: Longest real pause for the hours between the last light and dawn, s.
MAX_NIGHT_PAUSE = 2.0


@dataclass(frozen=True)
class Shot:
    """One exposure of the simulated night.

    Attributes
    ----------
    kind : str
        bias, dark, flat or light.
    name : str
        File name (``.fits``).
    exptime : float
        Exposure time, s.
    date_obs : datetime
        Start of the exposure (aware, UTC).
    filter : str or None
    ccd_temp : float
        CCD temperature written to the header, degC.
    sky : float
        Sky background, ADU/s/pixel (lights).
    fwhm : float
        Seeing, px (lights).
    transparency : float
        Fraction of the starlight that gets through (a cloud makes it small).
    dx, dy, rotation : float
        Pointing offset of this light from the first (px, px, deg).
    satellite : bool
        A satellite crosses during this exposure.
    """

    kind: str
    name: str
    exptime: float
    date_obs: datetime
    filter: str | None = None
    ccd_temp: float = -15.0
    sky: float = 0.0
    fwhm: float = 2.8
    transparency: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    rotation: float = 0.0
    satellite: bool = False

    @property
    def end(self) -> datetime:
        return self.date_obs + timedelta(seconds=self.exptime)


def plan_night(
    start: datetime,
    *,
    n_lights: int = 8,
    n_bias: int = 5,
    n_dark: int = 5,
    n_flat: int = 5,
    filters: tuple[str, ...] = ("V", "R"),
    light_exptime: float = 120.0,
    flat_exptime: float = 3.0,
    target: str = "M67",
    set_temp: float = -15.0,
    rng: np.random.Generator,
) -> list[Shot]:
    """The observing plan: what the camera takes, when, under what sky. Pure.

    Dusk: ``n_bias`` biases and ``n_dark`` darks of ``light_exptime`` from ``start``. Then
    ``n_lights`` lights per filter, one filter after the other, each dithered by up to 6 px; the
    seeing wanders around 2.8 px, the sky brightens towards the end (moonrise), and with at least
    5 lights per filter a passing cloud spoils one light of the first filter and a satellite
    crosses one of the second. Dawn: ``n_flat`` flats per filter 10 h after ``start``.
    """
    shots: list[Shot] = []
    clock = start

    def temp() -> float:
        return round(set_temp + float(rng.normal(0.0, 0.05)), 2)

    for i in range(n_bias):
        shots.append(Shot("bias", f"bias_{i + 1:03d}.fits", 0.0, clock, ccd_temp=temp()))
        clock += timedelta(seconds=OVERHEAD)
    for i in range(n_dark):
        shots.append(Shot("dark", f"dark_{light_exptime:g}s_{i + 1:03d}.fits", light_exptime, clock, ccd_temp=temp()))
        clock += timedelta(seconds=light_exptime + OVERHEAD)
    total = n_lights * len(filters)
    k = 0
    for fi, filt in enumerate(filters):
        for i in range(n_lights):
            frac = k / max(total - 1, 1)
            first = k == 0
            cloud = n_lights >= 5 and fi == 0 and i == n_lights // 2  # moonlit: dims the stars, brightens the sky
            shots.append(Shot(
                "light", f"{target}_{filt}_{i + 1:03d}.fits", light_exptime, clock, filter=filt, ccd_temp=temp(),
                sky=2.0 * (1.0 + 1.5 * frac**2) * (3.0 if cloud else 1.0),
                fwhm=float(2.8 + 0.35 * math.sin(2.0 * math.pi * frac) + rng.normal(0.0, 0.08)),
                transparency=0.05 if cloud else 1.0,
                dx=0.0 if first else float(rng.uniform(-6.0, 6.0)),
                dy=0.0 if first else float(rng.uniform(-6.0, 6.0)),
                rotation=0.0 if first else float(rng.uniform(-0.1, 0.1)),
                satellite=n_lights >= 5 and fi == 1 and i == 1,
            ))
            clock += timedelta(seconds=light_exptime + OVERHEAD)
            k += 1
    clock = max(clock, start + timedelta(hours=10))
    for filt in filters:
        for i in range(n_flat):
            shots.append(Shot("flat", f"flat_{filt}_{i + 1:03d}.fits", flat_exptime, clock, filter=filt,
                              ccd_temp=temp()))
            clock += timedelta(seconds=flat_exptime + OVERHEAD)
    return shots


def cluster_field(shape: tuple[int, int], *, rng: np.random.Generator) -> synth.Stars:
    """A star cluster on a field of stars: a uniform field plus a concentrated core, flux in ADU/s."""
    ny, nx = shape
    scale = min(ny, nx) / 360.0
    field_stars = synth.star_field(shape, max(20, round(110 * scale**2)), rng=rng, flux_range=(15.0, 1500.0))
    n = max(10, round(90 * scale**2))
    margin = 20
    x = np.clip(rng.normal((nx - 1) / 2, 0.14 * nx, n), margin, nx - 1 - margin)
    y = np.clip(rng.normal((ny - 1) / 2, 0.14 * ny, n), margin, ny - 1 - margin)
    flux = np.exp(rng.uniform(math.log(30.0), math.log(2500.0), n))
    return synth.Stars(x=np.concatenate([field_stars.x, x]), y=np.concatenate([field_stars.y, y]),
                       flux=np.concatenate([field_stars.flux, flux]), shape=(int(ny), int(nx)))


def exposure(camera: synth.Camera, shot: Shot, stars: synth.Stars, *, target: str,
             rng: np.random.Generator) -> tuple[np.ndarray, dict[str, object]]:
    """Pixels (uint16) and header of one shot, from :mod:`ccdwatch.synth`."""
    kwargs: dict[str, Any] = {}
    if shot.kind == "light":
        moved = synth.transform_stars(stars, dx=shot.dx, dy=shot.dy, rotation_deg=shot.rotation)
        moved = dataclasses.replace(moved, flux=moved.flux * shot.transparency)
        kwargs = {"sky": shot.sky, "stars": moved, "fwhm": shot.fwhm, "cosmic_rays": 4, "satellite": shot.satellite}
    elif shot.kind == "flat":
        kwargs = {"flat_level": float(rng.uniform(18000.0, 26000.0))}
    elif shot.kind == "dark":
        kwargs = {"cosmic_rays": 4}
    adu = synth.expose(camera, kind=shot.kind, exptime=shot.exptime, rng=rng, **kwargs)
    cards: dict[str, Any] = {"CCD-TEMP": shot.ccd_temp, "SET-TEMP": -15.0, "TELESCOP": "ccdwatch demo telescope"}
    header = synth.frame_header(
        camera, kind=shot.kind, exptime=shot.exptime, date_obs=shot.date_obs, filter=shot.filter,
        object=target if shot.kind == "light" else None, style="maxim", **cards,
    )
    return synth.quantise(adu, saturation=camera.saturation), header


def write_like_a_camera(path: Path, data: np.ndarray, header: dict[str, object], *, method: str,
                        staging: Path, chunk_pause: float = 0.0, chunks: int = 4) -> Path:
    """Put one frame into ``path`` the way acquisition programs do.

    ``method="rename"``: write ``<name>.tmp`` beside it, then rename into place (one atomic
    appearance). ``method="chunks"``: open the final name and write it in ``chunks`` pieces with
    ``chunk_pause`` seconds between them, then close (the daemon sees a growing file first).
    """
    if method == "rename":
        tmp = path.with_name(path.name + ".tmp")
        synth.write_fits(tmp, data, header)
        os.replace(tmp, path)
        return path
    if method != "chunks":
        raise ValueError(f"method must be 'rename' or 'chunks', got {method!r}")
    staged = synth.write_fits(staging / path.name, data, header)
    payload = staged.read_bytes()
    staged.unlink()
    step = math.ceil(len(payload) / chunks)
    with open(path, "wb") as fh:
        for i in range(0, len(payload), step):
            fh.write(payload[i:i + step])
            fh.flush()
            if chunk_pause and i + step < len(payload):
                time.sleep(chunk_pause)
    return path


def _night_start(cfg: Config, now: datetime) -> datetime:
    """The evening of the last complete night: a start whose dawn flats fall in the same night label."""
    from ccdwatch.headers import night_label

    t = (now - timedelta(hours=12)).replace(minute=0, second=0, microsecond=0)
    for _ in range(48):
        a = night_label(t, timezone=cfg.night.timezone, night_start_hour=cfg.night.start_hour)
        b = night_label(t + timedelta(hours=10, minutes=30), timezone=cfg.night.timezone,
                        night_start_hour=cfg.night.start_hour)
        if a == b:
            return t
        t -= timedelta(hours=1)
    return t


@dataclass
class DemoResult:
    """What the demo did."""

    directory: Path
    written: list[Path] = field(default_factory=list)
    night: str | None = None
    report: Path | None = None
    interrupted: bool = False
    error: BaseException | None = None


def demo_config(cfg: Config, *, directory: Path, speed: float) -> Config:
    """``cfg`` with the incoming directory set and the daemon's waiting times scaled by ``speed``."""
    cfg = cfg.with_overrides(incoming=directory)
    return dataclasses.replace(
        cfg,
        watch=dataclasses.replace(cfg.watch, settle_seconds=min(cfg.watch.settle_seconds, 1.0),
                                  tick_interval=min(cfg.watch.tick_interval, 1.0)),
        masters=dataclasses.replace(cfg.masters, settle_seconds=cfg.masters.settle_seconds / speed),
        stack=dataclasses.replace(cfg.stack, quiet_minutes=cfg.stack.quiet_minutes / speed),
    )


def _demo_paths(cfg: Config, directory: str | os.PathLike | None, *, speed: float,
                n_lights: int) -> tuple[Path, Path]:
    """The camera's directory and the products directory, after checking the demo's arguments."""
    if not speed > 0:
        raise ConfigError(f"demo --speed must be > 0, got {speed!r}")
    if n_lights < 1:
        raise ConfigError(f"demo --frames must be >= 1, got {n_lights!r}")
    root = Path(directory if directory is not None else cfg.paths.incoming).absolute()
    products = Path(cfg.paths.products).absolute()
    if products == root or root in products.parents:
        raise ConfigError(f"the products directory {products} lies inside the camera directory {root}; "
                          "choose --products outside it")
    return root, products


def _announce(say: Callable[[str], None], cfg: Config, *, camera: synth.Camera, speed: float, target_dir: Path,
              products: Path, shots: list[Shot]) -> None:
    """Narrate what the demo is about to do."""
    say(f"ccdwatch demo: one night of a {camera.shape[1]}x{camera.shape[0]} camera, {speed:g}x faster than real time")
    say(f"  camera writes into  {target_dir}")
    say(f"  products go to      {products}")
    say(f"  catalogue           {cfg.paths.database}")
    say(f"  {len(shots)} frames over about {_busy_seconds(shots) / speed:.0f} s (the dark hours before dawn are "
        "skipped); then the daemon finishes the night and writes the report")


def _wait_for_daemon(watcher: Watcher, abort: threading.Event) -> None:
    """Let the daemon catch up with the last frames (at most 60 s) before its loop is stopped."""
    deadline = time.monotonic() + 60.0
    calm = 0
    while time.monotonic() < deadline and not abort.is_set():
        busy = bool(watcher.ready or watcher.pending or not watcher.q.empty())
        calm = 0 if busy else calm + 1
        if calm >= 3:
            break
        time.sleep(0.3)


def _camera_thread(play: Callable[[], None], watcher: Watcher, abort: threading.Event, result: DemoResult) -> None:
    """The camera's thread: ``play`` the night, let the daemon catch up, then stop its loop.

    An exception is kept in ``result.error`` for the main thread.
    """
    try:
        play()
        _wait_for_daemon(watcher, abort)
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        result.error = exc
    finally:
        watcher.stop_event.set()


def _run_camera_and_daemon(play: Callable[[], None], watcher: Watcher, abort: threading.Event,
                           result: DemoResult) -> bool:
    """Run the daemon loop while a thread plays the camera; True when Ctrl-C or SIGTERM stopped the demo.

    Raises the camera thread's exception, or RuntimeError when the daemon loop failed.
    """
    interrupted = threading.Event()
    old_handlers = _catch_signals(interrupted, abort, watcher.stop_event)
    writer = threading.Thread(target=_camera_thread, args=(play, watcher, abort, result), name="demo-camera",
                              daemon=True)
    try:
        writer.start()
        code = watcher.run()
    finally:
        if interrupted.is_set() or writer.is_alive() and watcher.stop_event.is_set():
            abort.set()
        writer.join(timeout=30)
        abort.set()
        _restore_signals(old_handlers)
    if result.error is not None:
        raise result.error
    if code != 0:
        raise RuntimeError(f"the daemon loop stopped with exit code {code}")
    return interrupted.is_set()


def _catalogued_night(catalog: Catalog, target_dir: Path) -> tuple[str | None, str]:
    """The night the demo's lights were filed under (None if none was) and a one-line summary of it."""
    from ccdwatch.catalog import summary

    with catalog.reader() as s:
        night = summary.latest_light_night(s, str(target_dir) + os.sep)
        if night is None:
            return None, ""
        states = summary.night_state_counts(s, night)
        n_masters = summary.master_count(s, night)
        n_stacks = summary.current_stack_count(s, night)
    return night, (f"night {night}: " + ", ".join(f"{n} {k}" for k, n in sorted(states.items()))
                   + f"; {n_masters} masters, {n_stacks} stacks")


def run_demo(

    cfg: Config,
    *,
    directory: str | os.PathLike | None = None,
    speed: float = 60.0,
    n_lights: int = 8,
    camera: synth.Camera = DEMO_CAMERA,
    seed: int = 0,
    say: Callable[[str], None] = lambda text: None,
    now: datetime | None = None,
) -> DemoResult:
    """Simulate a night into ``directory`` while the daemon reduces it; end with the night report.

    Parameters
    ----------
    cfg : Config
        Settings; products and catalogue are taken from here.
    directory : path-like, optional
        The camera's directory (default ``cfg.paths.incoming``). Frames go into a new
        ``demo-<time>`` folder inside it (directly into it if ``watch.recursive`` is off).
    speed : float
        How many times faster than real time the camera runs (> 0).
    n_lights : int
        Lights per filter (>= 1).
    camera : synth.Camera
        The simulated camera.
    seed : int
        Seed of everything random, so two demos with the same seed take the same pictures.
    say : callable
        Receives one line of narration per event (the CLI prints them).
    now : datetime, optional
        Wall-clock time the night is placed before (default: now).
    """
    from ccdwatch.catalog import Catalog
    from ccdwatch.daemon.watch import Watcher
    from ccdwatch.pipeline import Pipeline
    from ccdwatch.report import build_report

    root, products = _demo_paths(cfg, directory, speed=speed, n_lights=n_lights)
    cfg = demo_config(cfg, directory=root, speed=speed)
    now = now or datetime.now(UTC)
    target_dir = root / f"demo-{now:%Y%m%d-%H%M%S}" if cfg.watch.recursive else root
    target_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = _night_start(cfg, now)
    shots = plan_night(start, n_lights=n_lights, rng=rng)
    stars = cluster_field(camera.shape, rng=rng)
    result = DemoResult(directory=target_dir)
    _announce(say, cfg, camera=camera, speed=speed, target_dir=target_dir, products=products, shots=shots)

    abort = threading.Event()
    with Catalog(cfg.paths.database, writer=True) as catalog:
        pipeline = Pipeline(cfg, catalog)
        watcher = Watcher(cfg, pipeline, progress=False)
        play = functools.partial(_play, shots, stars, camera=camera, speed=speed, target_dir=target_dir, rng=rng,
                                 abort=abort, written=result.written, say=say)
        if _run_camera_and_daemon(play, watcher, abort, result):
            result.interrupted = True
            say("demo interrupted; what was written so far is catalogued")
            return result

        say("dawn: the camera is done; the daemon finishes the night (masters, calibration, stacks)")
        Watcher(cfg, pipeline, progress=False).run_once()
        night, summary_line = _catalogued_night(catalog, target_dir)
        result.night = night
        if night is None:
            say("no light frame was catalogued, so there is no night to report")
            return result
        say(summary_line)
        result.report = build_report(cfg, catalog, night)
    say(f"night report: {result.report}")
    say(f"open it in a browser, e.g.  xdg-open {result.report}")
    return result


def _busy_seconds(shots: list[Shot]) -> float:
    """Camera time the demo actually waits for (the hours of darkness before dawn are skipped)."""
    return sum(s.exptime + OVERHEAD for s in shots)


def _play(shots: list[Shot], stars: synth.Stars, *, camera: synth.Camera, speed: float, target_dir: Path,
          rng: np.random.Generator, abort: threading.Event, written: list[Path], say: Callable[[str], None]) -> None:
    """The camera: wait for each exposure (scaled), then write the frame."""
    announced: set[str] = set()
    t0 = time.monotonic()
    due = 0.0  # real seconds since t0 at which the next frame is ready
    previous_end: datetime | None = None
    with tempfile.TemporaryDirectory(prefix="ccdwatch-demo-") as staging:
        for i, shot in enumerate(shots):
            if shot.kind not in announced:
                announced.add(shot.kind)
                say({"bias": "dusk: bias frames", "dark": "dusk: dark frames, shutter closed",
                     "light": "night: lights, dithering between exposures",
                     "flat": "dawn: twilight flats"}[shot.kind])
            gap = 0.0 if previous_end is None else (shot.date_obs - previous_end).total_seconds()
            pause = min(gap / speed, MAX_NIGHT_PAUSE) if gap > 3600 else gap / speed
            due += pause + (shot.exptime + (OVERHEAD if gap <= 3600 else 0.0)) / speed
            previous_end = shot.end
            while not abort.is_set() and time.monotonic() - t0 < due:
                abort.wait(min(0.2, max(0.0, due - (time.monotonic() - t0))))
            if abort.is_set():
                return
            data, header = exposure(camera, shot, stars, target="M67", rng=rng)
            method = "rename" if i % 2 == 0 else "chunks"
            path = write_like_a_camera(target_dir / shot.name, data, header, method=method, staging=Path(staging),
                                       chunk_pause=min(0.05, OVERHEAD / speed / 4))
            written.append(path)
            extra = ""
            if shot.kind == "light":
                extra = f" {shot.filter} seeing {shot.fwhm:.1f} px"
                extra += " (a cloud passes)" if shot.transparency < 0.5 else ""
                extra += " (a satellite crosses)" if shot.satellite else ""
            say(f"  {shot.date_obs:%H:%M:%S} UTC  {shot.name:<22s} {shot.exptime:>5g} s{extra}")


def _catch_signals(*events: threading.Event) -> dict[int, object]:
    """Ctrl-C / SIGTERM set ``events`` (main thread only); returns the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: object) -> None:
        logger.info("received %s, stopping the demo", signal.Signals(signum).name)
        for e in events:
            e.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(old: dict[int, object]) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


#: Where the demo plays its night when no products directory or catalogue is named.
DEMO_HOME = "ccdwatch-demo"


def own_paths(cfg: Config, args: argparse.Namespace) -> tuple[Config, str | None]:
    """The demo's own directory (camera, products, catalogue) unless the user named where to write:
    a demo never fills the user's catalogue unless told to (--products/--db, or a config file)."""
    told = any(getattr(args, name, None) for name in ("products", "db", "config")) \
        or os.environ.get("CCDWATCH_CONFIG")
    if told:
        return cfg, args.dir
    home = Path(args.dir or DEMO_HOME).absolute()
    paths = dataclasses.replace(cfg.paths, incoming=home / "camera", products=home / "products",
                                database=str(home / "ccdwatch.db"))
    return dataclasses.replace(cfg, paths=paths), str(home / "camera")


def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    cfg, directory = own_paths(cfg, args)
    result = run_demo(cfg, directory=directory, speed=args.speed, n_lights=args.frames, seed=args.seed, say=print)
    if result.interrupted:
        return 130
    return 0 if result.report is not None else 1
