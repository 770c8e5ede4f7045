"""Synthetic nights for the benchmarks, generated with `ccdwatch.synth` and cached on disk."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ccdwatch.synth import Camera, make_night, transform_stars

logger = logging.getLogger(__name__)

#: Frame sizes (ny, nx) by name. "24m" is the 6000x4000 memory case.
SIZES: dict[str, tuple[int, int]] = {
    "1k": (1024, 1024),
    "2k": (2048, 2048),
    "4k": (4096, 4096),
    "24m": (4000, 6000),
}

#: The night of issue 7: 10 bias, 5 darks of 300 s (scaled to the lights' 200 s), 5 flats and 8
#: dithered lights per filter, in V and R.
NIGHT = dict(n_bias=10, n_dark=5, n_flat=5, n_light=8, filters=("V", "R"), dark_exptime=300.0,
             light_exptime=200.0, dither=8.0, rotation=0.2, seed=7)

#: Night shapes by name (issue 17). "scaled": the night above (Siril runs its ``-opt`` dark
#: search). "matched": 10 bias, 10 darks matched to the lights' exposure, 10 flats and 40 lights in
#: one filter (the common case: no dark scaling anywhere). "small": the same with 8 lights.
SHAPES: dict[str, dict] = {
    "scaled": NIGHT,
    "matched": dict(n_bias=10, n_dark=10, n_flat=10, n_light=40, filters=("V",), dark_exptime=200.0,
                    light_exptime=200.0, dither=8.0, rotation=0.2, seed=17),
    "small": dict(n_bias=10, n_dark=10, n_flat=10, n_light=8, filters=("V",), dark_exptime=200.0,
                  light_exptime=200.0, dither=8.0, rotation=0.2, seed=18),
}

VERSION = 2  # bump when the recipe changes, to invalidate cached nights


def stars_for(shape: tuple[int, int]) -> int:
    """A star density like a modest field: ~60 stars per Mpix, at least 60."""
    return max(60, int(60 * shape[0] * shape[1] / 1e6))


def night_dir(size: str, shape: str = "scaled") -> str:
    """Directory name of a night under the cache root: ``2k`` (the scaled night), ``2k-matched``..."""
    return size if shape == "scaled" else f"{size}-{shape}"


def night(root: Path, size: str, shape: str = "scaled") -> dict:
    """Generate (or reuse) the benchmark night of ``size`` and ``shape`` under ``root``; returns its manifest.

    The manifest holds the file lists by kind and the ground truth needed to judge alignment
    accuracy: true star positions on each light.
    """
    recipe = SHAPES[shape]
    name = night_dir(size, shape)
    frame_shape = SIZES[size]
    base = root / name
    manifest_path = base / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") == VERSION and all(Path(p).exists() for ps in manifest["files"].values() for p in ps):
            return manifest
    shutil.rmtree(base, ignore_errors=True)
    incoming = base / "incoming"
    logger.info("generating the %s night (%dx%d) in %s", name, frame_shape[1], frame_shape[0], incoming)
    truth = make_night(incoming, camera=Camera(shape=frame_shape), n_stars=stars_for(frame_shape), **recipe)
    lights = []
    for i, path in enumerate(truth.files["light"]):
        st = truth.light_stars(i)
        lights.append({"path": str(path), "filter": truth.light_filters[i], "shift": truth.shifts[i],
                       "x": st.x.tolist(), "y": st.y.tolist()})
    manifest = {
        "version": VERSION, "size": size, "night": shape, "name": name, "shape": list(frame_shape),
        "incoming": str(incoming),
        "files": {k: [str(p) for p in v] for k, v in truth.files.items()},
        "flat_filters": truth.flat_filters, "lights": lights,
        "exptimes": truth.exptimes, "n_stars": stars_for(frame_shape),
    }
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def small_lights(directory: Path, n: int, *, shape: tuple[int, int] = (64, 64)) -> list[Path]:
    """``n`` small distinct light frames (for the catch-up ingest rate), reused when present."""
    marker = directory / f".complete-{n}-{shape[0]}x{shape[1]}"
    if marker.exists():
        return sorted(directory.glob("*.fits"))
    shutil.rmtree(directory, ignore_errors=True)
    per = (n + 1) // 2
    truth = make_night(directory, camera=Camera(shape=shape), n_bias=0, n_dark=0, n_flat=0,
                       filters=("V", "R"), n_light=per, light_exptime=30.0, overhead=2.0,
                       n_stars=8, dither=2.0, seed=11)
    files = truth.files["light"]
    for extra in files[n:]:
        extra.unlink()
    marker.touch()
    return files[:n]


__all__ = ["NIGHT", "SHAPES", "SIZES", "night_dir", "night", "small_lights", "stars_for", "transform_stars"]
