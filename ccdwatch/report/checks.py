"""The report's judgement (pure): the warnings and notes the observer should read first.

Every rule is one small function of the night's records that returns its messages (plain text,
possibly none); :func:`night_warnings` runs them in a fixed order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime

from ccdwatch.report.rows import FrameRow, MasterRow, NightData
from ccdwatch.report.text import fmt_num

__all__ = [
    "DARK_TEMP_WARN",
    "DARK_WARN_DAYS",
    "FLAT_WARN_DAYS",
    "REJECT_WARN_FRACTION",
    "TEMP_DRIFT_WARN",
    "night_warnings",
]

#: A master flat further than this from the lights it calibrated earns a warning, days.
FLAT_WARN_DAYS = 1.0
#: A master bias or dark further than this from its lights earns a warning, days.
DARK_WARN_DAYS = 7.0
#: Lights whose CCD temperature differs from their master dark's by more than this, degC.
DARK_TEMP_WARN = 1.0
#: Spread of the lights' CCD temperature over the night above which the cooler is suspect, degC.
TEMP_DRIFT_WARN = 1.0
#: Fraction of a stack group rejected above which the stack earns a warning.
REJECT_WARN_FRACTION = 0.25


def _days(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return abs((a - b).total_seconds()) / 86400.0


# ---------------------------------------------------------------------------- warnings
def _problem_files(data: NightData) -> list[str]:
    if not data.problems:
        return []
    by_state = Counter(p.state for p in data.problems)
    return [", ".join(f"{n} file{'s' * (n != 1)} {state}" for state, n in sorted(by_state.items()))
            + " - see Problem files for the reasons"]


def _waiting_lights(lights: Sequence[FrameRow]) -> list[str]:
    waiting = [f for f in lights if f.state == "waiting"]
    if not waiting:
        return []
    return [f"{len(waiting)} of {len(lights)} lights are still waiting for calibration - see Calibration coverage"]


def _partial_calibration(data: NightData) -> list[str]:
    partial = [c for c in data.calibrated.values() if c.partial]
    if not partial:
        return []
    return [f"{len(partial)} lights were calibrated without every master (partial): "
            + "; ".join(sorted({c.missing or "?" for c in partial}))]


def _master_age(m: MasterRow, users: Sequence[FrameRow]) -> list[str]:
    """A master far in time from the lights it calibrated."""
    gaps = [d for d in (_days(m.date_mid, f.date_obs) for f in users) if d is not None]
    limit = FLAT_WARN_DAYS if m.kind == "flat" else DARK_WARN_DAYS
    if not (gaps and max(gaps) > limit):
        return []
    what = {"flat": "dust and focus may have changed since", "dark": "hot pixels may have changed",
            "bias": "the bias level may have drifted"}.get(m.kind, "")
    return [f"master {m.kind} #{m.id}{f' ({m.filter})' if m.filter else ''} was taken "
            f"{max(gaps):.1f} days from the lights it calibrated (night {m.night}); {what}"]


def _dark_temperature(m: MasterRow, users: Sequence[FrameRow], temperature_tolerance: float) -> list[str]:
    """A master dark far in temperature from the lights it calibrated."""
    dark_temp = m.ccd_temp
    if m.kind != "dark" or dark_temp is None:
        return []
    temps = [f.ccd_temp for f in users if f.ccd_temp is not None]
    limit_t = min(DARK_TEMP_WARN, temperature_tolerance)
    off = [t for t in temps if abs(t - dark_temp) > limit_t]
    if not off:
        return []
    worst = max(off, key=lambda t: abs(t - dark_temp))
    return [f"{len(off)} lights were taken more than {limit_t:g} degC from master dark "
            f"#{m.id} ({dark_temp:g} degC; worst {worst:g} degC): dark current differs"]


def _mismatched_masters(data: NightData, temperature_tolerance: float) -> list[str]:
    """Masters far in time or temperature from the lights they calibrated."""
    users: dict[int, list[FrameRow]] = defaultdict(list)
    for c in data.calibrated.values():
        f = data.frames.get(c.frame_id)
        if f is None:
            continue
        for mid in (c.bias_id, c.dark_id, c.flat_id):
            if mid is not None:
                users[mid].append(f)
    warnings: list[str] = []
    for m in data.masters:
        fs = users.get(m.id, [])
        if fs:
            warnings += _master_age(m, fs) + _dark_temperature(m, fs, temperature_tolerance)
    return warnings


def _temperature_range(lights: Sequence[FrameRow]) -> list[str]:
    temps = [f.ccd_temp for f in lights if f.ccd_temp is not None]
    if not (temps and max(temps) - min(temps) > TEMP_DRIFT_WARN):  # (a NaN spread never warns)
        return []
    return [f"the CCD temperature of the lights ranged over {max(temps) - min(temps):.1f} degC "
            f"({min(temps):g} to {max(temps):g} degC): check the cooler"]


def _off_set_point(lights: Sequence[FrameRow]) -> list[str]:
    off_set = [f for f in lights if f.ccd_temp is not None and f.set_temp is not None
               and abs(f.ccd_temp - f.set_temp) > TEMP_DRIFT_WARN]
    if not off_set:
        return []
    return [f"{len(off_set)} lights were more than {TEMP_DRIFT_WARN:g} degC from the cooler set-point"]


def _rejecting_stacks(data: NightData) -> list[str]:
    warnings: list[str] = []
    for g in data.groups:
        st = g.stack
        if st is None:
            continue
        total = st.n_used + st.n_rejected
        if total and st.n_rejected / total > REJECT_WARN_FRACTION:
            warnings.append(f"stack {g.target} {g.filter or ''}: {st.n_rejected} of {total} frames were rejected "
                            "- see the stack's member list")
    return warnings


def _flat_gains(data: NightData, level: str) -> list[str]:
    """Master flats whose gain, measured from their inputs, disagrees with their lights' (or the
    lights have none): the uncertainties are off (`ccdwatch.detector.gain_check`)."""
    return [f"master flat #{m.id} ({m.filter or 'no filter'}, night {m.night}): {m.gain_check[1]}"
            for m in data.masters if m.kind == "flat" and m.latest and m.gain_check and m.gain_check[0] == level]


# ---------------------------------------------------------------------------- notes
def _raw_flats(data: NightData) -> list[str]:
    """Master flats made with nothing subtracted: their normalisation carries the bias offset."""
    return [f"master flat #{m.id} ({m.filter or 'no filter'}, night {m.night}) was made with no bias, dark or "
            "dark-flat subtracted: add biases or dark-flats of the flats' exposure to the library"
            for m in data.masters if m.kind == "flat" and m.latest and not m.bias_subtracted
            and not m.dark_subtracted]


def _scaled_darks(data: NightData) -> list[str]:
    scaled: dict[tuple[int, float], int] = Counter(
        (c.dark_id, round(c.dark_scale, 4)) for c in data.calibrated.values()
        if c.dark_id is not None and c.dark_scale is not None and abs(c.dark_scale - 1.0) > 1e-6)
    notes: list[str] = []
    for (mid, scale), n in sorted(scaled.items()):
        dark = data.master(mid)
        if dark is not None:
            notes.append(f"master dark #{mid} ({fmt_num(dark.exptime)} s) was scaled x{scale:g} for {n} lights "
                         "of another exposure time")
    return notes


def _rejected_calibrations(data: NightData) -> list[str]:
    """Calibration frames left out of their master (a flat saturated or too faint): the master
    was built from the others, or not at all and the lights wait (see Calibration coverage)."""
    rejected = sorted((f for f in data.frames.values() if f.imagetyp != "light" and f.state == "rejected"),
                      key=lambda f: f.name)
    by_kind = Counter(f.imagetyp for f in rejected)
    return [f"{n} {kind}{'s' * (n != 1)} rejected from their master: "
            + "; ".join(f"{f.name} ({f.state_reason or 'no reason recorded'})"
                        for f in [r for r in rejected if r.imagetyp == kind][:3])
            + (" ..." if n > 3 else "") for kind, n in sorted(by_kind.items())]


def _rejected_lights(lights: Sequence[FrameRow]) -> list[str]:
    rejected = [f for f in lights if f.state == "rejected"]
    if not rejected:
        return []
    return [f"{len(rejected)} light{'s' * (len(rejected) != 1)} rejected from stacks: "
            + "; ".join(f"{f.name} ({f.state_reason or 'no reason recorded'})" for f in rejected[:5])
            + (" ..." if len(rejected) > 5 else "")]


def _unstacked_lights(lights: Sequence[FrameRow]) -> list[str]:
    unstacked = [f for f in lights if f.state == "calibrated"]
    if not unstacked:
        return []
    reasons = Counter(f.state_reason or "not stacked yet" for f in unstacked)
    return ["calibrated lights not in a stack: " + "; ".join(f"{n} - {r}" for r, n in reasons.items())]


def _header_oddities(data: NightData) -> list[str]:
    hw = [f for f in data.frames.values() if f.header_warnings]
    if not hw:
        return []
    return [f"{len(hw)} frames had header oddities (listed in the frame table)"]


def _no_lights(lights: Sequence[FrameRow]) -> list[str]:
    return [] if lights else ["no light frames were catalogued for this night"]


def night_warnings(data: NightData, *, temperature_tolerance: float = 2.0) -> tuple[list[str], list[str]]:
    """What the observer should know first: (warnings, notes), plain text.

    Parameters
    ----------
    data : NightData
        The night, as read by :func:`collect`.
    temperature_tolerance : float
        The dark-matching tolerance in degC (``masters.temperature_tolerance``); a light whose
        CCD temperature is off its dark by more than ``min(DARK_TEMP_WARN, tolerance)`` is flagged.
    """
    lights = data.lights
    warnings = [
        *_problem_files(data),
        *_waiting_lights(lights),
        *_partial_calibration(data),
        *_mismatched_masters(data, temperature_tolerance),
        *_temperature_range(lights),
        *_off_set_point(lights),
        *_rejecting_stacks(data),
        *_raw_flats(data),
        *_rejected_calibrations(data),
        *_flat_gains(data, "warning"),
    ]
    notes = [
        *_scaled_darks(data),
        *_rejected_lights(lights),
        *_unstacked_lights(lights),
        *_header_oddities(data),
        *_flat_gains(data, "note"),
        *_no_lights(lights),
    ]
    return warnings, notes
