"""Which temperature a dark was taken at, and which darks make one master.

* Programs write SET-TEMP whatever the cooler achieved (N.I.N.A., MaxIm, SGP): the set-point stands
  for the temperature only when the measured CCD-TEMP is within ``masters.temperature_tolerance``
  of it; else the measured temperature is used, and the frame says so.
* Without a set-point (Ekos/INDI write only CCD-TEMP) the measured temperature jitters: darks of one
  night, set-up and exposure within the tolerance of each other make one master (a cooler hovering
  around -4.5 degC made one master at -4 and one at -5, each maybe too few to be built), and its key
  does not change as more darks arrive; darks at other temperatures make masters of their own.

Ground truth from :mod:`ccdwatch.synth`: a warm camera is the same camera (same fixed pattern) with
8x the dark current, as a sensor ~15 degC warmer has.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.daemon.watch import Watcher
from ccdwatch.headers import normalise
from ccdwatch.keys import CalibKey, calib_keys, temperature_clusters, temperature_ref
from ccdwatch.models import Calibrated, Frame, FrameState, Master
from ccdwatch.pipeline import Pipeline

from .helpers import make_config

COLD = synth.Camera(shape=(64, 80), hot_pixel_fraction=2e-3)
#: the same sensor, warm: 8x the dark current and hot pixels 8x as bright
WARM = dataclasses.replace(COLD, dark_current=0.4, hot_pixel_rate=160.0)
START = datetime(2024, 7, 1, 21, 0, tzinfo=UTC)
SKY = 2.0  # ADU/s
EXPTIME = 300.0


def shoot(incoming: Path, name: str, camera: synth.Camera, kind: str, *, minute: float, seed: int,
          exptime: float = EXPTIME, cards: dict[str, object] | None = None, style: str = "maxim") -> Path:
    """One frame of ``camera`` (headers as MaxIm writes them, with ``cards`` replacing theirs)."""
    rng = np.random.default_rng(seed)
    sky = SKY if kind == "light" else 0.0
    data = synth.expose(camera, kind=kind, exptime=exptime, rng=rng, sky=sky)
    hdr = synth.frame_header(camera, kind=kind, exptime=exptime, date_obs=START + timedelta(minutes=minute),
                             filter="V" if kind in ("flat", "light") else None,
                             object="M51" if kind == "light" else None, style=style)
    hdr.update(cards or {})
    return synth.write_fits(incoming / f"{name}.fits", synth.quantise(data), hdr)


def run_once(cfg) -> Catalog:
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    return cat


def in_adu(path: str) -> np.ndarray:
    """A calibrated product's pixels in ADU (it is in electrons when the gain is known)."""
    return fits.getdata(path) / fits.getheader(path).get("GAIN", 1.0)


def frame_like(**values: object) -> SimpleNamespace:
    base = {"imagetyp": "dark", "camera_key": "cam", "exptime": 300.0, "filter": None, "set_temp": None,
            "ccd_temp": None, "night": "2024-07-01", "date_obs": None, "sha256": None}
    return SimpleNamespace(**{**base, **values})


def darks_at(*temps: float | None, set_temp: float | None = None, start: int = 0) -> list[SimpleNamespace]:
    """Darks one minute apart, in time order, at these measured temperatures."""
    return [frame_like(ccd_temp=t, set_temp=set_temp, date_obs=datetime(2024, 7, 1, 22, start + i),
                       sha256=f"{start + i:064x}") for i, t in enumerate(temps)]


def key_texts(frames, tolerance: float = 2.0) -> list[str]:
    return [str(k).rsplit("|", 1)[1] for k in calib_keys(frames, tolerance)]


# ------------------------------------------------------------------------ set-point not reached
@pytest.mark.parametrize(("ccd", "expected"), [(-10.0, -10.0), (-9.9, -10.0), (-8.0, -10.0), (-7.9, -7.9),
                                               (18.3, 18.3), (None, -10.0)])
def test_set_point_stands_only_when_reached(ccd, expected):
    frame = frame_like(set_temp=-10.0, ccd_temp=ccd)
    assert temperature_ref(frame, 2.0) == expected
    assert temperature_ref(frame_like(ccd_temp=ccd), 2.0) == ccd  # no set-point: the measured one


def test_darks_off_their_set_point_are_not_keyed_at_it():
    reached = CalibKey.of(frame_like(set_temp=-10.0, ccd_temp=-9.9), 2.0)
    warm = CalibKey.of(frame_like(set_temp=-10.0, ccd_temp=18.3), 2.0)
    assert str(reached).endswith("|T=-10")
    assert warm != reached and str(warm).endswith("|T=18.3")


def test_header_warns_when_the_sensor_missed_its_set_point():
    base = {"IMAGETYP": "DARK", "EXPTIME": 300.0, "DATE-OBS": "2024-07-01T23:00:00", "INSTRUME": "ZWO ASI294MM Pro",
            "SET-TEMP": -10.0}
    warm = normalise({**base, "CCD-TEMP": 18.3}, filename="dark.fits", timezone="UTC")
    assert any("sensor not at its set-point" in w and "18.3" in w for w in warm.warnings)
    cold = normalise({**base, "CCD-TEMP": -9.9}, filename="dark.fits", timezone="UTC")
    assert not any("set-point" in w for w in cold.warnings)
    strict = normalise({**base, "CCD-TEMP": -9.0}, filename="dark.fits", timezone="UTC", setpoint_tolerance=0.5)
    assert any("sensor not at its set-point" in w for w in strict.warnings)


def test_warm_lights_get_the_warm_darks_not_the_set_point_ones(tmp_path):
    """A summer night: the cooler set to -20 reaches it at dusk (5 darks), then gives up at -5,
    where 5 more darks and the lights are taken; every header says SET-TEMP = -20. The warm lights
    must be calibrated with the warm darks: the sky comes out at its true level and the hot pixels
    (8x brighter when warm) are removed."""
    cfg = make_config(tmp_path, night={"timezone": "UTC"})
    inc = cfg.paths.incoming
    for i in range(5):
        shoot(inc, f"bias_{i}", COLD, "bias", minute=i, seed=100 + i, exptime=0.0)
        shoot(inc, f"dark_cold_{i}", COLD, "dark", minute=10 + 6 * i, seed=200 + i)
        shoot(inc, f"flat_{i}", COLD, "flat", minute=50 + i, seed=300 + i, exptime=3.0)
        shoot(inc, f"dark_warm_{i}", WARM, "dark", minute=60 + 6 * i, seed=400 + i, cards={"CCD-TEMP": -5.0})
    lights = [shoot(inc, f"light_{i}", WARM, "light", minute=100 + 6 * i, seed=500 + i, cards={"CCD-TEMP": -5.0})
              for i in range(3)]
    cat = run_once(cfg)
    with cat.reader() as s:
        darks = {m.ccd_temp: m for m in s.scalars(select(Master).where(Master.kind == "dark"))}
        assert sorted(darks) == [-20.0, -5.0]  # two masters: the set-point ones and the warm ones
        assert darks[-5.0].n_frames == darks[-20.0].n_frames == 5
        light = s.scalars(select(Frame).where(Frame.path == str(lights[0]))).one()
        assert any("sensor not at its set-point" in w for w in light.header_warnings)
        cal = s.scalars(select(Calibrated).where(Calibrated.frame_id == light.id, Calibrated.current)).one()
        assert cal.dark_id == darks[-5.0].id and not cal.partial
        events = " ".join(e.detail or "" for e in light.events)
        assert "sensor not at its set-point" in events
        path = cal.path
    cat.close()
    calibrated = in_adu(path)
    hot = synth.hot_pixels(COLD)
    truth = SKY * EXPTIME  # flat-fielded sky, ADU
    assert abs(np.median(calibrated[~hot]) - truth) < 10  # was 105 ADU too high: the dark current of -20
    assert abs(np.median(calibrated[hot] - truth)) < 500  # was +45000 ADU: 8x brighter hot pixels left


# --------------------------------------------------------------- measured temperatures that jitter
def test_a_hovering_cooler_makes_one_key():
    frames = darks_at(-4.42, -4.50, -4.58, -4.61, -4.47)  # Ekos: CCD-TEMP only, two decimals
    assert set(key_texts(frames)) == {"T=-4.4"}  # was T=-4 and T=-5
    assert key_texts(darks_at(-10.0, -9.9, -10.3, set_temp=-10.0)) == ["T=-10"] * 3  # set-point keys as before


def test_darks_at_other_temperatures_make_keys_of_their_own():
    assert key_texts(darks_at(-10.0, -10.1, -20.0, -19.9, -9.95)) == ["T=-10", "T=-10", "T=-20", "T=-20", "T=-10"]
    warming = darks_at(*np.linspace(0.0, 8.0, 33))  # a night that warmed by 8 degC, a dark every 0.25 degC
    keys = key_texts(warming)
    assert len(set(keys)) >= 4
    for key in set(keys):  # every master's darks within the tolerance of each other
        temps = [f.ccd_temp for f, k in zip(warming, keys, strict=True) if k == key]
        assert max(temps) - min(temps) <= 2.0
    other_exposure = darks_at(-4.5, -4.5) + [frame_like(ccd_temp=-4.5, exptime=60.0)]
    assert len(set(calib_keys(other_exposure, 2.0))) == 2
    unknown = darks_at(None, -4.5, None)
    assert key_texts(unknown) == ["T=?", "T=-4.5", "T=?"]


def test_keys_depend_on_the_frames_not_their_order_nor_on_later_darks():
    frames = darks_at(-4.42, -4.58, -2.1, -4.61, -2.3, -6.9, -4.5, -7.0)
    keys = dict(zip(map(id, frames), calib_keys(frames, 2.0), strict=True))
    rng = np.random.default_rng(1)
    for _ in range(5):
        shuffled = [frames[i] for i in rng.permutation(len(frames))]
        assert dict(zip(map(id, shuffled), calib_keys(shuffled, 2.0), strict=True)) == keys
    for n in range(1, len(frames)):  # a dark arriving later in the night never re-keys the earlier ones
        assert calib_keys(frames[:n], 2.0) == [keys[id(f)] for f in frames[:n]]


def test_clusters_span_at_most_the_tolerance():
    assert temperature_clusters([-4.5, -4.4, -4.6, -3.0, -2.4, -6.4], 2.0) == [0, 0, 0, 0, 1, 2]
    assert temperature_clusters([0.0, 2.0, 1.0, 4.0], 2.0) == [0, 0, 0, 1]
    assert temperature_clusters([], 2.0) == []


def ekos(incoming: Path, name: str, kind: str, temp: float, *, minute: float, seed: int, **options) -> Path:
    """A frame as Ekos/INDI writes it: CCD-TEMP only (two decimals), no set-point."""
    return shoot(incoming, name, COLD, kind, minute=minute, seed=seed, style="ekos",
                 cards={"CCD-TEMP": temp}, **options)


def test_jittering_darks_make_one_master_that_calibrates_the_lights(tmp_path):
    """Four darks between -4.42 and -4.61 degC (min_frames 3): before, two masters' worth of two
    darks each (T=-4, T=-5), neither built, the lights left without a dark."""
    cfg = make_config(tmp_path, night={"timezone": "UTC"})
    inc = cfg.paths.incoming
    for i in range(3):
        ekos(inc, f"bias_{i}", "bias", -4.5, minute=i, seed=100 + i, exptime=0.0)
        ekos(inc, f"flat_{i}", "flat", -4.5, minute=5 + i, seed=300 + i, exptime=3.0)
    for i, temp in enumerate((-4.42, -4.58, -4.50, -4.61)):
        ekos(inc, f"dark_{i}", "dark", temp, minute=10 + 6 * i, seed=200 + i)
    light = ekos(inc, "light_0", "light", -4.55, minute=60, seed=500)
    cat = run_once(cfg)
    with cat.reader() as s:
        darks = s.scalars(select(Master).where(Master.kind == "dark")).all()
        assert [(m.n_frames, m.calib_key.rsplit("|", 1)[1]) for m in darks] == [(4, "T=-4.4")]
        assert darks[0].ccd_temp == pytest.approx(-4.54)  # the median of the four
        frame = s.scalars(select(Frame).where(Frame.path == str(light))).one()
        cal = s.scalars(select(Calibrated).where(Calibrated.frame_id == frame.id, Calibrated.current)).one()
        assert cal.dark_id == darks[0].id and not cal.partial
        path = cal.path
    cat.close()
    calibrated = in_adu(path)
    hot = synth.hot_pixels(COLD)
    assert abs(np.median(calibrated[~hot]) - SKY * EXPTIME) < 10
    assert abs(np.median(calibrated[hot] - SKY * EXPTIME)) < 100


def dark_masters(cat: Catalog) -> list[tuple[str, int, int, bool, str | None]]:
    """(temperature part of the key, version, inputs, retired?, reason) of every master dark."""
    with cat.reader() as s:
        return [(m.calib_key.rsplit("|", 1)[1], m.version, len(m.inputs), m.retired is not None, m.retired)
                for m in s.scalars(select(Master).where(Master.kind == "dark").order_by(Master.id))]


def test_masters_follow_their_darks_as_they_arrive(tmp_path):
    """Darks arriving one by one, in time order, make new versions of one key; a dark taken
    earlier that arrives late re-keys the night's darks: the new master combines them all and the
    old one is retired (never two current masters of the same darks)."""
    cfg = make_config(tmp_path, night={"timezone": "UTC"}, workers={"processes": 0})
    inc = cfg.paths.incoming
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        pipe.handle_many([ekos(inc, f"bias_{i}", "bias", -4.5, minute=i, seed=100 + i, exptime=0.0)
                          for i in range(3)])
        pipe.handle_many([ekos(inc, f"dark_{i}", "dark", t, minute=10 + i, seed=200 + i)
                          for i, t in ((1, -4.58), (2, -4.50), (3, -4.61))])
        pipe.tick()
        assert [m[:4] for m in dark_masters(cat)] == [("T=-4.6", 1, 3, False)]
        pipe.handle_many([ekos(inc, "dark_4", "dark", -4.47, minute=14, seed=204)])  # later: same key
        pipe.tick()
        assert [m[:4] for m in dark_masters(cat)] == [("T=-4.6", 1, 3, False), ("T=-4.6", 2, 4, False)]
        pipe.handle_many([ekos(inc, "dark_0", "dark", -4.42, minute=10, seed=200)])  # earlier, copied late
        pipe.tick()
        masters = dark_masters(cat)
        assert [m[:4] for m in masters] == [("T=-4.6", 1, 3, True), ("T=-4.6", 2, 4, True), ("T=-4.4", 1, 5, False)]
        assert "superseded by master dark" in (masters[1][4] or "")
        pipe.tick()  # settled: nothing more to build
        assert len(dark_masters(cat)) == 3
        with cat.reader() as s:
            states = set(s.scalars(select(Frame.state).where(Frame.imagetyp == "dark")))
        assert states == {FrameState.USED}
    cat.close()
