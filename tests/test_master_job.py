"""The master job (`tasks.build_master`) on a synthetic night: its statistics against the camera's
truth, and the same bytes (master and preview) whatever the threads it is given.

With more than one thread the job measures its noise cards beside the combination and draws its
preview beside the statistics and the FITS write (which byte-swaps the master in place for a
moment): whatever it overlaps, the products must come out the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ccdwatch import synth
from ccdwatch.fitsio import sha256_file
from ccdwatch.jobs import tasks

CAMERA = synth.Camera(shape=(160, 192))
DARK_EXPTIME = 300.0


@pytest.fixture(scope="module")
def raws(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("night")
    synth.make_night(d, camera=CAMERA, seed=7, n_bias=7, n_dark=5, n_flat=5, filters=("V",), n_light=1,
                     n_stars=20, dark_exptime=DARK_EXPTIME)
    return d


def _spec(raws: Path, out: Path, kind: str, threads: int, **masters: str) -> tasks.MasterSpec:
    frames = tuple(((str(p),), sha256_file(p)) for p in sorted(raws.glob(f"{kind}_*.fits")))
    return tasks.MasterSpec(
        kind=kind, frames=frames, bias_path=masters.get("bias"), dark_path=masters.get("dark"),
        dark_scale=None, method="sigma_clip" if kind == "bias" else "median", sigma=3.0, memory_budget=64 << 20,
        hot_pixel_sigma=5.0, out_path=str(out / f"{kind}.fits"), header={"OBJECT": kind},
        inputs_table=tuple((Path(p[0]).name, h) for p, h in frames), workdir=str(out / "work"),
        max_data_bytes=1 << 30, allow_compressed=False, preview_path=str(out / f"{kind}.png"),
        preview_title=f"master {kind}", threads=threads)


def _build(raws: Path, out: Path, threads: int) -> dict[str, tasks.MasterResult]:
    out.mkdir()
    bias = tasks.build_master(_spec(raws, out, "bias", threads))
    dark = tasks.build_master(_spec(raws, out, "dark", threads, bias=str(out / "bias.fits")))
    flat = tasks.build_master(_spec(raws, out, "flat", threads, bias=str(out / "bias.fits")))
    return {"bias": bias, "dark": dark, "flat": flat}


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.*"))}


def test_masters_measure_the_camera_and_threads_change_no_byte(raws, tmp_path):
    one = _build(raws, tmp_path / "one", threads=1)
    two = _build(raws, tmp_path / "two", threads=2)
    assert [n for n in _digests(tmp_path / "one") if n.endswith(".png")] == ["bias.png", "dark.png", "flat.png"]
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    for r1, r2 in zip(one.values(), two.values(), strict=True):  # all but the preview's path (its directory)
        assert dataclasses.replace(r1, preview_path=None) == dataclasses.replace(r2, preview_path=None)
        assert r2.preview_path is not None and Path(r2.preview_path).parent == tmp_path / "two"

    # the truth: bias level and read noise (RDNOIADU, from the biases), dark current, flat response
    bias = fits.getheader(tmp_path / "two" / "bias.fits")
    assert abs(one["bias"].mean - CAMERA.bias_level) < 1.0
    assert bias["RDNOIADU"] == pytest.approx(CAMERA.read_noise, rel=0.05)
    expected_dark = CAMERA.dark_current * DARK_EXPTIME
    assert one["dark"].mean == pytest.approx(expected_dark, abs=0.5)
    hot = fits.getdata(tmp_path / "two" / "dark.fits", "HOTPIX").astype(bool)
    true_hot = synth.dark_rate(CAMERA) * DARK_EXPTIME > expected_dark + 5 * 5 * CAMERA.read_noise / np.sqrt(5)
    assert one["dark"].hot_pixels == hot.sum() and (hot & true_hot).sum() >= 0.9 * true_hot.sum() > 0
    flat = fits.getdata(tmp_path / "two" / "flat.fits")
    assert np.median(np.abs(flat / synth.flat_response(CAMERA) - 1.0)) < 0.01
    assert one["flat"].gain is not None and one["flat"].gain[0] == pytest.approx(CAMERA.gain, rel=0.05)
