"""How the report writes values: HTML escaping, numbers, times, durations and group labels."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

import numpy as np

from ccdwatch.report.rows import Group

__all__ = ["esc", "fmt_duration", "fmt_num", "fmt_time", "group_label", "mpl_text"]


def esc(value: Any) -> str:
    """HTML-escape anything (None becomes an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def fmt_num(x: float | None, fmt: str = "g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not np.isfinite(x):
        return "-"
    return format(x, fmt)


def fmt_time(dt: datetime | None, *, date: bool = False) -> str:
    if dt is None:
        return "-"
    return dt.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def fmt_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:g} s"
    minutes = seconds / 60.0
    if minutes < 60:
        return f"{minutes:.1f} min"
    h, m = divmod(round(minutes), 60)
    return f"{h} h {m:02d} min"


def mpl_text(text: str) -> str:
    """Text safe for a matplotlib title (a lone '$' would start mathtext and fail)."""
    return text.replace("$", r"\$")


def group_label(g: Group) -> str:
    """``target · filter · exposure``, after the site in a report of several sites."""
    exp = f"{g.exptime:g} s" if g.exptime is not None else "? s"
    return (f"{g.site} · " if g.site else "") + f"{g.target} · {g.filter or 'no filter'} · {exp}"
