"""What the pixels say a frame is: a verdict from a few robust statistics (pure, no numpy).

The statistics are measured by :func:`ccdwatch.evidence.measure` on the worker that reads the
frame, and stored with the frame, so that a frame can be reclassified without reading it again.
Pixels are asked only where the header and the path give no type or disagree, and they answer
only with positive evidence:

- a **flat** has a high level (a good fraction of the full scale) that is smooth: no star field;
- a **light** has a star field (several compact sources well above its sky);
- a **bias** has no exposure (<= 1 ms), a low level and no sources.

A dark cannot be told from a light through thick cloud by its pixels, so pixels never say dark.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

#: Level above which a frame without sources is flat-like, as a fraction of its full scale.
FLAT_LEVEL_FRACTION = 0.08
#: Compact sources that make a star field.
MIN_STARS = 5
#: Exposures up to this long (s) can be biases.
BIAS_MAX_EXPTIME = 0.001


@dataclass(frozen=True)
class PixelEvidence:
    """Robust statistics of a frame's pixels (ADU, as stored)."""

    level: float
    """Median of the frame."""
    noise: float
    """Pixel-to-pixel noise (robust sigma of neighbour differences / sqrt 2)."""
    full_scale: float
    """The largest value the data type or the camera can hold (65535 for 16-bit data)."""
    n_sources: int
    """Compact groups of pixels well above the level (stars, not single hot pixels)."""
    structure: float
    """Spread of the large-scale level (robust sigma of 16x16-block medians) over the level."""
    adc_shift: int = 0
    """Low bits that are zero in every pixel: a 12-bit (14-bit) CMOS whose values are shifted
    into 16 bits (ZWO, QHY...) has 4 (2). Its saturation is ``65535 - (2**shift - 1)``."""

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> PixelEvidence | None:
        if not data:
            return None
        try:
            return cls(level=float(data["level"]), noise=float(data["noise"]),
                       full_scale=float(data["full_scale"]), n_sources=int(data["n_sources"]),
                       structure=float(data["structure"]), adc_shift=int(data.get("adc_shift", 0)))
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        """The statistics for a reason (`DESCRIPTION` finds them in one)."""
        return (f"level {self.level:.0f} ADU ({100 * self.level / max(self.full_scale, 1.0):.0f}% of full scale), "
                f"{self.n_sources} star-like sources")


#: `PixelEvidence.describe`'s text in parentheses, as a reason holds it: what is particular to
#: one frame, which the advice leaves out to group frames by reason.
DESCRIPTION = re.compile(r" ?\(level -?\d+ ADU \(-?\d+% of full scale\), \d+ star-like sources\)")


def pixel_verdict(ev: PixelEvidence | None, exptime: float | None) -> tuple[str | None, str]:
    """('flat' | 'light' | 'bias' | None, why) from the pixels' positive evidence."""
    if ev is None:
        return None, "no pixel statistics"
    fraction = ev.level / max(ev.full_scale, 1.0)
    if ev.n_sources >= MIN_STARS:
        return "light", f"a star field ({ev.describe()})"
    if ev.n_sources <= 1 and fraction >= FLAT_LEVEL_FRACTION:
        return "flat", f"a high, smooth level without stars ({ev.describe()})"
    if exptime is not None and exptime <= BIAS_MAX_EXPTIME and ev.n_sources == 0 \
            and fraction < FLAT_LEVEL_FRACTION / 4:
        return "bias", f"no exposure and a low, empty frame ({ev.describe()})"
    return None, f"pixels are not conclusive ({ev.describe()})"
