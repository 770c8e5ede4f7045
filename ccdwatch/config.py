"""Settings: frozen dataclasses with embedded defaults, loaded once from TOML and passed down.

Every key has a default, so ccdwatch runs with no file at all. A bad or unknown key fails at
start with a :class:`ConfigError` that names the key, what is allowed, and (for typos) the key
that was probably meant. Relative paths in a file are relative to that file's directory; the
embedded defaults are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ccdwatch.headers import ClassificationRule, ImageType, night_label

__all__ = [
    "CalibrationConfig",
    "Config",
    "ConfigError",
    "IngestConfig",
    "MastersConfig",
    "NightConfig",
    "PathsConfig",
    "ReportConfig",
    "StackConfig",
    "WatchConfig",
    "WorkersConfig",
    "database_url",
    "load_config",
]

ENV_VAR = "CCDWATCH_CONFIG"


class ConfigError(ValueError):
    """A configuration value that ccdwatch cannot use; the message names the key and the fix."""


@dataclass(frozen=True)
class PathsConfig:
    incoming: Path = Path("data/incoming")
    """Directory the camera program writes into. ccdwatch only ever reads it."""
    products: Path = Path("data/products")
    """Root of everything ccdwatch writes: masters, calibrated frames, stacks, previews."""
    database: str = "data/ccdwatch.db"
    """SQLAlchemy URL, or a plain path meaning a SQLite file."""
    snapshot: str = ""
    """If set, a read-only copy of the SQLite catalogue published here every
    ``watch.snapshot_minutes`` (via the backup API) for readers who cannot write the state dir."""


@dataclass(frozen=True)
class WatchConfig:
    observer: Literal["inotify", "polling"] = "inotify"
    """``polling`` for network mounts (NFS/SMB), where inotify sees nothing."""
    poll_interval: float = 2.0
    """Seconds between directory polls with the polling observer."""
    settle_seconds: float = 2.0
    """A file with no 'closed' event is ready once size and mtime were stable this long."""
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
    allow_compressed: bool = False
    """Accept tile-compressed ``.fz`` and gzipped ``.gz`` FITS (decompressed within max_data_mb)."""
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
    """Darks match a light whose CCD temperature (set-point where present) is within this, degC."""
    bias_max_age_days: float = 30.0
    dark_max_age_days: float = 30.0
    flat_max_age_days: float = 14.0
    hot_pixel_sigma: float = 5.0
    """Pixels of a master dark this many robust sigmas above its median are hot."""


@dataclass(frozen=True)
class CalibrationConfig:
    recalibrate_on_better_master: bool = True
    """Recalibrate lights when a master that would now be chosen for them appears."""
    max_wait_hours: float = 18.0
    """How long a light may wait for a missing master before on_timeout applies."""
    on_timeout: Literal["wait", "partial"] = "wait"
    """``wait``: keep waiting; ``partial``: calibrate with what exists and flag it partial."""


@dataclass(frozen=True)
class StackConfig:
    quiet_minutes: float = 20.0
    """A group is complete when none of its frames arrived for this long."""
    min_frames: int = 3
    method: Literal["sigma_clip", "median", "mean"] = "sigma_clip"
    sigma: float = 3.0
    pointing_radius_arcmin: float = 10.0
    """Lights without OBJECT whose pointings lie within this radius are one target."""
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


@dataclass(frozen=True)
class ReportConfig:
    previews: bool = True
    """Write PNG previews of masters and stacks."""
    light_previews: bool = False
    """Also write a PNG preview of every calibrated light."""
    refresh: bool = True
    """Let the daemon refresh the night report as the night goes on."""


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
    ) -> Config:
        """Return a copy with the command-line overrides applied (relative to the cwd)."""
        paths = self.paths
        if incoming is not None:
            paths = dataclasses.replace(paths, incoming=Path(incoming).absolute())
        if products is not None:
            paths = dataclasses.replace(paths, products=Path(products).absolute())
        if database is not None:
            paths = dataclasses.replace(paths, database=database)
        return dataclasses.replace(self, paths=paths)


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
}
_RULE_KEYS = ("glob", "path", "header", "imagetyp", "filter", "object")
_IMAGE_TYPES = [t.value for t in ImageType if t is not ImageType.UNKNOWN] + ["ignore"]


def _unknown(key: str, allowed: typing.Iterable[str]) -> ConfigError:
    allowed = sorted(allowed)
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, allowed, n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; allowed here: {', '.join(allowed)}")


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
            raise _unknown(dotted, names)
        if cls is MastersConfig and key == "min_frames":
            kwargs[key] = _min_frames(dotted, value)
        elif cls is PathsConfig and key == "database":
            kwargs[key] = _database(dotted, value, base)
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
            raise _unknown(f"{key}.{kind}", merged)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"config key '{key}.{kind}' must be a whole number >= 1, got {n!r}")
        merged[kind] = n
    return types.MappingProxyType(merged)


def _database(key: str, value: Any, base: Path) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config key {key!r} must be a SQLAlchemy URL or a file path, got {value!r}")
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


_POSITIVE = {
    "watch": ("poll_interval", "tick_interval", "snapshot_minutes"),
    "ingest": ("max_data_mb", "max_tries"),
    "workers": ("memory_limit_mb", "ingest_timeout", "job_timeout"),
    "masters": ("sigma", "memory_budget_mb", "hot_pixel_sigma"),
    "stack": ("sigma", "quiet_minutes", "detect_sigma", "fwhm_mad", "sky_mad", "elongation_max"),
}
_NON_NEGATIVE = {
    "watch": ("settle_seconds", "rescan_interval", "min_free_mb", "pause_retry_seconds"),
    "masters": (
        "settle_seconds",
        "temperature_tolerance",
        "bias_max_age_days",
        "dark_max_age_days",
        "flat_max_age_days",
    ),
    "calibration": ("max_wait_hours",),
    "workers": ("processes", "nice"),
    "stack": ("pointing_radius_arcmin", "sequence_gap_minutes", "min_stars", "saturation"),
}


def _check_ranges(name: str, section: Any) -> None:
    for key in _POSITIVE.get(name, ()):
        if getattr(section, key) <= 0:
            raise ConfigError(f"config key '{name}.{key}' must be > 0, got {getattr(section, key)!r}")
    for key in _NON_NEGATIVE.get(name, ()):
        if getattr(section, key) < 0:
            raise ConfigError(f"config key '{name}.{key}' must be >= 0, got {getattr(section, key)!r}")
    if name == "night" and not 0 <= section.start_hour < 24:
        raise ConfigError(f"config key 'night.start_hour' must be in [0, 24), got {section.start_hour!r}")
    if name == "stack" and section.min_frames < 1:
        raise ConfigError(f"config key 'stack.min_frames' must be >= 1, got {section.min_frames!r}")
    if name == "stack" and not 0 <= section.stars_fraction <= 1:
        raise ConfigError(
            f"config key 'stack.stars_fraction' must be between 0 and 1, got {section.stars_fraction!r}"
        )
    if name == "night":
        try:  # validate the zone name exactly as ingest will use it

            night_label(datetime(2000, 1, 1, tzinfo=UTC), timezone=section.timezone)
        except ValueError as exc:
            raise ConfigError(
                f"config key 'night.timezone': {exc}; use 'auto', 'UTC', an IANA name such as "
                "'Europe/London', or an offset such as '+02:00'"
            ) from None


def _rules(value: Any) -> tuple[ClassificationRule, ...]:
    if not isinstance(value, list):
        raise ConfigError("config key 'classify' must be an array of tables ([[classify]] blocks)")
    rules = []
    for i, table in enumerate(value, start=1):
        key = f"classify[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"config key {key!r} must be a table with keys {', '.join(_RULE_KEYS)}")
        for k in table:
            if k not in _RULE_KEYS:
                raise _unknown(f"{key}.{k}", _RULE_KEYS)
        header = table.get("header", {})
        if not isinstance(header, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in header.items()
        ):
            raise ConfigError(
                f"config key '{key}.header' must be a table of KEYWORD = \"pattern\" strings, "
                f"e.g. header = {{IMAGETYP = \"*flat*\"}}"
            )
        imagetyp = table.get("imagetyp")
        if imagetyp is not None:
            if not isinstance(imagetyp, str) or imagetyp.lower() not in _IMAGE_TYPES:
                raise ConfigError(
                    f"config key '{key}.imagetyp' must be one of {', '.join(_IMAGE_TYPES)}, got {imagetyp!r}"
                )
            imagetyp = imagetyp.lower()
        for k in ("glob", "path", "filter", "object"):
            if k in table and not isinstance(table[k], str):
                raise ConfigError(f"config key '{key}.{k}' must be a string, got {table[k]!r}")
        try:
            rules.append(
                ClassificationRule(
                    glob=table.get("glob"),
                    path=table.get("path"),
                    header={k.upper(): v for k, v in header.items()},
                    imagetyp=imagetyp,
                    filter=table.get("filter"),
                    object=table.get("object"),
                )
            )
        except ValueError as exc:
            raise ConfigError(f"config key {key!r}: {exc}") from None
    return tuple(rules)


def parse_config(data: Mapping[str, Any], *, base: Path, source: Path | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML, resolving relative paths against ``base``."""
    kwargs: dict[str, Any] = {}
    defaults = Config()
    for name, value in data.items():
        if name == "classify":
            kwargs[name] = _rules(value)
        elif name in _SECTIONS:
            kwargs[name] = _section(name, _SECTIONS[name], value, base)
        else:
            raise _unknown(name, [*_SECTIONS, "classify"])
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


def database_url(database: str) -> str:
    """A SQLAlchemy URL for ``database``: a URL as is, a plain path as a SQLite file URL."""
    if "://" in database:
        return database
    return f"sqlite:///{Path(database).expanduser().absolute()}"
