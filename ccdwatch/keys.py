"""Value types for the two keys that decide what belongs together.

A :class:`CalibKey` says which calibration frames may be combined into one master (kind and
camera set-up; plus exposure and temperature for darks, filter for flats). A :class:`GroupKey`
says which lights are stacked together (night, target, filter, exposure, camera set-up). Both
are strings only where they are stored: ``str(key)`` is the catalogue column's value, and
``parse`` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        """The key of a bias, dark or flat frame (a dark's temperature: `temperature_ref`)."""
        key = f"{frame.imagetyp}|{frame.camera_key}"
        if frame.imagetyp == "dark":
            key += f"|exp={frame.exptime or 0:.3f}"
            t = temperature_ref(frame, tolerance)
            key += f"|T={round(t):d}" if t is not None else "|T=?"
        if frame.imagetyp == "flat":
            key += f"|filter={(frame.filter or '').lower()}"
        return cls.parse(key)

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
