"""The night report's records: plain values read from the catalogue (`ccdwatch.report.collect`),
judged (`.checks`), drawn (`.figures`) and rendered (`.html`).

Apart from `.collect`, so that the workers that draw the report's pictures load them without
SQLAlchemy and the catalogue's models (~0.4 s of the fork server's start, see
`ccdwatch.jobs.forkserver`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ccdwatch.advice import Advice

__all__ = ["CalibratedRow", "FrameRow", "Group", "MasterRow", "MemberRow", "NightData", "StackRow"]


@dataclass
class FrameRow:
    """One catalogued frame, as the report shows it (plain values, no session needed)."""

    id: int
    name: str
    paths: list[str]
    sha256: str | None
    imagetyp: str
    state: str
    state_reason: str | None
    date_obs: datetime | None
    exptime: float | None
    filter: str | None
    object: str | None
    group_key: str | None
    ccd_temp: float | None
    set_temp: float | None
    n_stars: int | None
    fwhm: float | None
    elongation: float | None
    sky: float | None
    sky_noise: float | None
    saturated_fraction: float | None
    instrument: str | None
    telescope: str | None
    header_warnings: list[str]
    created_at: datetime | None
    cosmic_rays: int | None = None  # hits masked in the current calibrated product
    site: str | None = None


@dataclass
class MasterRow:
    """A master calibration relevant to the night (built from its frames, or used by its lights)."""

    id: int
    kind: str
    night: str
    version: int
    latest: bool
    exptime: float | None
    filter: str | None
    ccd_temp: float | None
    n_frames: int
    method: str
    mean: float | None
    noise: float | None
    hot_pixels: int | None
    date_mid: datetime | None
    bias_subtracted: bool
    dark_subtracted: bool
    path: str
    preview_path: str | None
    inputs: list[str]
    used_by: int = 0
    gain_check: tuple[str, str] | None = None
    """A flat's: (level, message) when its measured gain disagrees with its lights' (`ccdwatch.detector.gain_check`)."""


@dataclass
class CalibratedRow:
    frame_id: int
    path: str
    bias_id: int | None
    dark_id: int | None
    flat_id: int | None
    dark_scale: float | None
    partial: bool
    missing: str | None


@dataclass
class MemberRow:
    frame_id: int
    used: bool
    reason: str | None


@dataclass
class StackRow:
    id: int
    group_key: str
    target: str
    filter: str | None
    exptime: float | None
    version: int
    n_used: int
    n_rejected: int
    total_exposure: float
    reference_frame_id: int | None
    method: str
    path: str
    preview_path: str | None
    members: list[MemberRow]
    site: str | None = None


@dataclass
class Group:
    """The lights of one stack group (target, filter, exposure, camera) and its current stack.

    ``key`` is the group key, prefixed with the site (``site|group key``) in a report of
    several sites: two telescopes with one camera model have the same group keys."""

    key: str
    target: str
    filter: str | None
    exptime: float | None
    frame_ids: list[int]
    stack: StackRow | None = None
    site: str | None = None  # set in a report of several sites


@dataclass
class NightData:
    """Everything the report of one night shows, read from the catalogue in one transaction."""

    night: str
    generated: datetime
    frames: dict[int, FrameRow]
    problems: list[FrameRow]
    masters: list[MasterRow]
    calibrated: dict[int, CalibratedRow]
    groups: list[Group]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the sites whose frames the report shows (one when filtered by site)
    sites: list[str] = field(default_factory=list)
    unused: list[Advice] = field(default_factory=list)
    """The night's unclassified and ignored frames grouped by reason, with the rule that would use them."""

    def of_type(self, imagetyp: str) -> list[FrameRow]:
        return [f for f in self.frames.values() if f.imagetyp == imagetyp]

    @property
    def lights(self) -> list[FrameRow]:
        return sorted(self.of_type("light"), key=lambda f: (f.date_obs is None, f.date_obs or datetime.min, f.id))

    def master(self, master_id: int | None) -> MasterRow | None:
        return next((m for m in self.masters if m.id == master_id), None)
