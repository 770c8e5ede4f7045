"""The catalogue schema: SQLAlchemy 2.x declarative models.

The schema is owned by the Alembic migrations in ``migrations/``; these models must match the
head revision (a test compares them). Times are stored as naive UTC datetimes.

Frame life cycle (``Frame.state``)::

    ingested ─► used | rejected          (bias/dark/flat taken into a master, or left out: a flat's level)
    ingested ─► waiting ─► calibrated ─► stacked | rejected      (lights)
    unclassified                         (no usable image type; reason in type_source)
    quarantined (reason) / failed (tries, last_error)            (exits)
    missing (raw file gone; returns when it does) / superseded (same exposure, new content)
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

class FrameState(StrEnum):
    """Where a frame stands in its life cycle (the string is what ``frames.state`` stores)."""

    INGESTED = "ingested"
    USED = "used"
    WAITING = "waiting"
    CALIBRATED = "calibrated"
    STACKED = "stacked"
    REJECTED = "rejected"
    UNCLASSIFIED = "unclassified"
    QUARANTINED = "quarantined"
    FAILED = "failed"
    #: a classification rule says not to use it (``imagetyp = "ignore"``); the rule is the reason
    IGNORED = "ignored"
    #: the raw file is gone (or holds other content) and no other path has it; back by itself
    #: when the file returns
    MISSING = "missing"
    #: the same exposure was catalogued again with new content (a header edited in place)
    SUPERSEDED = "superseded"


#: The states of frames that left the pipeline for good (or until a user resets them).
EXIT_STATES = (FrameState.QUARANTINED, FrameState.FAILED, FrameState.MISSING, FrameState.SUPERSEDED)

#: How ``Master.retired`` begins for a master whose file was found gone (or, checked against its
#: sha256, changed) on disk: made again from its raw frames (`ccdwatch.pipeline.gone`).
MASTER_LOST = "its file is not as catalogued"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Frame(Base):
    """One distinct raw frame (by content: the same bytes under two names are one frame)."""

    __tablename__ = "frames"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text, index=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    hdu_index: Mapped[int | None] = mapped_column(Integer)

    imagetyp: Mapped[str] = mapped_column(String(16), index=True, default="unknown")
    type_source: Mapped[str | None] = mapped_column(Text)
    exptime: Mapped[float | None] = mapped_column(Float)
    filter: Mapped[str | None] = mapped_column(String(80), index=True)
    object: Mapped[str | None] = mapped_column(String(80), index=True)
    date_obs: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    night: Mapped[str | None] = mapped_column(String(10), index=True)
    xbin: Mapped[int | None] = mapped_column(Integer)
    ybin: Mapped[int | None] = mapped_column(Integer)
    naxis1: Mapped[int | None] = mapped_column(Integer)
    naxis2: Mapped[int | None] = mapped_column(Integer)
    ccd_temp: Mapped[float | None] = mapped_column(Float)
    set_temp: Mapped[float | None] = mapped_column(Float)
    gain: Mapped[float | None] = mapped_column(Float)
    egain: Mapped[float | None] = mapped_column(Float)
    offset: Mapped[float | None] = mapped_column(Float)
    readout_mode: Mapped[str | None] = mapped_column(String(80))
    instrument: Mapped[str | None] = mapped_column(String(80))
    telescope: Mapped[str | None] = mapped_column(String(80))
    ra_deg: Mapped[float | None] = mapped_column(Float)
    dec_deg: Mapped[float | None] = mapped_column(Float)
    camera_key: Mapped[str | None] = mapped_column(String(255), index=True)
    header: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    header_warnings: Mapped[list[Any] | None] = mapped_column(JSON)

    state: Mapped[str] = mapped_column(String(16), index=True)
    state_reason: Mapped[str | None] = mapped_column(Text)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    # Added by revision 0002 (calibration and stacking).
    group_key: Mapped[str | None] = mapped_column(String(255), index=True)
    n_stars: Mapped[int | None] = mapped_column(Integer)
    fwhm: Mapped[float | None] = mapped_column(Float)
    elongation: Mapped[float | None] = mapped_column(Float)
    sky: Mapped[float | None] = mapped_column(Float)
    sky_noise: Mapped[float | None] = mapped_column(Float)
    saturated_fraction: Mapped[float | None] = mapped_column(Float)

    # Added by revision 0003 (classification evidence, colour sensors).
    #: path relative to the incoming directory (what classification rules and tokens read)
    relpath: Mapped[str | None] = mapped_column(Text)
    #: how the type was decided: {"by": rule|header|path|pixels, "why": ..., "evidence": {...},
    #: "fingerprint": hash of the rules and classifier version it was made with}
    classification: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: CFA pattern of a one-shot-colour sensor, as read out (e.g. "RGGB"); None: monochrome
    bayer_pattern: Mapped[str | None] = mapped_column(String(8))

    # Added by revision 0004 (several telescopes, one catalogue).
    #: the site/telescope whose daemon catalogued it (``[site] name``); it alone plans the frame
    site: Mapped[str | None] = mapped_column(String(80), index=True)

    # Added by revision 0005 (cosmic rays).
    #: cosmic-ray hits masked in the current calibrated product (None: not looked for)
    cosmic_rays: Mapped[int | None] = mapped_column(Integer)
    # Added by revision 0006 (overscan).
    #: the overscan plan decided at ingest ({"biassec", "trimsec", "method", "order"}; None: the
    #: frame is used whole), see ccdwatch.headers.sections
    overscan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: the mean overscan level subtracted from the frame (ADU), measured when it was last reduced
    overscan_level: Mapped[float | None] = mapped_column(Float)

    files: Mapped[list[SourceFile]] = relationship(back_populates="frame")
    events: Mapped[list[Event]] = relationship(back_populates="frame", order_by="Event.id")

    __table_args__ = (Index("ix_frames_night_imagetyp_filter", "night", "imagetyp", "filter"),)


class SourceFile(Base):
    """A path in the incoming tree and the frame its current content is."""

    __tablename__ = "files"

    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    frame_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id", ondelete="SET NULL"), index=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    inode: Mapped[int | None] = mapped_column(BigInteger)
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime)

    frame: Mapped[Frame | None] = relationship(back_populates="files")


class Event(Base):
    """History: what happened to a frame, when, and why."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    frame_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)

    frame: Mapped[Frame | None] = relationship(back_populates="events")


class Master(Base):
    """An immutable master calibration; a rebuild is a new version, old ones stay."""

    __tablename__ = "masters"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), index=True)
    calib_key: Mapped[str] = mapped_column(String(255))
    camera_key: Mapped[str] = mapped_column(String(255), index=True)
    exptime: Mapped[float | None] = mapped_column(Float)
    filter: Mapped[str | None] = mapped_column(String(80))
    ccd_temp: Mapped[float | None] = mapped_column(Float)
    night: Mapped[str] = mapped_column(String(10), index=True)
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    preview_path: Mapped[str | None] = mapped_column(Text)
    n_frames: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    bias_subtracted: Mapped[bool] = mapped_column(Boolean, default=False)
    dark_subtracted: Mapped[bool] = mapped_column(Boolean, default=False)
    bias_id: Mapped[int | None] = mapped_column(ForeignKey("masters.id"))
    dark_id: Mapped[int | None] = mapped_column(ForeignKey("masters.id"))
    date_start: Mapped[datetime | None] = mapped_column(DateTime)
    date_end: Mapped[datetime | None] = mapped_column(DateTime)
    date_mid: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    mean: Mapped[float | None] = mapped_column(Float)
    noise: Mapped[float | None] = mapped_column(Float)
    hot_pixels: Mapped[int | None] = mapped_column(Integer)
    ccdwatch_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    #: why this master may no longer be used (inputs reclassified away, its file gone); None: usable
    retired: Mapped[str | None] = mapped_column(Text)
    #: the site whose frames it combines (revision 0004)
    site: Mapped[str | None] = mapped_column(String(80), index=True)

    inputs: Mapped[list[MasterInput]] = relationship(back_populates="master", cascade="all, delete-orphan")

    __table_args__ = (UniqueConstraint("site", "calib_key", "night", "version"),)


class MasterInput(Base):
    __tablename__ = "master_inputs"

    master_id: Mapped[int] = mapped_column(ForeignKey("masters.id", ondelete="CASCADE"), primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), primary_key=True, index=True)
    sha256: Mapped[str] = mapped_column(String(64))

    master: Mapped[Master] = relationship(back_populates="inputs")


class Calibrated(Base):
    """A calibrated light: one version per (frame, set of masters); the newest is current."""

    __tablename__ = "calibrated"

    id: Mapped[int] = mapped_column(primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    current: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bias_id: Mapped[int | None] = mapped_column(ForeignKey("masters.id"))
    dark_id: Mapped[int | None] = mapped_column(ForeignKey("masters.id"))
    flat_id: Mapped[int | None] = mapped_column(ForeignKey("masters.id"))
    dark_scale: Mapped[float | None] = mapped_column(Float)
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    missing: Mapped[str | None] = mapped_column(Text)
    ccdwatch_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (UniqueConstraint("frame_id", "version"),)


class Stack(Base):
    """A stacked image of one group; a late frame makes a new version."""

    __tablename__ = "stacks"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_key: Mapped[str] = mapped_column(String(255), index=True)
    night: Mapped[str] = mapped_column(String(10), index=True)
    target: Mapped[str] = mapped_column(String(80), index=True)
    filter: Mapped[str | None] = mapped_column(String(80))
    exptime: Mapped[float | None] = mapped_column(Float)
    camera_key: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    preview_path: Mapped[str | None] = mapped_column(Text)
    n_used: Mapped[int] = mapped_column(Integer)
    n_rejected: Mapped[int] = mapped_column(Integer)
    total_exposure: Mapped[float] = mapped_column(Float)
    reference_frame_id: Mapped[int | None] = mapped_column(ForeignKey("frames.id"))
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    ccdwatch_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    #: the site whose lights it stacks (revision 0004)
    site: Mapped[str | None] = mapped_column(String(80), index=True)

    members: Mapped[list[StackMember]] = relationship(back_populates="stack", cascade="all, delete-orphan")

    __table_args__ = (UniqueConstraint("site", "group_key", "version"),)


class StackMember(Base):
    __tablename__ = "stack_members"

    stack_id: Mapped[int] = mapped_column(ForeignKey("stacks.id", ondelete="CASCADE"), primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), primary_key=True, index=True)
    calibrated_id: Mapped[int | None] = mapped_column(ForeignKey("calibrated.id"))
    sha256: Mapped[str | None] = mapped_column(String(64))
    used: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    transform: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: the frame's sky less the reference's, and its flux scale against the reference (None: not
    #: stacked, or not scaled: stack.normalisation = "offset"); why the scale is 1.0 unmeasured
    sky_offset: Mapped[float | None] = mapped_column(Float)
    scale: Mapped[float | None] = mapped_column(Float)
    scale_note: Mapped[str | None] = mapped_column(Text)

    stack: Mapped[Stack] = relationship(back_populates="members")


class Daemon(Base):
    """A running daemon: the site it is, the incoming directory it owns, and when it was last alive.

    One live daemon per site, per incoming directory and per products root; a row whose heartbeat
    is stale (or whose process is gone, on the same host) is taken over by the next daemon.
    """

    __tablename__ = "daemons"

    id: Mapped[int] = mapped_column(primary_key=True)
    site: Mapped[str] = mapped_column(String(80), unique=True)
    incoming: Mapped[str] = mapped_column(Text, unique=True)
    products: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    scheduler: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)


class Claim(Base):
    """Work a planner has taken (a master or stack to build) until its result is committed.

    Concurrent planners of one site never build the same thing twice: the first inserts the
    claim, the others see it and skip; a claim whose holder died expires at ``expires_at``.
    """

    __tablename__ = "claims"

    what: Mapped[str] = mapped_column(String(400), primary_key=True)
    site: Mapped[str | None] = mapped_column(String(80))
    owner: Mapped[str] = mapped_column(String(255))
    claimed_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Campaign(Base):
    """A reprocessing campaign (``ccdwatch reprocess``): products older than ``started_at`` in its
    selection are made again; a rerun of the same selection continues the unfinished campaign."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    site: Mapped[str | None] = mapped_column(String(80))
    selection: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
