"""The detector's gain and read noise: ``[detector]`` settings and what a raw header says.

Conventions (README, "Units and uncertainty"):

* gain in electrons per ADU, from (first found) the camera's ``[detector.cameras."<INSTRUME>"]``
  ``gain``, the header's ``EGAIN`` or ``E-GAIN``, then ``GAIN`` when it is plausibly e-/ADU.
  Many CMOS cameras write their gain SETTING as GAIN (ZWO/QHY: ``GAIN = 120``); GAIN is therefore
  taken only when ``gain_card = "electrons"``, or (``"auto"``, the default) when its value is not a
  whole number and lies in [0.05, 20]. ``gain_card = "setting"`` never takes it.
* read noise in electrons rms, from the camera's ``read_noise``, else measured from the master bias
  (ADU, see `ccdwatch.noise.pair_noise`), else the header's ``RDNOISE`` (or ``READNOIS``), which
  this convention reads as electrons (IRAF's and ccdproc's).

Pure: a header mapping and the settings in, numbers and where they came from out.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ccdwatch.config_data import ConfigError, unknown_key

__all__ = ["GAIN_CARDS", "GAIN_FROM_FLATS", "CameraDetector", "DetectorConfig", "DetectorValues", "NoiseSpec",
           "detector_values", "gain_check", "parse_detector"]

#: How a raw GAIN card is read: "auto" (plausible values only), "electrons" (always e-/ADU),
#: "setting" (never: a camera setting).
GAIN_CARDS = ("auto", "electrons", "setting")
#: What the gain measured from the flats does (`ccdwatch.ptc`): "warn" when it disagrees with the
#: gain used, "use" it for lights with no configured gain (and warn), "off" (not measured).
GAIN_FROM_FLATS = ("warn", "use", "off")
#: GAIN values "auto" accepts as e-/ADU: not a whole number, within these bounds.
PLAUSIBLE_GAIN = (0.05, 20.0)
_EGAIN_KEYS = ("EGAIN", "E-GAIN")
_RDNOISE_KEYS = ("RDNOISE", "READNOIS")


@dataclass(frozen=True)
class CameraDetector:
    """``[detector.cameras."<INSTRUME>"]``: one camera's values (each optional)."""

    gain: float | None = None
    """e-/ADU; wins over every header card."""
    read_noise: float | None = None
    """Electrons rms; wins over the bias-measured value and RDNOISE."""
    gain_card: str | None = None
    """This camera's ``gain_card`` (else ``detector.gain_card``)."""


@dataclass(frozen=True)
class DetectorConfig:
    gain_card: str = "auto"
    """How a raw GAIN card is read: "auto", "electrons" or "setting" (see `ccdwatch.detector`)."""
    cameras: Mapping[str, CameraDetector] = field(default_factory=lambda: types.MappingProxyType({}))
    """INSTRUME (case-insensitive) -> its values."""
    gain_from_flats: str = "warn"
    """What the gain measured from each master flat's inputs does (`GAIN_FROM_FLATS`)."""
    gain_tolerance: float = 0.2
    """Relative difference between the measured gain and the one used above which a warning is given."""

    def camera(self, instrument: str | None) -> CameraDetector:
        return self.cameras.get((instrument or "").strip().lower(), CameraDetector())


@dataclass(frozen=True)
class DetectorValues:
    """What calibration uses: each value with a short note of where it came from."""

    gain: float | None
    gain_source: str
    read_noise: float | None
    """Electrons rms from the configuration or the header (None: measured from biases, if any)."""
    read_noise_source: str
    gain_setting: float | None = None
    """A raw GAIN card not taken as e-/ADU (kept in products as GAINSET)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().replace(",", "."))
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _card(header: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, float] | None:
    for key in keys:
        v = _number(header.get(key))
        if v is not None and v > 0:
            return key, v
    return None


def detector_values(header: Mapping[str, Any], instrument: str | None, cfg: DetectorConfig) -> DetectorValues:
    """Gain (e-/ADU) and read noise (e-) of a frame from the settings and its raw header."""
    cam = cfg.camera(instrument)
    mode = cam.gain_card or cfg.gain_card
    raw_gain = _number(header.get("GAIN"))
    gain_ok = raw_gain is not None and raw_gain > 0 and (mode == "electrons" or (
        mode == "auto" and PLAUSIBLE_GAIN[0] <= raw_gain <= PLAUSIBLE_GAIN[1] and not raw_gain.is_integer()))
    gain: float | None
    if cam.gain is not None:
        gain, gsrc = cam.gain, "config detector.cameras"
    elif (found := _card(header, _EGAIN_KEYS)) is not None:
        gsrc, gain = f"header {found[0]}", found[1]
    elif gain_ok:
        gain, gsrc = raw_gain, "header GAIN"
    else:
        gain, gsrc = None, "unknown"
    setting = raw_gain if raw_gain is not None and (gsrc != "header GAIN") else None
    if cam.read_noise is not None:
        return DetectorValues(gain, gsrc, cam.read_noise, "config detector.cameras", setting)
    rn = _card(header, _RDNOISE_KEYS)
    if rn is not None:
        return DetectorValues(gain, gsrc, rn[1], f"header {rn[0]}", setting)
    return DetectorValues(gain, gsrc, None, "unknown", setting)


def gain_check(measured: float, scatter: float, used: DetectorValues, instrument: str | None,
               cfg: DetectorConfig) -> tuple[str, str] | None:
    """(level, message) when the gain measured from a master flat's inputs (e-/ADU, `ccdwatch.ptc`)
    disagrees with the gain its lights would use by more than ``cfg.gain_tolerance`` ("warning"),
    or when they would use none ("note"); None when they agree. The message names both values, the
    camera and the configuration lines that settle it."""
    camera = (instrument or "").strip() or "?"
    fix = f'[detector.cameras."{camera}"] gain = {measured:.3g}'
    use = cfg.gain_from_flats == "use" and cfg.camera(instrument).gain is None
    then = "; the lights calibrated with this flat use the measured gain (detector.gain_from_flats = \"use\")" \
        if use else ""
    what = f"gain measured from the flats of camera {camera!r}: {measured:.3g} +- {scatter:.2g} e-/ADU"
    if used.gain is None:
        return "note", (f"{what}; no gain is known for its lights (products in ADU, no UNCERT plane){then}. "
                        f"If right, set it in the configuration: {fix}")
    if abs(measured - used.gain) <= cfg.gain_tolerance * used.gain:
        return None
    return "warning", (f"{what}, but its lights use {used.gain:.3g} e-/ADU from {used.gain_source} "
                       f"({abs(measured / used.gain - 1):.0%} off, more than detector.gain_tolerance = "
                       f"{cfg.gain_tolerance:g}): their uncertainties are off by up to the square root of the "
                       f"ratio{then}. If the measurement is right, set in the configuration: {fix}")


# ------------------------------------------------------------------------------ settings
class DetectorConfigError(ConfigError):
    """A ``[detector]`` value ccdwatch cannot use."""


def _gain_card(key: str, value: Any) -> str:
    if value not in GAIN_CARDS:
        raise DetectorConfigError(f"config key {key!r} must be one of {', '.join(map(repr, GAIN_CARDS))}, "
                                  f"got {value!r}")
    return str(value)


def _positive(key: str, value: Any, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
            value < 0 if zero else value <= 0):
        raise DetectorConfigError(f"config key {key!r} must be a number {'>= 0' if zero else '> 0'}"
                                  f"{' (electrons rms)' if zero else ' (electrons per ADU)'}, got {value!r}")
    return float(value)


def parse_detector(table: Any) -> DetectorConfig:
    """``[detector]`` from parsed TOML; a bad key raises DetectorConfigError naming it and the fix."""
    if not isinstance(table, dict):
        raise DetectorConfigError(f"config key 'detector' must be a table ([detector]), got {table!r}")
    gain_card, cameras, extra = "auto", {}, dict[str, Any]()
    for key, value in table.items():
        if key == "gain_card":
            gain_card = _gain_card("detector.gain_card", value)
        elif key == "gain_from_flats":
            if value not in GAIN_FROM_FLATS:
                raise DetectorConfigError(f"config key 'detector.gain_from_flats' must be one of "
                                          f"{', '.join(map(repr, GAIN_FROM_FLATS))}, got {value!r}")
            extra[key] = str(value)
        elif key == "gain_tolerance":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 10:
                raise DetectorConfigError("config key 'detector.gain_tolerance' must be a number > 0 (a relative "
                                          f"difference: 0.2 is 20 %), got {value!r}")
            extra[key] = float(value)
        elif key == "cameras":
            if not isinstance(value, dict):
                raise DetectorConfigError("config key 'detector.cameras' must hold tables like "
                                          "[detector.cameras.\"QSI 532\"] with gain = 1.3, read_noise = 9")
            for name, entry in value.items():
                cameras[str(name).strip().lower()] = _camera(f"detector.cameras.{name}", entry)
        else:
            raise unknown_key(f"detector.{key}", ("gain_card", "cameras", "gain_from_flats", "gain_tolerance"))
    return DetectorConfig(gain_card=gain_card, cameras=types.MappingProxyType(cameras), **extra)


def _camera(key: str, entry: Any) -> CameraDetector:
    if not isinstance(entry, dict):
        raise DetectorConfigError(f"config key {key!r} must be a table like {{gain = 1.3, read_noise = 9}}, "
                                  f"got {entry!r}")
    values: dict[str, Any] = {}
    for k, v in entry.items():
        if k == "gain":
            values[k] = _positive(f"{key}.gain", v)
        elif k == "read_noise":
            values[k] = _positive(f"{key}.read_noise", v, zero=True)
        elif k == "gain_card":
            values[k] = _gain_card(f"{key}.gain_card", v)
        else:
            raise unknown_key(f"{key}.{k}", ("gain", "read_noise", "gain_card"))
    return CameraDetector(**values)


@dataclass(frozen=True)
class NoiseSpec:
    """A light's detector values (:func:`detector_values`), planned in the daemon for its job
    (`ccdwatch.jobs.uncertainty`)."""

    gain: float | None
    gain_source: str
    read_noise: float | None
    """Electrons rms from the configuration or the header; the master bias's measurement is used
    when this is None or only from the header (config > measured > header)."""
    read_noise_source: str
    gain_setting: float | None = None
    plane: bool = True
    """Write the UNCERT plane (``calibration.uncertainty``)."""
