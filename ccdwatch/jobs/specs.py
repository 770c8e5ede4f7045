"""The jobs' specs and results, and references to the jobs themselves: what the daemon sends to
the workers and gets back.

Kept apart from `ccdwatch.jobs.tasks` (numpy, astropy, sep, OpenCV, matplotlib: ~0.5 s to import)
so that the daemon plans and runs jobs without importing the numerics itself: at start-up its
first jobs then wait only for the workers' fork server, not also for its own imports of what the
workers already hold. A result naming a numeric type (`ccdwatch.qa.FrameQuality`) imports its
module when it is unpickled, after the start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ccdwatch.detector import NoiseSpec
from ccdwatch.headers import ClassificationRule, FrameInfo, OverscanRules
from ccdwatch.headers.sections import OverscanPlan

if TYPE_CHECKING:
    from ccdwatch.fitsio.compress import Compression
    from ccdwatch.qa import FrameQuality


@dataclass(frozen=True)
class Job:
    """A job of `ccdwatch.jobs.tasks` by name: called in a worker, it imports the jobs' module there
    (the fork server's preload already has it) and runs the job; pickled as its name."""

    name: str

    @property
    def __name__(self) -> str:  # noqa: A003 - what the pool's messages call a job by
        return self.name

    def __call__(self, spec: Any) -> Any:
        return getattr(importlib.import_module("ccdwatch.jobs.tasks"), self.name)(spec)


INGEST = Job("ingest")
BUILD_MASTER = Job("build_master")
CALIBRATE_LIGHT = Job("calibrate_light")
STACK_GROUP = Job("stack_group")


@dataclass(frozen=True)
class IngestSpec:
    path: str
    max_data_bytes: int
    allow_compressed: bool
    rules: tuple[ClassificationRule, ...]
    timezone: str
    night_start_hour: float
    relpath: str = ""
    """The path below the incoming directory: its folder and file names are type evidence."""
    unwritten_grace: float = 0.0  # s: see read_raw
    now: float | None = None  # s since the epoch, the daemon's clock when the job was planned
    bayer_pattern: str = "auto"
    bayer_instruments: tuple[tuple[str, str], ...] = ()
    """Configured Bayer overrides (``colour.bayer_pattern``, ``colour.instruments``)."""
    overscan: OverscanRules | None = None
    """``[overscan]``: where a frame's overscan and data sections come from."""
    setpoint_tolerance: float = 2.0
    """``masters.temperature_tolerance``: a CCD-TEMP this far from SET-TEMP is warned about."""


@dataclass(frozen=True)
class IngestResult:
    sha256: str
    size: int
    mtime_ns: int
    inode: int
    hdu_index: int
    info: FrameInfo
    header: dict[str, Any]
    pixels: dict[str, Any] | None = None
    """The pixel statistics classification used (kept: a frame is reclassified without a re-read)."""


@dataclass(frozen=True)
class FlatLimits:
    """``[masters]`` ``flat_max_level``, ``flat_max_saturated``, ``flat_min_signal``: the levels a
    flat input must keep to (`ccdwatch.flatcheck.judge`)."""

    max_level: float
    max_saturated: float
    min_signal: float


@dataclass(frozen=True)
class MasterSpec:
    kind: str
    frames: tuple[tuple[tuple[str, ...], str], ...]  # (paths, sha256) per input frame
    bias_path: str | None
    dark_path: str | None
    dark_scale: float | None
    method: str
    sigma: float
    memory_budget: int
    hot_pixel_sigma: float
    out_path: str
    header: dict[str, Any]
    inputs_table: tuple[tuple[str, str], ...]  # (raw file name, raw sha256) per input, in combination order
    workdir: str
    max_data_bytes: int
    allow_compressed: bool
    preview_path: str | None
    preview_title: str
    min_free_bytes: int = 0
    threads: int = 1  # threads for the combination (cores the pool would otherwise leave idle)
    bayer_pattern: str | None = None  # a colour mosaic's pattern: flats normalised colour by colour
    shape: tuple[int, int, int] | None = None
    """(ny, nx, BITPIX) of the inputs, from the catalogue: what the job's memory need is estimated
    from (`ccdwatch.jobs.memory`) before it runs."""
    overscan: OverscanPlan | None = None
    """The inputs' overscan plan (one: it is part of their calibration key)."""
    compression: Compression | None = None  # [products] compress
    measure_gain: bool = True  # a flat: its gain by photon transfer (detector.gain_from_flats != "off")
    saturation: float | None = None
    """A flat's: the raw saturation level from its header or the config, as a light's
    (`ccdwatch.pipeline.calibrate.saturation`); None: found in each input's pixels."""
    flat_limits: FlatLimits | None = None
    """A flat's: the levels its inputs must keep to; None: every input is used."""
    min_frames: int = 1
    """Inputs left after rejection below which no master is built."""
    flat_floor: float = 0.0
    """A flat's ``masters.flat_min_response``: master pixels below it (relative) are NaN."""
    checksums: dict[str, str] = field(default_factory=dict)
    """Path -> catalogued SHA-256 of the masters it is built on, checked as they are read
    (`ccdwatch.jobs.tasks.load_master`)."""


@dataclass(frozen=True)
class MasterResult:
    sha256: str | None
    """None: no master was written (too few inputs were left, see ``rejected``)."""
    mean: float
    noise: float
    hot_pixels: int | None
    preview_path: str | None
    overscan_levels: tuple[float | None, ...] = ()
    """The overscan level subtracted from each input, in ``frames`` order (empty without a plan)."""
    gain: tuple[float, float] | None = None  # a flat's measured gain and its standard error, e-/ADU
    rejected: tuple[tuple[int, str], ...] = ()
    """(index in ``frames``, reason) of the inputs left out of the master (a flat's level)."""


@dataclass(frozen=True)
class CalibrateSpec:
    frame_id: int
    raw_paths: tuple[str, ...]
    raw_sha256: str
    bias_path: str | None
    dark_path: str | None
    dark_scale: float
    flat_path: str | None
    out_path: str
    header: dict[str, Any]
    saturation: float | None
    detect_sigma: float
    max_data_bytes: int
    allow_compressed: bool
    preview_path: str | None = None
    min_free_bytes: int = 0
    bayer_pattern: str | None = None  # a colour mosaic: calibrated as such, measured on its luminance
    demosaic: str = "malvar"
    shape: tuple[int, int, int] | None = None
    """(ny, nx, BITPIX) of the light, from the catalogue (`ccdwatch.jobs.memory`)."""
    cosmic_rays: str = "fast"  # `ccdwatch.cosmics.METHODS`
    overscan: OverscanPlan | None = None
    """The light's overscan plan (its masters were made with the same: the camera key holds it)."""
    compression: Compression | None = None  # [products] compress
    noise: NoiseSpec | None = None  # gain and read noise: units, the UNCERT plane, cosmic rays
    sync: bool = True  # False: the product is not waited on to reach the disk (`ccdwatch.pipeline.durability`)
    checksums: dict[str, str] = field(default_factory=dict)
    """Path -> catalogued SHA-256 of its masters, checked as they are read (`ccdwatch.jobs.tasks.load_master`)."""


@dataclass(frozen=True)
class CalibrateResult:
    frame_id: int
    sha256: str
    quality: FrameQuality
    saturation: float
    saturated_fraction: float
    nonfinite: int = 0
    """Raw pixels that were NaN or infinite: NaN (missing) in the calibrated frame, kept out of
    the quality measurement and of any stack."""
    cosmic_rays: int | None = None
    """Cosmic-ray hits masked (None: not looked for)."""
    overscan_level: float | None = None
    """The overscan level subtracted (ADU), None without an overscan strip."""


@dataclass(frozen=True)
class StackSpec:
    products: dict[int, str]  # frame id -> calibrated product path
    reference: int
    method: str
    sigma: float
    memory_budget: int
    workdir: str
    out_path: str
    header: dict[str, Any]
    members: tuple[tuple[int, str, float], ...]  # every member: (frame id, product sha256, exptime)
    rejected: tuple[tuple[int, str], ...]  # (frame id, reason) rejected before alignment
    preview_path: str | None
    preview_title: str
    min_free_bytes: int = 0
    threads: int = 1  # threads for the combination (cores the pool would otherwise leave idle)
    bayer_pattern: str | None = None  # colour mosaics: demosaiced, stacked plane by plane into R, G, B
    demosaic: str = "malvar"
    #: frame id -> (raw sha256, raw file name): how the product names its members (never by id)
    labels: dict[int, tuple[str, str]] = field(default_factory=dict)
    shape: tuple[int, int, int] | None = None
    """(ny, nx, BITPIX) of the lights, from the catalogue (`ccdwatch.jobs.memory`)."""
    interpolation: str = "bicubic"  # the warp (`ccdwatch.align.warp`'s method)
    scale_flux: bool = True  # stack.normalisation == "scale": frames scaled to the reference's flux
    compression: Compression | None = None  # [products] compress
    weights: str = "ivar"  # stack.weights (`ccdwatch.noise.frame_weight`), with each frame's FWHM:
    fwhm: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StackJobResult:
    sha256: str
    reference: int
    transforms: dict[int, dict[str, Any]]
    failed: dict[int, str]
    preview_path: str | None
    #: frame id -> (its flux scale, stars it was measured from, why 1.0 unmeasured or None); empty: not scaled
    scales: dict[int, tuple[float, int, str | None]] = field(default_factory=dict)
    offsets: dict[int, float] = field(default_factory=dict)  # frame id -> its sky less the reference's
