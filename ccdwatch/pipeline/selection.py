"""Which masters calibrate a frame: the nearest valid one in time, per kind, with reasons.

As BANZAI does: a master is a candidate when it has the frame's camera set-up (and filter, for
flats; temperature within tolerance, for darks) and is within its maximum age; the nearest in
time wins. A dark of another exposure is scaled only if it is bias-subtracted and a master bias
exists: the nearest exposure at least as long as the light (scaled down), else the longest shorter
one, scaled up no more than ``masters.max_dark_scale``. A dark that includes the bias replaces the
bias.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from ccdwatch.catalog.queries import (
    calibration_frames_rejected,
    calibration_frames_waiting,
    current_masters,
    frames_by_id,
    lost_master,
)
from ccdwatch.config import MastersConfig
from ccdwatch.keys import setpoint_note, temperature_ref
from ccdwatch.models import Frame, FrameState, Master

EXPTIME_TOLERANCE = 1e-3  # seconds: exposures closer than this are "the same exposure"


@dataclass
class Selection:
    """The masters chosen for one light, and what is missing (with reasons)."""

    bias: Master | None = None
    dark: Master | None = None
    dark_scale: float | None = None
    flat: Master | None = None
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> tuple[int | None, int | None, int | None]:
        return (
            self.bias.id if self.bias else None,
            self.dark.id if self.dark else None,
            self.flat.id if self.flat else None,
        )

    def explain(self) -> str:
        parts = []
        for kind in ("bias", "dark", "flat"):
            m = getattr(self, kind)
            if m is not None:
                extra = (f", scaled x{self.dark_scale:.4g}"
                         if kind == "dark" and self.dark_scale not in (None, 1.0) else "")
                parts.append(f"{kind}: master #{m.id} (night {m.night} v{m.version}{extra})")
            elif kind in self.missing:
                parts.append(f"{kind}: MISSING - {self.missing[kind]}")
        return "; ".join(parts + self.notes)


class Masters:
    """The current masters of the catalogue, as one session sees them, with the selection rules.

    The current masters of a camera set-up are queried once per kind and kept: planning a
    batch of lights costs one query per camera and kind, not one per light.
    """

    def __init__(self, session: Session, rules: MastersConfig, *,
                 sites: Sequence[str | None] | None = None) -> None:
        self.s = session
        self.rules = rules
        #: the sites whose masters may be chosen (None: any)
        self.sites = sites
        self._current: dict[tuple[str, str | None], list[Master]] = {}
        self._arrived: dict[tuple[str, str | None, str | None, float | None], int] = {}
        self._rejected: dict[tuple[str, str | None, str | None], tuple[int, str | None]] = {}
        self._lost_notes: dict[tuple[str, str | None, str | None], str] = {}

    def arrived(self, kind: str, camera: str | None, filter_name: str | None = None, *,
                exptime: float | None = None) -> int:
        """How many frames of a kind and camera set-up (a flat's: of a filter; with ``exptime``:
        of that exposure) have arrived and are in no master yet."""
        key = (kind, camera, (filter_name or "").lower() if kind == "flat" else None, exptime)
        if key not in self._arrived:
            # of the sites whose masters this one may use: another telescope's biases of the same camera model
            # make no master of this one's, and its darks must not wait for them
            self._arrived[key] = calibration_frames_waiting(self.s, kind, camera, key[2], exptime, sites=self.sites)
        return self._arrived[key]

    def progress(self, kind: str, camera: str | None, filter_name: str | None = None) -> str:
        """What exists towards a missing master: '1 of 3 flats for filter 'V' have arrived'."""
        n, need = self.arrived(kind, camera, filter_name), self.rules.min_frames[kind]
        plural = {"bias": "biases", "dark": "darks", "flat": "flats"}[kind]
        where = f" for filter {filter_name!r}" if kind == "flat" else ""
        if n >= need:
            if kind != "bias" and not self.current("bias", camera) and self.arrived("bias", camera):
                # `masters.plan_master`: biases have arrived, so their master is waited for
                return (f"{n} {plural}{where} have arrived; their master waits for the master bias "
                        f"({self.progress('bias', camera)})")
            return f"{n} {plural}{where} have arrived; their master is not built yet"
        key = (kind, camera, (filter_name or "").lower() if kind == "flat" else None)
        if key not in self._rejected:
            self._rejected[key] = calibration_frames_rejected(self.s, kind, camera, key[2], sites=self.sites)
        bad, why = self._rejected[key]
        if bad:  # they arrived, and were not good enough: the observer must take others
            return (f"{bad} {plural}{where} were rejected ({why}); {n} usable of {need} needed: "
                    f"take new {plural}")
        if n == 0:
            return f"no {plural}{where} have arrived ({need} needed)" + self._lost(kind, camera, key[2])
        return f"{n} of {need} {plural}{where} needed have arrived" + self._lost(kind, camera, key[2])

    def _lost(self, kind: str, camera: str | None, flat_filter: str | None) -> str:
        """Why a master that existed cannot be made again: it was retired, its file gone or
        changed (`ccdwatch.pipeline.gone`), and too few of its raw frames are left ("" if none was)."""
        key = (kind, camera, flat_filter)
        if key not in self._lost_notes:
            master = lost_master(self.s, kind, camera, flat_filter, sites=self.sites)
            self._lost_notes[key] = "" if master is None else (
                f"; master {kind} #{master.id} (night {master.night} v{master.version}) was retired "
                f"({master.retired}) and {self._gone(master)} of its {len(master.inputs)} raw frames are gone: "
                "restore them or take new ones")
        return self._lost_notes[key]

    def _gone(self, master: Master) -> int:
        return sum(f.state in (FrameState.MISSING, FrameState.SUPERSEDED)
                   for f in frames_by_id(self.s, [i.frame_id for i in master.inputs]))

    def current(self, kind: str, camera: str | None) -> list[Master]:
        if (kind, camera) not in self._current:
            self._current[(kind, camera)] = current_masters(self.s, kind, camera, sites=self.sites)
        return self._current[(kind, camera)]

    def max_age_days(self, kind: str) -> float:
        m = self.rules
        return {"bias": m.bias_max_age_days, "dark": m.dark_max_age_days, "flat": m.flat_max_age_days}[kind]

    def choose(self, kind: str, frame: Frame, when: datetime | None) -> tuple[Master | None, str]:
        """The nearest valid bias or flat for a frame, or None and why."""
        max_age = self.max_age_days(kind)
        cands = self.current(kind, frame.camera_key)
        if kind == "flat":
            cands = [c for c in cands if (c.filter or "").lower() == (frame.filter or "").lower()]
            if not cands:
                return None, (f"no master flat for filter {frame.filter!r} with this camera set-up: "
                              f"{self.progress('flat', frame.camera_key, frame.filter)}")
        if not cands:
            return None, (f"no master {kind} for camera set-up {frame.camera_key}: "
                          f"{self.progress(kind, frame.camera_key)}")
        best = nearest(cands, when, max_age)
        if best is None:
            return None, f"no master {kind} within {max_age:g} days of the frame"
        return best, ""

    def _temp_ok(self, master: Master, frame: Frame) -> bool:
        t = temperature_ref(frame, self.rules.temperature_tolerance)
        return t is None or master.ccd_temp is None or abs(master.ccd_temp - t) <= self.rules.temperature_tolerance

    def dark(self, frame: Frame, when: datetime | None, bias: Master | None, *,
             exact_only: bool = False) -> tuple[Master | None, float | None, str]:
        """The dark for a frame and its scale factor, or None and why."""
        max_age = self.rules.dark_max_age_days
        darks = [d for d in self.current("dark", frame.camera_key) if self._temp_ok(d, frame)]
        if not darks:
            return None, None, self._no_dark(frame)
        t = frame.exptime or 0.0
        same = [d for d in darks if d.exptime is not None and abs(d.exptime - t) < EXPTIME_TOLERANCE]
        best = nearest(same, when, max_age)
        if best is not None:
            if not best.bias_subtracted or bias is not None:
                return best, 1.0, ""
            # A bias-subtracted dark of the same exposure still needs the bias.
            return None, None, "the master dark is bias-subtracted but no master bias is available"
        if exact_only:
            return None, None, f"no master dark of {t:g} s"
        return _scaled_dark(darks, t, when, bias, self.rules)

    def _no_dark(self, frame: Frame) -> str:
        """Why no master dark fits ``frame``, with what exists: masters at other temperatures,
        or the darks arrived towards one."""
        others = sorted({d.ccd_temp for d in self.current("dark", frame.camera_key) if d.ccd_temp is not None})
        if others:
            temp = temperature_ref(frame, self.rules.temperature_tolerance)
            return (f"no master dark for camera set-up {frame.camera_key} within "
                    f"{self.rules.temperature_tolerance:g} degC of {temp:g} degC: the master darks are at "
                    f"{', '.join(f'{t:g}' for t in others)} degC")
        return f"no master dark for camera set-up {frame.camera_key}: {self.progress('dark', frame.camera_key)}"

    def for_light(self, frame: Frame) -> Selection:
        """Choose bias, dark (with its scale) and flat for a light; explain what is missing."""
        sel = Selection()
        when = frame.date_obs
        sel.bias, why = self.choose("bias", frame, when)
        if sel.bias is None:
            sel.missing["bias"] = why
        sel.dark, sel.dark_scale, why = self.dark(frame, when, sel.bias)
        if sel.dark is None:
            sel.missing["dark"] = why
        elif sel.dark_scale is not None and sel.dark_scale > 1.0:
            sel.notes.append(f"no master dark as long as the light: the {sel.dark.exptime:g} s one is scaled up "
                             f"x{sel.dark_scale:.4g}, its noise with it")
        elif not sel.dark.bias_subtracted:
            # A raw (bias-including) dark of the same exposure removes the bias itself.
            sel.notes.append("the master dark includes the bias, so no separate bias is subtracted")
            sel.bias = None
            sel.missing.pop("bias", None)
        sel.flat, why = self.choose("flat", frame, when)
        if sel.flat is None:
            sel.missing["flat"] = why
        note = setpoint_note(frame, self.rules.temperature_tolerance)
        if note is not None:  # its dark was matched by the measured temperature: say so
            sel.notes.append(note)
        return sel


def _scaled_dark(darks: list[Master], t: float, when: datetime | None, bias: Master | None,
                 rules: MastersConfig) -> tuple[Master | None, float | None, str]:
    """The bias-subtracted dark to scale to ``t`` seconds, and its factor (`dark_rank`): the
    nearest exposure at least as long (scaled down, its noise divided), else the longest shorter
    one, scaled up to ``masters.max_dark_scale`` times and no more."""
    max_age = rules.dark_max_age_days
    scalable = [d for d in darks if d.bias_subtracted and d.exptime]
    if not scalable:
        return None, None, (f"no master dark of {t:g} s, and none that can be scaled "
                            "(scaling needs a bias-subtracted master dark)")
    if bias is None:
        return None, None, f"no master dark of {t:g} s; scaling another needs a master bias"
    in_time = [d for d in scalable if nearest([d], when, max_age) is not None]
    if not in_time:
        return None, None, f"no scalable master dark within {max_age:g} days"
    best = min(in_time, key=lambda d: dark_rank(d, t, when))
    factor = dark_factor(t, best.exptime or 0.0)
    if factor > rules.max_dark_scale:
        return None, None, (f"no master dark of {t:g} s or longer, and the longest shorter one ({best.exptime:g} s) "
                            f"would be scaled x{factor:.3g}, more than masters.max_dark_scale = "
                            f"{rules.max_dark_scale:g} allows (its noise and hot-pixel errors grow as much)")
    return best, factor, ""


def dark_rank(dark: Master, t: float, when: datetime | None) -> tuple[bool, float, float, timedelta, int]:
    """How well a scalable dark suits a light of ``t`` seconds (the lower the better): one at least
    as long as the light first (scaled down, its noise is divided; scaled up, its noise, hot-pixel
    residuals and bias errors are multiplied), then the exposure ratio |log(t / t_dark)| (not the
    difference: a 3 s dark is as far from 120 s as 120 s from 4800 s), then the lower factor, the
    nearest in time, the newest."""
    exptime = dark.exptime or math.inf
    factor = t / exptime
    dt = timedelta(0) if when is None or dark.date_mid is None else abs(dark.date_mid - when)
    return (exptime < t - EXPTIME_TOLERANCE, abs(math.log(factor)) if factor > 0 else 0.0, factor, dt, -dark.id)


def nearest(masters: Iterable[Master], when: datetime | None, max_age_days: float) -> Master | None:
    """The master nearest in time among those within the maximum age (newest id on ties).

    A frame or master without a date cannot be judged by age and is accepted.
    """
    best, best_rank = None, None
    for m in masters:
        dt = timedelta(0) if when is None or m.date_mid is None else abs(m.date_mid - when)
        if dt > timedelta(days=max_age_days):
            continue
        rank = (dt, -m.id)
        if best_rank is None or rank < best_rank:
            best, best_rank = m, rank
    return best


def dark_factor(light_exptime: float, dark_exptime: float) -> float:
    """`ccdwatch.calib.dark_scale`, imported when first planned: the numerics (numpy) are not
    needed by a daemon start-up with nothing to do."""
    from ccdwatch import calib

    return calib.dark_scale(light_exptime, dark_exptime)
