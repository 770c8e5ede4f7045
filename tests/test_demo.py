"""``ccdwatch demo``: the observing plan, camera-style writes, and a whole night end to end."""

from __future__ import annotations

import itertools
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from ccdwatch import demo, synth
from ccdwatch.catalog import Catalog
from ccdwatch.cli import main
from ccdwatch.config import ConfigError
from ccdwatch.models import Frame, SourceFile, Stack

from .helpers import make_config

START = datetime(2024, 3, 10, 20, 0, tzinfo=UTC)


def test_plan_follows_a_night_dusk_lights_dawn():
    shots = demo.plan_night(START, n_lights=6, rng=np.random.default_rng(1))
    kinds = [s.kind for s in shots]
    assert kinds == ["bias"] * 5 + ["dark"] * 5 + ["light"] * 12 + ["flat"] * 10
    starts = [s.date_obs for s in shots]
    assert all(b.date_obs >= a.end for a, b in itertools.pairwise(shots))  # one exposure at a time
    assert starts == sorted(starts)
    lights = [s for s in shots if s.kind == "light"]
    assert [s.filter for s in lights] == ["V"] * 6 + ["R"] * 6
    assert {s.exptime for s in lights} == {s.exptime for s in shots if s.kind == "dark"} == {120.0}
    assert (lights[0].dx, lights[0].dy) == (0.0, 0.0)
    assert all(abs(s.dx) + abs(s.dy) > 0 and abs(s.dx) <= 6 and abs(s.dy) <= 6 for s in lights[1:])
    flats = [s for s in shots if s.kind == "flat"]
    assert flats[0].date_obs - START >= timedelta(hours=10)
    assert [s.filter for s in flats] == ["V"] * 5 + ["R"] * 5
    # the sky brightens through the night, one cloud and one satellite
    skies = [s.sky for s in lights if s.transparency == 1.0]
    assert skies == sorted(skies) and skies[-1] > 2 * skies[0]
    assert sum(s.transparency < 1 for s in lights) == 1 and sum(s.satellite for s in lights) == 1
    assert len({s.name for s in shots}) == len(shots)
    # the same seed gives the same night; few lights give no accidents
    assert demo.plan_night(START, n_lights=6, rng=np.random.default_rng(1)) == shots
    few = demo.plan_night(START, n_lights=2, rng=np.random.default_rng(1))
    assert all(s.transparency == 1 and not s.satellite for s in few)


@pytest.mark.parametrize("method", ["rename", "chunks"])
def test_frames_are_written_like_a_camera_writes(tmp_path, method):
    camera = synth.Camera(shape=(32, 48))
    data = synth.quantise(synth.expose(camera, kind="bias", exptime=0.0, rng=np.random.default_rng(0)))
    header = synth.frame_header(camera, kind="bias", exptime=0.0, date_obs=START)
    reference = synth.write_fits(tmp_path / "reference.fits", data, header).read_bytes()
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    path = demo.write_like_a_camera(incoming / "bias_001.fits", data, header, method=method, staging=staging,
                                    chunks=3)
    assert path.read_bytes() == reference
    assert [p.name for p in incoming.iterdir()] == ["bias_001.fits"]  # no temp file left behind
    assert list(staging.iterdir()) == []
    with pytest.raises(ValueError):
        demo.write_like_a_camera(incoming / "x.fits", data, header, method="teleport", staging=staging)


def test_demo_refuses_products_inside_the_camera_directory(tmp_path):
    cfg = make_config(tmp_path)
    with pytest.raises(ConfigError, match="inside the camera directory"):
        demo.run_demo(cfg, directory=tmp_path)
    with pytest.raises(ConfigError, match="speed"):
        demo.run_demo(cfg, speed=0)


def test_demo_night_is_catalogued_reduced_and_reported(tmp_path):
    cfg = make_config(tmp_path)
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    lines: list[str] = []
    camera = synth.Camera(shape=(192, 288), seed=5)
    result = demo.run_demo(cfg, speed=2000, n_lights=5, camera=camera, seed=3, say=lines.append,
                           now=datetime(2024, 6, 1, 12, 0, tzinfo=UTC))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert not result.interrupted and result.error is None
    plan = demo.plan_night(START, n_lights=5, rng=np.random.default_rng(3))
    assert len(result.written) == len(plan) == 30
    assert result.directory.parent == cfg.paths.incoming
    assert sorted(p.name for p in result.directory.iterdir()) == sorted(s.name for s in plan)

    with Catalog(cfg.paths.database, writer=False) as cat, cat.reader() as s:
        frames = s.scalars(select(Frame).join(SourceFile, SourceFile.frame_id == Frame.id)).all()
        counts = {k: sum(f.imagetyp == k for f in frames) for k in ("bias", "dark", "flat", "light")}
        assert counts == {"bias": 5, "dark": 5, "flat": 10, "light": 10}
        assert {f.night for f in frames} == {result.night}  # dusk to dawn is one night
        lights = [f for f in frames if f.imagetyp == "light"]
        states = {f.path.rsplit("/", 1)[-1]: f.state for f in lights}
        assert states.pop("M67_V_003.fits") == "rejected"  # the cloud
        assert set(states.values()) == {"stacked"}
        assert all(f.n_stars and f.fwhm for f in lights)
        stacks = s.scalars(select(Stack).where(Stack.current)).all()
        assert sorted(st.filter for st in stacks) == ["R", "V"]
        assert s.scalar(select(func.count()).select_from(Frame).where(Frame.state == "quarantined")) == 0

    page = result.report
    assert page == Path(cfg.paths.products) / "reports" / result.night / "index.html"
    text = page.read_text(encoding="utf-8")
    assert "M67 · V · 120 s" in text and "M67 · R · 120 s" in text
    for img in (page.parent / "img").iterdir():
        with Image.open(img) as im:
            im.verify()
    assert lines[-2] == f"night report: {page}"
    assert any("a cloud passes" in line for line in lines)


def test_cli_demo(tmp_path, capsys):
    incoming = tmp_path / "camera"
    args = ["--products", str(tmp_path / "products"), "--db", str(tmp_path / "c.db")]
    assert main([*args, "demo", "--dir", str(incoming), "--speed", "5000", "--frames", "2"]) == 0
    out = capsys.readouterr().out
    page = Path(out.strip().splitlines()[-2].removeprefix("night report: "))
    assert page.is_file() and page.is_relative_to(tmp_path / "products" / "reports")
    written = list(incoming.glob("demo-*/*.fits"))
    assert len(written) == 5 + 5 + 2 * 2 + 2 * 5
    assert main([*args, "--incoming", str(incoming), "nights", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2 and rows[1].endswith(",5,5,10,4,0")


def test_cli_demo_keeps_to_its_own_directory(tmp_path, monkeypatch):
    """Without --products/--db/--config the demo never touches the configured catalogue."""
    monkeypatch.delenv("CCDWATCH_CONFIG", raising=False)
    from ccdwatch.cli import build_parser
    from ccdwatch.config import Config

    args = build_parser().parse_args(["demo", "--dir", str(tmp_path / "d")])
    cfg, directory = demo.own_paths(Config(), args)
    assert Path(cfg.paths.database) == tmp_path / "d" / "ccdwatch.db"
    assert Path(cfg.paths.products) == tmp_path / "d" / "products" and directory == str(tmp_path / "d" / "camera")
    args = build_parser().parse_args(["--db", str(tmp_path / "mine.db"), "demo"])
    cfg, directory = demo.own_paths(Config(), args)
    assert cfg == Config() and directory is None  # told where: the configured paths
