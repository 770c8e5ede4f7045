"""Value types for the two keys that decide what belongs together.

A :class:`CalibKey` says which calibration frames may be combined into one master (kind and
camera set-up; plus exposure and temperature for darks, filter for flats; :func:`calib_keys` gives
the darks of a night whose temperatures agree one key). A :class:`GroupKey`
says which lights are stacked together (night, target, filter, exposure, camera set-up). Both
are strings only where they are stored: ``str(key)`` is the catalogue column's value, and
``parse`` reads it back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

#: The kinds of calibration frames, in the order their masters are built (each on the previous).
CALIBRATION_KINDS = ("bias", "dark", "flat")


class CalibrationFrame(Protocol):
    """What a calibration key is made from (a catalogue ``Frame`` has all of it)."""

    imagetyp: str
    camera_key: str | None
    exptime: float | None
    filter: str | None
    set_temp: float | None
    ccd_temp: float | None


class NightFrame(CalibrationFrame, Protocol):
    """A calibration frame with what orders it within its night (a catalogue ``Frame``)."""

    night: str | None
    date_obs: datetime | None
    sha256: str | None


#: degC: the default of ``masters.temperature_tolerance``, which also says how far the measured CCD
#: temperature may be from the set-point for the set-point to stand for it.
TEMPERATURE_TOLERANCE = 2.0


def off_setpoint(ccd_temp: float | None, set_temp: float | None, tolerance: float) -> bool:
    """Did the sensor miss its set-point: a measured CCD temperature more than ``tolerance`` degC from it?

    Camera programs (N.I.N.A., MaxIm, SGP) write SET-TEMP whatever the cooler achieved: on a warm
    night or with the cooler off the sensor can be 20 degC above it.
    """
    return ccd_temp is not None and set_temp is not None and abs(ccd_temp - set_temp) > tolerance


def temperature_ref(frame: CalibrationFrame, tolerance: float) -> float | None:
    """The temperature a frame was taken at, for matching darks (degC): the set-point when the sensor
    reached it (its measured CCD-TEMP within ``tolerance`` of SET-TEMP, or no CCD-TEMP to say
    otherwise), else the measured CCD-TEMP; None when the header gives neither."""
    if frame.set_temp is None or off_setpoint(frame.ccd_temp, frame.set_temp, tolerance):
        return frame.ccd_temp
    return frame.set_temp


def setpoint_note(frame: CalibrationFrame, tolerance: float) -> str | None:
    """'sensor not at its set-point ...' when it missed it (`off_setpoint`), else None."""
    if not off_setpoint(frame.ccd_temp, frame.set_temp, tolerance):
        return None
    return (f"sensor not at its set-point: CCD-TEMP {frame.ccd_temp:g} degC, SET-TEMP {frame.set_temp:g} degC "
            f"(more than {tolerance:g} degC apart); its measured temperature is used")


@dataclass(frozen=True, order=True)
class CalibKey:
    """Which calibration frames may be combined together.

    Ordered by build rank (bias, dark, flat), then by the stored text.
    """

    rank: int
    text: str

    @classmethod
    def of(cls, frame: CalibrationFrame, tolerance: float = TEMPERATURE_TOLERANCE) -> CalibKey:
        """The key of a bias, dark or flat frame on its own (a dark's temperature: `temperature_ref`).
        The darks of a night are keyed together, by :func:`calib_keys`."""
        t = temperature_ref(frame, tolerance) if frame.imagetyp == "dark" else None
        return cls.parse(_key_text(frame, "?" if t is None else _temperature_text(t)))

    @classmethod
    def parse(cls, text: str) -> CalibKey:
        """Read a key back from its stored form."""
        kind = text.split("|", 1)[0]
        if kind not in CALIBRATION_KINDS:
            raise ValueError(f"not a calibration key: {text!r}")
        return cls(CALIBRATION_KINDS.index(kind), text)

    @property
    def kind(self) -> str:
        """``bias``, ``dark`` or ``flat``."""
        return CALIBRATION_KINDS[self.rank]

    def __str__(self) -> str:
        return self.text


def _key_text(frame: CalibrationFrame, temperature: str) -> str:
    key = f"{frame.imagetyp}|{frame.camera_key}"
    if frame.imagetyp == "dark":
        key += f"|exp={frame.exptime or 0:.3f}|T={temperature}"
    if frame.imagetyp == "flat":
        key += f"|filter={(frame.filter or '').lower()}"
    return key


def _temperature_text(t: float) -> str:
    """A key's temperature: to 0.1 degC, ``-10`` rather than ``-10.0`` (keys made before are alike)."""
    return f"{round(t, 1) + 0.0:g}"


def _time_order(frame: NightFrame) -> tuple[bool, datetime, str]:
    return frame.date_obs is None, frame.date_obs or datetime.min, frame.sha256 or ""


def temperature_clusters(temps: Sequence[float], tolerance: float) -> list[int]:
    """Which cluster each temperature (in time order) is in: every cluster spans at most
    ``tolerance`` (its members are within it of each other, so of their median).

    Each in turn joins the cluster it fits in (with it the span stays within ``tolerance``) whose
    first member is nearest (the earliest such cluster on ties), else starts one. A temperature
    therefore never changes cluster when later ones are added: darks arriving in time order never
    change the key of those already combined, while darks at other temperatures (another
    set-point, a night that warmed) start clusters of their own.
    """
    spans: list[tuple[float, float, float]] = []  # (lowest, highest, first)
    out = []
    for t in temps:
        fits = [i for i, (lo, hi, _) in enumerate(spans) if max(hi, t) - min(lo, t) <= tolerance + 1e-9]
        if fits:
            i = min(fits, key=lambda i: (abs(spans[i][2] - t), i))
            lo, hi, first = spans[i]
            spans[i] = (min(lo, t), max(hi, t), first)
        else:
            i = len(spans)
            spans.append((t, t, t))
        out.append(i)
    return out


def _dark_labels(frames: Sequence[NightFrame], tolerance: float) -> list[str]:
    """The temperature part of the keys of the darks of one night, set-up and exposure (in time
    order): each cluster (`temperature_clusters`) by its first dark's temperature."""
    known = [(i, t) for i, t in enumerate(temperature_ref(f, tolerance) for f in frames) if t is not None]
    clusters = temperature_clusters([t for _, t in known], tolerance)
    labels = ["?"] * len(frames)
    names: dict[int, str] = {}
    for (i, t), c in zip(known, clusters, strict=True):
        if c not in names:  # its first dark: the cluster's name (made unique by its number if need be)
            text = _temperature_text(t)
            names[c] = text if text not in names.values() else f"{text}~{c + 1}"
        labels[i] = names[c]
    return labels


def calib_keys(frames: Sequence[NightFrame], tolerance: float) -> list[CalibKey]:
    """The key of each frame, computed together: biases and flats as `CalibKey.of`; the darks of
    one night, camera set-up and exposure whose temperatures (`temperature_ref`) lie within
    ``tolerance`` of each other share one key (`temperature_clusters`), named by the temperature
    of the first of them in time (so a cooler that hovers around -4.5 degC makes one master, not
    one at -4 and one at -5). Deterministic: the result depends on the set of frames, not on
    their order."""
    keys: list[CalibKey | None] = [None] * len(frames)
    darks: dict[tuple[str | None, str], list[int]] = defaultdict(list)
    for i, f in enumerate(frames):
        if f.imagetyp == "dark":
            darks[(f.night, _key_text(f, ""))].append(i)
        else:
            keys[i] = CalibKey.of(f, tolerance)
    for members in darks.values():
        members.sort(key=lambda i: _time_order(frames[i]))
        labels = _dark_labels([frames[i] for i in members], tolerance)
        for i, label in zip(members, labels, strict=True):
            keys[i] = CalibKey.parse(_key_text(frames[i], label))
    return [k for k in keys if k is not None]


@dataclass(frozen=True)
class GroupKey:
    """Which lights are stacked together: night, target, filter, exposure and camera set-up."""

    night: str | None
    target: str
    filter: str | None
    exptime: float | None
    camera: str | None

    def __str__(self) -> str:
        target = self.target.replace("|", "/")
        filt = (self.filter or "-").replace("|", "/")
        return f"{self.night}|{target}|{filt}|{self.exptime or 0:g}s|{self.camera}"

    @classmethod
    def parse(cls, text: str) -> GroupKey:
        """Read a key back from its stored form (the camera set-up may itself hold ``|``)."""
        parts = text.split("|", 4)
        if len(parts) != 5 or not parts[3].endswith("s"):
            raise ValueError(f"not a stack group key: {text!r}")
        night, target, filt, exp, camera = parts
        return cls(night=None if night == "None" else night, target=target,
                   filter=None if filt == "-" else filt, exptime=float(exp[:-1]),
                   camera=None if camera == "None" else camera)


#: Exposures this close are one exposure for stacking: relative, and at least absolute (s). Drivers
#: that write the measured duration (a DSLR's bulb, a mechanical shutter's timing) give a
#: sequence of 200 s lights as 200.0, 200.002, 199.998...
EXPOSURE_RELATIVE, EXPOSURE_ABSOLUTE = 2e-3, 5e-3


def nominal_exposures(frames: Sequence[tuple[int, object, float | None]]) -> dict[int, float | None]:
    """Each frame's exposure as its stack group knows it, from ``(id, setup, exptime)`` in time
    order: the exposure of the first frame of its set-up (filter, camera) whose exposure it
    matches within `EXPOSURE_RELATIVE` (at least `EXPOSURE_ABSOLUTE` s); its own when none does.
    A frame therefore keeps its group as later ones arrive, and a sequence whose driver writes
    the measured duration stays one group instead of one per value."""
    firsts: dict[object, list[float]] = defaultdict(list)
    out: dict[int, float | None] = {}
    for fid, setup, exptime in frames:
        if exptime is None:
            out[fid] = None
            continue
        seen = firsts[setup]
        near = [v for v in seen if abs(exptime - v) <= max(EXPOSURE_RELATIVE * v, EXPOSURE_ABSOLUTE)]
        if near:
            out[fid] = min(near, key=lambda v: (abs(exptime - v), v))
        else:
            seen.append(exptime)
            out[fid] = exptime
    return out
