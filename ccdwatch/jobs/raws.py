"""Raw frames in the jobs: read a catalogued frame back (:func:`load_raw`) and handle its overscan
before anything else (:func:`prepare`), and the cards that tell what was done (:func:`overscan_cards`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from astropy.io import fits

from ccdwatch.fitsio import RejectedFile, read_raw
from ccdwatch.fitsio.rejected import RawGone
from ccdwatch.headers.sections import OverscanPlan

__all__ = ["RawGone", "load_raw", "overscan_cards", "prepare"]


def load_raw(paths: Sequence[str], sha256: str, *, max_data_bytes: int, allow_compressed: bool,
             last_read: bool = False) -> np.ndarray:
    """Pixels of a catalogued raw frame from the first path whose content still matches.

    ``last_read``: nothing is expected to read the file again soon (a light being calibrated): its
    pages leave the page cache once read (`ccdwatch.fitsio.read_raw`'s ``drop_cache``).

    Raises :class:`RawGone` when no path holds the content any more; any other error (memory,
    a file that turned unreadable) is raised as it is.
    """
    gone: list[str] = []
    other: BaseException | None = None
    for p in paths:
        try:
            raw = read_raw(p, max_data_bytes=max_data_bytes, allow_compressed=allow_compressed, drop_cache=last_read)
        except FileNotFoundError:
            gone.append(f"{p} is gone")
            continue
        except (OSError, RejectedFile) as exc:
            other = exc
            continue
        if raw.sha256 == sha256 and raw.data is not None:
            return raw.data
        gone.append(f"{p} no longer holds the catalogued content (sha256 {sha256[:12]}...)")
    if other is not None:
        raise other
    raise RawGone(sha256, "; ".join(gone) or "no path recorded")


def prepare(raw: np.ndarray, plan: OverscanPlan | None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """A raw frame's overscan subtracted, then trimmed (the first thing done to any raw frame).

    Returns the image to calibrate (``raw`` itself without a plan: nothing changes), the raw
    pixels of its data section as they were (a view, for the saturation mask) and the mean
    overscan level subtracted (None when none was).
    """
    if plan is None:
        return raw, raw, None
    image, level = plan.apply(raw)
    return image, plan.trim(raw), level


def overscan_cards(header: fits.Header, plan: OverscanPlan | None, level: float | None,
                   shape: tuple[int, ...], *, what: str = "") -> None:
    """Say in a product's header (in place) what was done to its raw frame(s): OVERSCAN (the level
    subtracted, ADU), OSMETHOD, OSSEC and OSTRIM (the raw sections); the raw frame's BIASSEC is
    dropped and TRIMSEC/DATASEC describe the product (all of it is data). Nothing without a plan."""
    if plan is None:
        return
    for key in ("BIASSEC", "TRIMSEC", "DATASEC"):
        header.remove(key, ignore_missing=True, remove_all=True)
    whole = f"[1:{shape[-1]},1:{shape[-2]}]"
    header["TRIMSEC"] = (whole, "data section of this product: all of it")
    header["DATASEC"] = (whole, "data section of this product: all of it")
    if plan.biassec and level is not None:
        header["OVERSCAN"] = (round(float(level), 4), f"overscan level subtracted{what}, ADU")
    header["OSMETHOD"] = (plan.method if plan.biassec else "none", "overscan level: median|fit|none (trim only)")
    if plan.method == "fit" and plan.biassec:
        header["OSORDER"] = (plan.order, "degree of the overscan fit along the readout")
    if plan.biassec:
        header["OSSEC"] = (plan.biassec, "overscan section of the raw frame")
    if plan.trimsec:
        header["OSTRIM"] = (plan.trimsec, "section of the raw frame kept (trimmed)")
    done = "overscan subtracted, then " if plan.biassec else ""
    header.add_history(f"ccdwatch: {done}trimmed to raw {plan.trimsec or 'whole frame'}"[:72])
