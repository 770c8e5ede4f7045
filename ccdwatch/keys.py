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


def temperature_ref(frame: CalibrationFrame) -> float | None:
    """The temperature a frame was taken at for matching: set-point if present, else CCD-TEMP (degC)."""
    return frame.set_temp if frame.set_temp is not None else frame.ccd_temp


@dataclass(frozen=True, order=True)
class CalibKey:
    """Which calibration frames may be combined together.

    Ordered by build rank (bias, dark, flat), then by the stored text.
    """

    rank: int
    text: str

    @classmethod
    def of(cls, frame: CalibrationFrame) -> CalibKey:
        """The key of a bias, dark or flat frame."""
        key = f"{frame.imagetyp}|{frame.camera_key}"
        if frame.imagetyp == "dark":
            key += f"|exp={frame.exptime or 0:.3f}"
            t = temperature_ref(frame)
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
