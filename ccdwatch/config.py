"""Settings: frozen dataclasses with embedded defaults, loaded once from TOML and passed down.

Every key has a default, so ccdwatch runs with no file at all. A bad or unknown key fails at
start with a :class:`ConfigError` that names the key, what is allowed, and (for typos) the key
that was probably meant. Relative paths in a file are relative to that file's directory; the
embedded defaults are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ccdwatch.config_data import (
    ConfigError,
    OverscanConfig,
    ProductsConfig,
    parse_overscan,
    parse_rules,
    unknown_key,
)
from ccdwatch.detector import DetectorConfig, parse_detector
from ccdwatch.headers import ClassificationRule, night_label
from ccdwatch.headers.cfa import MONO_WORDS, PATTERNS, parse_pattern

__all__ = [
    "CalibrationConfig",
    "ColourConfig",
    "Config",
    "ConfigError",
    "IngestConfig",
    "MastersConfig",
    "NightConfig",
    "OverscanConfig",
    "PathsConfig",
    "ProductsConfig",
    "ReportConfig",
    "SiteConfig",
    "StackConfig",
    "WatchConfig",
    "WorkersConfig",
    "database_url",
    "load_config",
    "site_name",
]

ENV_VAR = "CCDWATCH_CONFIG"


@dataclass(frozen=True)
class PathsConfig:
    incoming: Path = Path("data/incoming")
    """Directory the camera program writes into. ccdwatch only ever reads it."""
    products: Path = Path("data/products")
    """Root of everything ccdwatch writes: masters, calibrated frames, stacks, previews."""
    database: str = "data/ccdwatch.db"
    """SQLAlchemy URL, or a plain path meaning a SQLite file."""
    snapshot: str = ""
    """If set, a read-only copy of the catalogue published every ``watch.snapshot_minutes`` (backup API)."""


@dataclass(frozen=True)
class WatchConfig:
    observer: Literal["inotify", "polling"] = "inotify"
    """``polling`` for network mounts (NFS/SMB), where inotify sees nothing."""
    poll_interval: float = 2.0
    """Seconds between directory polls with the polling observer."""
    settle_seconds: float = 2.0
    """Polling observer, and files found by a scan: a file is ready once its size, mtime and
    inode were stable this long (and its tail is written, see ``fallback_settle_seconds``)."""
    fallback_settle_seconds: float = 300.0
    """inotify observer: a file seen being written is ready at its close-after-write or its
    move into place; only a writer that never closes it (e.g. over a share that gives no close
    event) is waited for this long instead: stable for ``settle_seconds`` and unmodified for
    this long. Also, on every observer, how long after its last modification a file whose last
    2880-byte block is all zero bytes is taken for a preallocated file not written yet.
    Windows/Samba copies and ``rsync --preallocate`` set the final size first and fill it
    later, pausing for seconds to a minute on a busy network; five minutes outlasts such
    pauses, yet is short next to a night (lights wait for their masters anyway). 0 restores
    the settle-time readiness of every file and disables the zero-tail check."""
    rescan_interval: float = 600.0
    """Seconds between safety-net rescans of the whole incoming tree (0 disables)."""
    tick_interval: float = 5.0
    """Seconds between checks for masters to build, lights to calibrate and groups to stack."""
    recursive: bool = True
    min_free_mb: float = 512.0
    """Pause writing products when the products filesystem has less free space than this."""
    pause_retry_seconds: float = 30.0
    """While paused (disk full), try again this often; processing resumes by itself."""
    snapshot_minutes: float = 30.0
    """How often to publish ``paths.snapshot`` (when set)."""


@dataclass(frozen=True)
class IngestConfig:
    max_data_mb: float = 2048.0
    """Largest declared data size (MiB) a raw file may have; larger files are quarantined."""
    allow_compressed: bool = True
    """Read tile-compressed ``.fits.fz`` and gzipped ``.fits.gz`` raw frames (each decompressed within
    max_data_mb, tile by tile with a bound: no decompression bomb); false quarantines them."""
    max_tries: int = 3
    """Attempts at a frame whose processing fails before it is marked failed."""


@dataclass(frozen=True)
class NightConfig:
    timezone: str = "auto"
    """``auto`` (site longitude from the header, else this machine's zone), ``UTC``, an IANA
    name such as ``Europe/London``, or a fixed offset such as ``+02:00``."""
    start_hour: float = 12.0
    """Local hour at which one night's label ends and the next begins."""


@dataclass(frozen=True)
class MastersConfig:
    min_frames: Mapping[str, int] = field(
        default_factory=lambda: types.MappingProxyType({"bias": 3, "dark": 3, "flat": 3})
    )
    """Frames of one calibration key and night needed before a master is built."""
    settle_seconds: float = 60.0
    """Build once no new frame of the key has arrived for this long."""
    bias_method: Literal["sigma_clip", "median", "mean"] = "sigma_clip"
    dark_method: Literal["sigma_clip", "median", "mean"] = "median"
    flat_method: Literal["sigma_clip", "median", "mean"] = "median"
    sigma: float = 3.0
    """Clip limit (robust standard deviations) for sigma_clip."""
    memory_budget_mb: float = 1024.0
    """Working memory for combining frames; larger sets are combined in strips."""
    temperature_tolerance: float = 2.0
    """Darks match a light whose temperature is within this, degC. A frame's temperature is its
    set-point when the measured CCD-TEMP is within this of it, else the measured CCD-TEMP (the
    sensor did not reach its set-point: programs write SET-TEMP whatever the cooler achieved)."""
    max_dark_scale: float = 10.0
    """A light with no master dark as long as its exposure gets a shorter one scaled up at most this
    much (its noise, hot-pixel residuals and bias errors grow as much); beyond, it waits for a dark
    (or, with ``calibration.on_timeout = "partial"``, goes without). 1: never scale a dark up."""
    bias_max_age_days: float = 30.0
    dark_max_age_days: float = 30.0
    flat_max_age_days: float = 14.0
    hot_pixel_sigma: float = 5.0
    """Pixels of a master dark this many robust sigmas above its median are hot."""
    flat_max_level: float = 0.85
    """A flat is rejected whose raw median (any colour's) reaches this fraction of the lights' raw saturation level,"""
    flat_max_saturated: float = 0.01
    """or with more than this fraction of its pixels at that level (`ccdwatch.flatcheck`),"""
    flat_min_signal: float = 1000.0
    """or whose median is less than this many ADU above bias and dark (0: no lower limit)."""
    flat_min_response: float = 0.05
    """Master flat pixels below this fraction of their colour's median are NaN (blank, not x20 in the lights)."""


@dataclass(frozen=True)
class CalibrationConfig:
    recalibrate_on_better_master: bool = True
    """Recalibrate lights when a master that would now be chosen for them appears."""
    max_wait_hours: float = 18.0
    """How long a light may wait for a missing master before on_timeout applies."""
    on_timeout: Literal["wait", "partial"] = "wait"
    """``wait``: keep waiting; ``partial``: calibrate with what exists and flag it partial."""
    cosmic_rays: Literal["fast", "lacosmic", "off"] = "fast"
    """Cosmic rays of each calibrated light, masked (BADPIX bit 8; values kept) and counted:
    ``fast`` (ccdwatch.cosmics, ~tens of ms per 2k frame), ``lacosmic`` (astroscrappy, seconds)."""
    uncertainty: bool = True
    """Write each calibrated light's UNCERT plane (when its gain is known; ~+16 MB per 2k light)."""


@dataclass(frozen=True)
class StackConfig:
    quiet_minutes: float = 20.0
    """A group is complete when none of its frames arrived for this long."""
    min_frames: int = 3
    method: Literal["sigma_clip", "median", "mean"] = "sigma_clip"
    sigma: float = 3.0
    weights: Literal["ivar", "quality", "none"] = "ivar"
    """Frame weights: ``ivar`` 1 / the frame's sky variance, ``quality`` that / FWHM^2, ``none`` equal."""
    pointing_radius_arcmin: float = 10.0
    """Lights whose pointings lie within this radius are one target (of one OBJECT, or without OBJECT)."""
    sequence_gap_minutes: float = 60.0
    """Lights with neither OBJECT nor pointing: a gap longer than this starts a new target."""
    detect_sigma: float = 5.0
    fwhm_mad: float = 5.0
    """Reject frames whose FWHM is this many MADs above the group median."""
    sky_mad: float = 5.0
    min_stars: int = 5
    stars_fraction: float = 0.5
    """Reject frames with fewer stars than this fraction of the group median."""
    elongation_max: float = 2.0
    saturation: float = 0.0
    """Saturation level in ADU for quality metrics; 0 means take SATURATE from the header, else 65000."""
    interpolation: Literal["bilinear", "bicubic", "lanczos"] = "bicubic"
    """How frames are resampled onto the reference (bilinear broadens stars by ~5 %)."""
    normalisation: Literal["scale", "offset"] = "scale"
    """``scale``: frames scaled about their sky to the reference's star fluxes, then offset; ``offset``: offset only."""


@dataclass(frozen=True)
class ReportConfig:
    previews: bool = True
    """Write PNG previews of masters and stacks."""
    light_previews: bool = False
    """Also write a PNG preview of every calibrated light."""
    refresh: bool = True
    """Let the daemon refresh the night report as the night goes on."""


@dataclass(frozen=True)
class ColourConfig:
    bayer_pattern: str = "auto"
    """``auto``: a frame is a colour mosaic when its header says so (BAYERPAT/COLORTYP, with
    XBAYROFF/YBAYROFF, the subframe origin and ROWORDER); ``none``: reduce every frame as
    monochrome; ``RGGB``/``BGGR``/``GRBG``/``GBRG``: every frame is a mosaic of this pattern, as
    BAYERPAT would state it (the header's offsets and row order still apply). Read at ingest."""
    instruments: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    """The same per camera, by INSTRUME (case-insensitive), e.g. ``{"ZWO ASI294MC" = "RGGB"}``;
    wins over ``bayer_pattern``."""
    demosaic: Literal["malvar", "bilinear"] = "malvar"
    """Interpolation of the calibrated mosaics into R, G, B (both linear: star colours kept)."""


@dataclass(frozen=True)
class WorkersConfig:
    processes: int = 2
    """Worker processes for parsing and reduction (0 = in the daemon itself, no isolation)."""
    memory_limit_mb: float = 4096.0
    """Data-size limit (heap and arrays) of each worker: a job estimated to need more is refused, a file
    that needs more fails only its own job."""
    nice: int = 5
    """Extra niceness of the workers, so that the camera software always wins the CPU."""
    ingest_timeout: float = 120.0
    """Seconds a worker may spend reading and checking one raw file."""
    job_timeout: float = 1800.0
    """Seconds a worker may spend on one master, calibration or stack."""
    scheduler: str = ""
    """Address of a Dask scheduler (``tcp://HOST:PORT``) to run the jobs on; empty: the local
    worker processes above. Unreachable at start-up (or lost later): the jobs run on the local
    workers, with a warning, and the scheduler is tried again every ``scheduler_retry`` s."""
    scheduler_retry: float = 60.0
    """Seconds between attempts to reach an unreachable Dask scheduler."""


@dataclass(frozen=True)
class SiteConfig:
    """Which telescope this daemon is, when several share one catalogue."""

    name: str = ""
    """The site/telescope name stored on every frame, master and stack this daemon makes; it
    plans only its own site's frames. Empty: ``<host>/<incoming directory's name>``."""
    share_masters_from: tuple[str, ...] = ()
    """Other sites whose masters may calibrate this site's lights (a camera moved between PCs)."""
    heartbeat_seconds: float = 15.0
    """How often the daemon records that it is alive; one silent for 4x this is taken as gone."""


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    night: NightConfig = field(default_factory=NightConfig)
    masters: MastersConfig = field(default_factory=MastersConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    colour: ColourConfig = field(default_factory=ColourConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    overscan: OverscanConfig = field(default_factory=OverscanConfig)
    products: ProductsConfig = field(default_factory=ProductsConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    classify: tuple[ClassificationRule, ...] = ()
    """Ordered rules for frames whose headers lie or lack a type (first match wins)."""
    source: Path | None = None
    """The file this configuration came from, if any."""

    def with_overrides(
        self,
        *,
        incoming: str | os.PathLike | None = None,
        products: str | os.PathLike | None = None,
        database: str | None = None,
        scheduler: str | None = None,
        site: str | None = None,
    ) -> Config:
        """Return a copy with the command-line overrides applied (relative to the cwd)."""
        cfg = self
        if scheduler is not None:
            cfg = dataclasses.replace(cfg, workers=dataclasses.replace(cfg.workers, scheduler=scheduler))
        if site is not None:
            cfg = dataclasses.replace(cfg, site=dataclasses.replace(cfg.site, name=_site_value("site.name", site)))
        paths = cfg.paths
        if incoming is not None:
            paths = dataclasses.replace(paths, incoming=Path(incoming).absolute())
        if products is not None:
            paths = dataclasses.replace(paths, products=Path(products).absolute())
        if database is not None:
            paths = dataclasses.replace(paths, database=database)
        return dataclasses.replace(cfg, paths=paths)


_SECTIONS: dict[str, type] = {
    "paths": PathsConfig,
    "watch": WatchConfig,
    "ingest": IngestConfig,
    "night": NightConfig,
    "masters": MastersConfig,
    "calibration": CalibrationConfig,
    "stack": StackConfig,
    "report": ReportConfig,
    "workers": WorkersConfig,
    "colour": ColourConfig,
    "site": SiteConfig,
    "products": ProductsConfig,
}


def _convert(key: str, value: Any, hint: Any, base: Path) -> Any:
    """Check and convert one TOML value against a dataclass field's type hint."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"config key {key!r} must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config key {key!r} must be a directory path string, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    raise TypeError(f"no converter for {hint!r} ({key})")  # a programming error, not user input


def _section(name: str, cls: type, table: Any, base: Path) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"config key {name!r} must be a table ([{name}]), got {table!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{name}.{key}"
        if key not in names:
            raise unknown_key(dotted, names)
        if cls is MastersConfig and key == "min_frames":
            kwargs[key] = _min_frames(dotted, value)
        elif cls is ColourConfig and key in ("bayer_pattern", "instruments"):
            kwargs[key] = _bayer(dotted, value)
        elif cls is PathsConfig and key == "database":
            kwargs[key] = _database(dotted, value, base)
        elif cls is SiteConfig and key == "share_masters_from":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"config key {dotted!r} must be a list of site names, got {value!r}")
            kwargs[key] = tuple(_site_value(dotted, v) for v in value)
        elif cls is SiteConfig and key == "name":
            kwargs[key] = _site_value(dotted, value) if value != "" else ""
        elif cls is WorkersConfig and key == "scheduler":
            kwargs[key] = _scheduler(dotted, value)
        elif cls is PathsConfig and key == "snapshot":
            if not isinstance(value, str) or "://" in value:
                raise ConfigError(f"config key {dotted!r} must be a file path (or \"\" for none), got {value!r}")
            kwargs[key] = _database(dotted, value, base) if value else ""
        else:
            kwargs[key] = _convert(dotted, value, hints[key], base)
    section = cls(**kwargs)
    _check_ranges(name, section)
    return section


def _min_frames(key: str, value: Any) -> Mapping[str, int]:
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key!r} must be a table like {{bias = 3, dark = 3, flat = 3}}")
    merged = dict(MastersConfig().min_frames)
    for kind, n in value.items():
        if kind not in merged:
            raise unknown_key(f"{key}.{kind}", merged)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"config key '{key}.{kind}' must be a whole number >= 1, got {n!r}")
        merged[kind] = n
    return types.MappingProxyType(merged)


def _bayer_value(key: str, value: Any) -> str:
    """One Bayer override: "auto", "none" or a pattern, in canonical spelling."""
    if isinstance(value, str) and value.strip().lower() in MONO_WORDS | {"auto"}:
        return "none" if value.strip().lower() in MONO_WORDS else "auto"
    pattern = parse_pattern(value)
    if pattern is None:
        raise ConfigError(f"config key {key!r} must be \"auto\", \"none\" or one of {', '.join(PATTERNS)}, "
                          f"got {value!r}")
    return pattern


def _bayer(key: str, value: Any) -> Any:
    """``colour.bayer_pattern`` (one value) or ``colour.instruments`` (INSTRUME -> value)."""
    if not key.endswith("instruments"):
        return _bayer_value(key, value)
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key!r} must be a table like {{\"ZWO ASI294MC\" = \"RGGB\"}}")
    return types.MappingProxyType({str(name).strip().lower(): _bayer_value(f"{key}.{name}", v)
                                   for name, v in value.items()})


def _database(key: str, value: Any, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config key {key!r} must be a SQLAlchemy URL or a file path, got {value!r}")
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,79}")


def _site_value(key: str, value: Any) -> str:
    if not isinstance(value, str) or not SITE_NAME.fullmatch(value):
        raise ConfigError(f"config key {key!r} must be a site name of 1-80 letters, digits and ._:/@+- "
                          f"(starting with a letter or digit), got {value!r}")
    return value


def _scheduler(key: str, value: Any) -> str:
    if not isinstance(value, str) or (value and "://" not in value):
        raise ConfigError(f"config key {key!r} must be a Dask scheduler address such as "
                          f"'tcp://scheduler.example:8786' (or \"\" for local workers), got {value!r}")
    return value


def site_name(cfg: Config) -> str:
    """This daemon's site: ``[site] name``, else ``<short host name>/<incoming directory's name>``."""
    if cfg.site.name:
        return cfg.site.name
    host = socket.gethostname().split(".")[0] or "localhost"
    derived = f"{host}/{Path(cfg.paths.incoming).absolute().name}"
    cleaned = re.sub(r"[^A-Za-z0-9._:/@+-]", "-", derived).lstrip("._:/@+-") or "site"
    return cleaned[:80]


_POSITIVE = {
    "watch": ("poll_interval", "tick_interval", "snapshot_minutes"),
    "ingest": ("max_data_mb", "max_tries"),
    "workers": ("memory_limit_mb", "ingest_timeout", "job_timeout", "scheduler_retry"),
    "site": ("heartbeat_seconds",),
    "products": ("quantize_level",),
    "masters": ("sigma", "memory_budget_mb", "hot_pixel_sigma"),
    "stack": ("sigma", "quiet_minutes", "detect_sigma", "fwhm_mad", "sky_mad", "elongation_max"),
}
_NON_NEGATIVE = {
    "watch": ("settle_seconds", "fallback_settle_seconds", "rescan_interval", "min_free_mb",
              "pause_retry_seconds"),
    "masters": ("settle_seconds", "temperature_tolerance", "bias_max_age_days", "dark_max_age_days",
                "flat_max_age_days", "flat_min_signal"),
    "calibration": ("max_wait_hours",),
    "workers": ("processes", "nice"),
    "stack": ("pointing_radius_arcmin", "sequence_gap_minutes", "min_stars", "saturation"),
}
_FRACTIONS = {"masters": (("flat_max_level", False, "0.85"), ("flat_max_saturated", True, "0.01"),
                          ("flat_min_response", True, "0.05"))}


def _check_ranges(name: str, section: Any) -> None:
    for key in _POSITIVE.get(name, ()):
        if not getattr(section, key) > 0:  # NaN too
            raise ConfigError(f"config key '{name}.{key}' must be > 0, got {getattr(section, key)!r}")
    for key in _NON_NEGATIVE.get(name, ()):
        if not getattr(section, key) >= 0:
            raise ConfigError(f"config key '{name}.{key}' must be >= 0, got {getattr(section, key)!r}")
    for key, zero_ok, example in _FRACTIONS.get(name, ()):
        value = getattr(section, key)
        if not ((value >= 0 if zero_ok else value > 0) and value <= 1):
            span = "[0, 1]" if zero_ok else "(0, 1]"
            raise ConfigError(f"config key '{name}.{key}' must be a fraction in {span}, got {value!r}; "
                              f"e.g. {key} = {example}")
    if name == "night" and not 0 <= section.start_hour < 24:
        raise ConfigError(f"config key 'night.start_hour' must be in [0, 24), got {section.start_hour!r}")
    if name == "masters" and not section.max_dark_scale >= 1:
        raise ConfigError(f"config key 'masters.max_dark_scale' must be >= 1 (1: never scale a dark up), "
                          f"got {section.max_dark_scale!r}")
    if name == "stack" and section.min_frames < 1:
        raise ConfigError(f"config key 'stack.min_frames' must be >= 1, got {section.min_frames!r}")
    if name == "stack" and not 0 <= section.stars_fraction <= 1:
        raise ConfigError(f"config key 'stack.stars_fraction' must be between 0 and 1, got {section.stars_fraction!r}")
    if name == "calibration" and section.cosmic_rays == "lacosmic" and not _has_module("astroscrappy"):
        raise ConfigError("config key 'calibration.cosmic_rays' = 'lacosmic' needs astroscrappy: "
                          "pip install astroscrappy, or use 'fast'")
    if name == "night":
        try:  # validate the zone name exactly as ingest will use it

            night_label(datetime(2000, 1, 1, tzinfo=UTC), timezone=section.timezone)
        except ValueError as exc:
            raise ConfigError(
                f"config key 'night.timezone': {exc}; use 'auto', 'UTC', an IANA name such as "
                "'Europe/London', or an offset such as '+02:00'"
            ) from None


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def parse_config(data: Mapping[str, Any], *, base: Path, source: Path | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML, resolving relative paths against ``base``."""
    kwargs: dict[str, Any] = {}
    defaults = Config()
    for name, value in data.items():
        if name == "classify":
            kwargs[name] = parse_rules(value)
        elif name == "overscan":
            kwargs[name] = parse_overscan(value)
        elif name == "detector":
            kwargs[name] = parse_detector(value)
        elif name in _SECTIONS:
            kwargs[name] = _section(name, _SECTIONS[name], value, base)
        else:
            raise unknown_key(name, [*_SECTIONS, "classify", "overscan", "detector"])
    if "paths" not in kwargs:
        # Defaults are relative to where the daemon runs, not to the file.
        kwargs["paths"] = defaults.paths
    return Config(**kwargs, source=source)


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load settings from ``path``, else from ``$CCDWATCH_CONFIG``, else the embedded defaults."""
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        return Config()
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    return parse_config(data, base=path.absolute().parent, source=path)


def catalogue_changed_at(database: str) -> float | None:
    """When a SQLite catalogue file (or its write-ahead log) last changed, s since the epoch; None
    for a server's catalogue or a file not there yet (or a URL with options: `catalog.sqlite_path`
    reads every URL, with SQLAlchemy). No SQLAlchemy here: `watch --once` asks before it loads
    any, to know whether the incoming folder changed since the last run."""
    if "://" in database:
        if not database.startswith("sqlite:///"):
            return None
        database = database[len("sqlite:///"):]
    path = Path(database).expanduser()
    times = []
    for candidate in (path, path.with_name(path.name + "-wal")):
        try:
            times.append(candidate.stat().st_mtime)
        except OSError:
            continue
    return max(times) if times else None


def new_files_likely(cfg: Config) -> bool:
    """Whether a `watch --once` will find work in its incoming folder, from a look at its top level
    alone: a FITS name changed since the catalogue last was (any FITS name when there is no
    catalogue file to go by). Frames of nights already reduced do not count: a timer's --once over
    a camera folder that keeps them started the workers' server (~0.8 s of CPU) on every run."""
    from ccdwatch.fitsio.names import any_fits_name

    return any_fits_name(cfg.paths.incoming, changed_after=catalogue_changed_at(cfg.paths.database))


def database_url(database: str) -> str:
    """A SQLAlchemy URL for ``database``: a URL as is, a plain path as a SQLite file URL."""
    if "://" in database:
        return database
    return f"sqlite:///{Path(database).expanduser().absolute()}"
