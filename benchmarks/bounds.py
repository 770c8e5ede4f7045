"""Stage bounds: what bare numpy + astropy need for the same work, with nothing else around it.

Run as ``python -m benchmarks.bounds MANIFEST OUT_DIR [TEMPLATE]``; prints one JSON line with the
timings:

``read_per_frame``
    ``astropy.io.fits.getdata`` of every raw frame (uint16 with BZERO), s per frame.
``calibrate_per_light``
    per light: read, ``(raw - bias - dark * t/t_dark) / flat`` in float32, and write the same
    planes as the daemon's calibrated product, s (median).

The planes written are those of ``TEMPLATE``, a calibrated product the daemon wrote for this night
(its primary image, then every extension in order), so that the bound does the same product work
as the daemon's job whatever planes the product gains: the image is the calibrated light; a
``BADPIX`` plane is the master dark's hot pixels; any other image plane is computed from the
calibrated light with one numpy operation of its dtype (a float plane: ``|data| + 25``, the cost of
a Poisson + read-noise variance; an integer one: a comparison); a table is written with the
template's rows (its content comes from the quality measurement, which the bound does not do).
Without a template: the image and a BADPIX plane. The bound neither checksums nor syncs to disk.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits


def plane_makers(template: str | None):
    """For each extension of the template, ``(name, make(data, hot) -> HDU)``."""
    if not template:
        return [("BADPIX", lambda data, hot: fits.ImageHDU(hot.astype(np.uint8), name="BADPIX"))]
    makers = []
    with fits.open(template) as hdus:
        for hdu in hdus[1:]:
            name = hdu.name
            if isinstance(hdu, fits.BinTableHDU):
                rows = hdu.data.copy()
                makers.append((name, lambda data, hot, rows=rows, name=name: fits.BinTableHDU(rows, name=name)))
            elif name == "BADPIX":
                makers.append((name, lambda data, hot: fits.ImageHDU(hot.astype(np.uint8), name="BADPIX")))
            elif hdu.data is not None and hdu.data.dtype.kind == "f":
                dt = hdu.data.dtype.newbyteorder("=")
                makers.append((name, lambda data, hot, dt=dt, name=name: fits.ImageHDU(
                    (np.abs(data) + np.float32(25.0)).astype(dt, copy=False), name=name)))
            elif hdu.data is not None:
                dt = hdu.data.dtype.newbyteorder("=")
                makers.append((name, lambda data, hot, dt=dt, name=name: fits.ImageHDU(
                    (data > np.float32(1e4)).astype(dt), name=name)))
    return makers


class SlicedWriter:
    """A file that takes astropy's writes a slice at a time. On this VM (Linux 6.18: the page
    cache of a large write takes large folios, which come from memory the host has taken back)
    one 36 MB ``write`` of fresh pages cost 93-170 ms, the same bytes in 256 KiB writes 4 ms; the
    daemon writes its products in such slices (`ccdwatch.fitsio.atomic`, while hashing them), and
    the bound must not pay what the daemon does not: before, its light cost 44 or 115 ms depending
    on whether the kernel had just freed pages to give it, and the median flipped between the two."""

    SLICE = 256 << 10

    def __init__(self, fh: io.BufferedWriter) -> None:
        self._fh = fh
        self._pos = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, self.SLICE):
            self._fh.write(view[start:start + self.SLICE])
        self._pos += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._fh.flush()


#: How the bound writes its file: astropy's own ``writeto`` of the path (a few large writes), or in
#: slices (`SlicedWriter`). Which is faster depends on this VM's memory: on pages the guest used a
#: moment ago the plain write (~21 ms a 2k light, 2026-12-01), on fresh ones the slices (see
#: `SlicedWriter`); `benchmarks.stages` times both beside each job and takes the faster.
WRITERS = ("sliced", "plain")


def light_bound(raw_path: str, offset: np.ndarray, flat: np.ndarray, hot: np.ndarray, makers: list,
                out_path: Path, writer: str = "sliced") -> None:
    """The bound's work for one light: read, calibrate in float32, write the planes of ``makers``
    (``writer``: one of `WRITERS`)."""
    raw = fits.getdata(raw_path)
    data = ((raw - offset) / flat).astype(np.float32, copy=False)
    hdus = fits.HDUList([fits.PrimaryHDU(data)] + [make(data, hot) for _, make in makers])
    if writer == "plain":
        hdus.writeto(out_path)
        return
    with open(out_path, "wb") as fh:
        hdus.writeto(SlicedWriter(fh))


def main(manifest_path: str, out: str, template: str | None = None) -> None:
    m = json.loads(Path(manifest_path).read_text())
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = m["files"]
    everything = [p for kind in ("bias", "dark", "flat", "light") for p in files[kind]]
    t0 = time.perf_counter()
    for p in everything:
        fits.getdata(p)
    read = (time.perf_counter() - t0) / len(everything)

    # masters made the plainest way (untimed: the bound is per light)
    bias = np.mean([fits.getdata(p).astype(np.float32) for p in files["bias"]], axis=0, dtype=np.float32)
    dark = np.median([fits.getdata(p).astype(np.float32) - bias for p in files["dark"]], axis=0)
    hot = dark > np.median(dark) + 10 * np.std(dark)
    flats = {}
    for filt in sorted(set(m["flat_filters"])):
        fl = np.median([(fits.getdata(p).astype(np.float32) - bias)
                        for p, f in zip(files["flat"], m["flat_filters"], strict=False) if f == filt], axis=0)
        flats[filt] = (fl / np.median(fl)).astype(np.float32)
    scale = np.float32(m["exptimes"]["light"] / m["exptimes"]["dark"])
    offset = bias + dark * scale
    makers = plane_makers(template)

    times = []
    for light in m["lights"]:
        t0 = time.perf_counter()
        light_bound(light["path"], offset, flats[light["filter"]], hot, makers, out_dir / Path(light["path"]).name)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"read_per_frame": read, "calibrate_per_light": float(np.median(times)),
                      "calibrate_per_light_all": times, "n_frames": len(everything),
                      "planes": ["PRIMARY"] + [name for name, _ in makers]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
