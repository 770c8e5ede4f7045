"""Flats whose level is unusable (saturated, or too faint) are kept out of their master.

Dawn flats exposed into saturation (level 80000 ADU, clipped at 65535) made a master flat ~1
everywhere that calibrated every light with no word: the calibrated sky kept its vignetting
(corners 0.787 of the centre, against 0.997 with good flats). Now such a flat is ``rejected``
with its reason, the master is built from the good ones (or not at all, and the lights wait
saying the flats were saturated), and the night report warns.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import colour, flatcheck, synth
from ccdwatch.catalog import Catalog
from ccdwatch.config import ConfigError, parse_config
from ccdwatch.daemon.watch import Watcher
from ccdwatch.models import Calibrated, Frame, Master
from ccdwatch.pipeline import Pipeline
from ccdwatch.report.checks import night_warnings
from ccdwatch.report.collect import collect

from .helpers import make_config

CAMERA = synth.Camera(shape=(128, 160))
SKY = 20.0  # ADU/s: 6000 ADU over a 300 s light, flat over the field (the truth)
START = datetime(2024, 3, 10, 20, 0, tzinfo=UTC)
NIGHT = {"camera": CAMERA, "seed": 3, "n_bias": 5, "n_dark": 5, "filters": ("V",), "n_light": 3,
         "light_exptime": 300.0, "dark_exptime": 300.0, "sky": SKY, "n_stars": 20}


# ---------------------------------------------------------------------------------- the numerics
def _flat(level: float, *, bias: float = 1000.0, shape: tuple[int, int] = (200, 240), seed: int = 1,
          vignetting: float = 0.25) -> np.ndarray:
    """A raw 16-bit flat: bias + level (at the centre; less ``vignetting`` at the corners) +
    Poisson noise, clipped."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape)
    r2 = ((y - shape[0] / 2) / shape[0]) ** 2 + ((x - shape[1] / 2) / shape[1]) ** 2
    signal = level * (1.0 - r2 / 0.5 * vignetting)
    return np.clip(bias + rng.poisson(signal), 0, 65535).astype(np.uint16)


def _judge(raw: np.ndarray, bias: float = 1000.0, **kw) -> str | None:
    return flatcheck.judge(raw, raw.astype(np.float32) - bias, 65535.0, **kw)


def test_a_good_flat_passes_saturated_and_faint_ones_are_named():
    assert _judge(_flat(20000.0)) is None
    why = _judge(_flat(80000.0))
    assert why is not None and why.startswith("saturated flat: median 65535 ADU is 100% of the saturation level")
    assert "masters.flat_max_level" in why
    faint = _judge(_flat(400.0))
    assert faint is not None and faint.startswith("too faint a flat: median") and "masters.flat_min_signal" in faint
    assert _judge(_flat(400.0), min_signal=0.0) is None  # no lower limit
    # 0.85 of 65535 = 55705 ADU raw: a flat at 54000 + 1000 bias passes, one at 55000 + 1000 does not
    assert _judge(_flat(54000.0, seed=2, vignetting=0.0)) is None
    assert _judge(_flat(55000.0, seed=2, vignetting=0.0)) is not None


def test_a_float_flat_scaled_to_one_is_not_too_faint():
    """A converter's float flat scaled to 0..1 (no ceiling known): its values are not ADU, and the
    faint-flat limit (ADU) does not apply; a float flat whose ceiling is known is judged as counts."""
    flat = (_flat(20000.0).astype(np.float32) - 1000.0) / 65535.0
    assert flatcheck.judge(flat, flat, float("inf")) is None
    faint = _flat(400.0).astype(np.float32)  # a float frame of counts whose ceiling is known
    assert "too faint" in (flatcheck.judge(faint, faint - 1000.0, 65535.0) or "")


def test_a_flat_whose_centre_is_clipped_is_saturated_though_its_median_is_not():
    raw = _flat(60000.0)  # the centre (up to 61000 raw) clips, the corners (45000) do not
    raw[raw > 60000] = 65535
    share = np.count_nonzero(raw == 65535) / raw.size
    assert 0.01 < share < 0.5 and np.median(raw) < 0.85 * 65535 * 1.05
    why = flatcheck.judge(raw, raw - 1000.0, 65535.0, max_level=0.99)
    assert why is not None and "of its pixels are at the saturation level" in why
    assert flatcheck.judge(raw, raw - 1000.0, 65535.0, max_level=0.99, max_saturated=0.9) is None


def test_a_mosaic_is_judged_colour_by_colour():
    """A red lamp: R clips at 65535 while G and B are at 30000 and 15000. The median of the
    frame (what a monochrome test, or the 2x2-cell means of the ingest's pixel statistics, would
    see: ~40000, 62% of full scale) passes; R's does not."""
    raw = _flat(30000.0).astype(np.float64)
    cell = {"R": (0, 0), "B": (1, 1)}
    raw[0::2, 0::2] = 65535.0
    raw[1::2, 1::2] = 1000.0 + (raw[1::2, 1::2] - 1000.0) / 2
    raw = raw.astype(np.uint16)
    assert np.median(raw) < 0.85 * 65535 and np.median(colour.bin_cells(raw)) < 0.85 * 65535
    sites = colour.channel_sites("RGGB")
    why = flatcheck.judge(raw, raw - 1000.0, 65535.0, channels=sites)
    assert why is not None and why.startswith("saturated flat: median (R) 65535 ADU")
    # B, at 15000 raw, is the faintest: a limit above it names it
    dy, dx = cell["B"]
    assert np.median(raw[dy::2, dx::2]) - 1000 < 15000
    why = flatcheck.judge(raw, raw - 1000.0, np.inf, channels=sites, min_signal=15000.0)
    assert why is not None and why.startswith("too faint a flat: median (B)")


@pytest.mark.parametrize(("key", "value", "words"), [
    ("flat_max_level", 0.0, "'masters.flat_max_level' must be a fraction in (0, 1]"),
    ("flat_max_level", 1.5, "e.g. flat_max_level = 0.85"),
    ("flat_max_saturated", -0.1, "'masters.flat_max_saturated' must be a fraction in [0, 1]"),
    ("flat_min_signal", -5, "'masters.flat_min_signal' must be >= 0, got -5"),
    ("flat_min_signal", float("nan"), "'masters.flat_min_signal' must be >= 0, got nan"),
])
def test_the_limits_are_validated_with_the_key_and_the_fix(tmp_path, key, value, words):
    with pytest.raises(ConfigError) as err:
        parse_config({"masters": {key: value}}, base=tmp_path)
    assert words in str(err.value)
    assert parse_config({"masters": {"flat_max_level": 1, "flat_max_saturated": 0, "flat_min_signal": 0}},
                        base=tmp_path).masters.flat_max_level == 1.0


# ---------------------------------------------------------------------------------- the pipeline
def _night(tmp_path: Path, flat_level: float, *, bad: tuple[float, int] | None = None):
    """A night of ``flat_level`` flats (plus ``bad[1]`` flats at level ``bad[0]``, the same
    filter and night: taken two minutes later), run through the daemon once."""
    cfg = make_config(tmp_path)
    truth = synth.make_night(cfg.paths.incoming, n_flat=5, flat_level=flat_level, start=START, **NIGHT)
    if bad is not None:
        other = tmp_path / "other"
        synth.make_night(other, n_flat=bad[1], flat_level=bad[0],
                         start=START + timedelta(minutes=2), **NIGHT)
        for p in sorted(other.glob("flat_*.fits")):
            shutil.copy(p, cfg.paths.incoming / p.name.replace("flat_", "flatbad_"))
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    return truth, cat


def _vignetting_left(cat: Catalog, truth: synth.NightTruth) -> list[float]:
    """Each calibrated light's sky at the corners over its sky at the centre, away from the
    stars and hot pixels of the truth (the truth: 1; the camera's corners get 0.75 of the light)."""
    out = []
    ny, nx = CAMERA.shape
    centre = np.zeros(CAMERA.shape, bool)
    centre[ny // 2 - 10:ny // 2 + 10, nx // 2 - 10:nx // 2 + 10] = True
    corners = np.zeros(CAMERA.shape, bool)
    corners[:12, :12] = corners[-12:, -12:] = True
    with cat.reader() as s:
        lights = s.scalars(select(Frame).where(Frame.imagetyp == "light").order_by(Frame.date_obs)).all()
        for i, light in enumerate(lights):
            c = s.scalars(select(Calibrated).where(Calibrated.frame_id == light.id, Calibrated.current)).one()
            data = fits.getdata(c.path)
            stars = synth.render_stars(CAMERA.shape, truth.light_stars(i), fwhm=3.0, exptime=300.0)
            sky = (stars < 1.0) & ~synth.hot_pixels(CAMERA)
            out.append(float(np.median(data[corners & sky]) / np.median(data[centre & sky])))
    return out


def test_saturated_flats_build_no_master_and_the_lights_say_why(tmp_path):
    _, cat = _night(tmp_path, 80000.0)
    try:
        with cat.reader() as s:
            assert s.scalars(select(Master).where(Master.kind == "flat")).all() == []
            flats = s.scalars(select(Frame).where(Frame.imagetyp == "flat")).all()
            assert len(flats) == 5 and {f.state for f in flats} == {"rejected"}
            assert all(f.state_reason.startswith("saturated flat: median 65535 ADU is 100% of the saturation level")
                       for f in flats)
            assert all(any(e.kind == "rejected" for e in f.events) for f in flats)
            lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
            assert {f.state for f in lights} == {"waiting"}
            assert all("5 flats for filter 'V' were rejected (saturated flat" in f.state_reason for f in lights)
            warnings, _ = night_warnings(collect(s, flats[0].night))
        assert any(w.startswith("5 flats rejected from their master: flat_V_001.fits (saturated flat") for w in warnings)
    finally:
        cat.close()


def test_the_master_is_built_from_the_good_flats_alone(tmp_path):
    """5 good flats and 3 saturated ones of the same filter and night: the master is the good
    ones' and flattens the lights (before: all 8 combined, the vignetting partly left in)."""
    truth, cat = _night(tmp_path, 20000.0, bad=(80000.0, 3))
    try:
        with cat.reader() as s:
            flat = s.scalars(select(Master).where(Master.kind == "flat")).one()
            assert flat.n_frames == 5 and len(flat.inputs) == 5
            rejected = s.scalars(select(Frame).where(Frame.state == "rejected")).all()
            assert sorted(Path(f.path).name for f in rejected) == [f"flatbad_V_00{i}.fits" for i in (1, 2, 3)]
            assert {f.id for f in rejected}.isdisjoint({i.frame_id for i in flat.inputs})
            header = fits.getheader(flat.path)
            assert header["NCOMBINE"] == 5 and header["NREJECT"] == 3
            assert header["FLATMIN"] == 0.05 and header["NFLATLOW"] == 0  # the synthetic camera has no dead pixel
            assert len(fits.getdata(flat.path, "INPUTS")) == 5
        ratios = _vignetting_left(cat, truth)  # 0.997-1.001; before: 0.987-0.991 (all 8 combined)
        assert len(ratios) == 3 and all(abs(r - 1.0) < 0.005 for r in ratios), ratios
    finally:
        cat.close()


def test_too_faint_flats_are_rejected(tmp_path):
    _, cat = _night(tmp_path, 400.0)
    try:
        with cat.reader() as s:
            flats = s.scalars(select(Frame).where(Frame.imagetyp == "flat")).all()
            assert {f.state for f in flats} == {"rejected"}
            assert all(f.state_reason.startswith("too faint a flat: median") for f in flats)
            assert s.scalars(select(Master).where(Master.kind == "flat")).all() == []
    finally:
        cat.close()
    # the observer accepts such flats after all: the limit off, `retry --state rejected`, and the
    # next run builds the master from them
    from ccdwatch.cli import main

    args = ["--incoming", str(tmp_path / "incoming"), "--products", str(tmp_path / "products"),
            "--db", str(tmp_path / "state" / "ccdwatch.db")]
    (tmp_path / "lenient.toml").write_text("[masters]\nflat_min_signal = 0\n[workers]\nprocesses = 0\n")
    assert main([*args, "--config", str(tmp_path / "lenient.toml"), "retry", "--state", "rejected"]) == 0
    assert main([*args, "--config", str(tmp_path / "lenient.toml"), "-q", "watch", "--once"]) == 0
    with Catalog(str(tmp_path / "state" / "ccdwatch.db"), writer=False) as again, again.reader() as s:
        assert s.scalar(select(Master).where(Master.kind == "flat")).n_frames == 5
