"""The night report: contents, escaping, images, coverage, warnings, and a real browser."""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from ccdwatch import report, synth
from ccdwatch.catalog import Catalog
from ccdwatch.cli import main
from ccdwatch.daemon.watch import Watcher
from ccdwatch.models import Frame, Master, Stack
from ccdwatch.pipeline import Pipeline

from . import browser
from .helpers import make_config

CAMERA = synth.Camera(shape=(128, 192))
HOSTILE_OBJECT = "<script>alert(1)</script>"
HOSTILE_FILE = "<img src=x onerror=alert(2)>.fits"


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"] or "")
        if tag == "script":
            self.scripts += 1


def parse(page: Path) -> _Images:
    p = _Images()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def reduce(cfg) -> None:
    with Catalog(cfg.paths.database) as cat:
        Watcher(cfg, Pipeline(cfg, cat), progress=False).run_once()


def add_bad_seeing_light(truth: synth.NightTruth, directory: Path, *, fwhm: float = 7.0) -> Path:
    """One more V light of the same field, taken in poor seeing just after the others."""
    rng = np.random.default_rng(99)
    when = truth.dates["light"][-1] + timedelta(minutes=10)
    adu = synth.expose(CAMERA, kind="light", exptime=200.0, rng=rng, sky=truth.sky,
                       stars=synth.transform_stars(truth.stars, dx=1.5, dy=-1.0), fwhm=fwhm)
    header = synth.frame_header(CAMERA, kind="light", exptime=200.0, date_obs=when, filter="V",
                                object=HOSTILE_OBJECT)
    return synth.write_fits(directory / "bad_seeing_V.fits", synth.quantise(adu), header)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A synthetic night with a hostile OBJECT, one light in bad seeing and one garbage file."""
    tmp = tmp_path_factory.mktemp("night")
    cfg = make_config(tmp)
    truth = synth.make_night(cfg.paths.incoming, camera=CAMERA, n_bias=3, n_dark=3, n_flat=3, n_light=4,
                             n_stars=40, object=HOSTILE_OBJECT)
    bad = add_bad_seeing_light(truth, cfg.paths.incoming)
    (cfg.paths.incoming / HOSTILE_FILE).write_bytes(b"this is not FITS\n" * 200)
    reduce(cfg)
    with Catalog(cfg.paths.database, writer=False) as cat:
        with cat.reader() as s:
            label = report.latest_night(s)
        page = report.build_report(cfg, cat, label)
    return cfg, truth, label, page, bad


def test_report_at_default_place_lists_masters_and_stacks(night):
    cfg, _truth, label, page, _ = night
    assert page == Path(cfg.paths.products) / "reports" / label / "index.html"
    text = page.read_text(encoding="utf-8")
    with Catalog(cfg.paths.database, writer=False) as cat, cat.reader() as s:
        masters = s.scalars(select(Master)).all()
        stacks = s.scalars(select(Stack).where(Stack.current)).all()
        assert {m.kind for m in masters} == {"bias", "dark", "flat"}
        for m in masters:
            assert f"#{m.id} v{m.version}" in text
            assert f'src="img/master-{m.id}.png"' in text
            assert f"{m.n_frames} frames, {m.method}" in text
        assert len(stacks) == 2  # V and R
        for st in stacks:
            assert f"#{st.id} version {st.version}" in text
            assert f'src="img/stack-{st.id}.png"' in text
            assert f"{st.n_used} used, {st.n_rejected} rejected" in text
    assert 'src="img/quality.png"' in text
    # total light exposure: 9 lights of 200 s = 30 min
    assert "30.0 min" in text
    for section in ("summary", "warnings", "quality", "stacks", "masters", "calibration", "frames", "problems"):
        assert f'id="{section}"' in text


def test_every_image_resolves_to_a_valid_png(night):
    _, _, _, page, _ = night
    srcs = parse(page).srcs
    # quality plot + 3 masters (bias, dark, V and R flats = 4) + 2 stacks + 2 comparison panels
    assert len(srcs) == 1 + 4 + 2 + 2
    for src in srcs:
        path = (page.parent / src).resolve()
        assert path.is_relative_to(page.parent), src
        with Image.open(path) as im:
            assert im.format == "PNG"
            im.verify()
        with Image.open(path) as im:
            w, h = im.size
            assert w >= 400 and h >= 200, (src, im.size)
            assert np.asarray(im.convert("L")).std() > 5  # a picture, not a blank canvas
    assert not [p for p in (page.parent / "img").iterdir() if p.name not in {Path(s).name for s in srcs}]


def test_comparison_panel_shows_raw_calibrated_and_stack_side_by_side(night):
    _, _, _, page, _ = night
    panels = [s for s in parse(page).srcs if Path(s).name.startswith("group-")]
    assert len(panels) == 2
    for src in panels:
        with Image.open(page.parent / src) as im:
            w, h = im.size
        assert w > 2 * h  # three panels of a 192x128 frame in a row


def test_quarantined_file_listed_with_reason_and_escaped(night):
    _, _, _, page, _ = night
    text = page.read_text(encoding="utf-8")
    problems = text[text.index('id="problems"'):]
    assert "&lt;img src=x onerror=alert(2)&gt;.fits" in problems
    assert "not-fits" in problems and "quarantined" in problems
    assert "1 file quarantined" in text  # warning at the top


def test_header_strings_are_escaped(night):
    _, _, _, page, _ = night
    text = page.read_text(encoding="utf-8")
    assert HOSTILE_OBJECT not in text
    assert "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert parse(page).scripts == 1  # only the report's own image check


def test_bad_seeing_frame_rejected_with_reason(night):
    cfg, _, _, page, bad = night
    text = page.read_text(encoding="utf-8")
    with Catalog(cfg.paths.database, writer=False) as cat, cat.reader() as s:
        frame = s.scalar(select(Frame).where(Frame.path == str(bad)))
        fid, state, reason = frame.id, frame.state, frame.state_reason
    assert state == "rejected" and "FWHM" in reason
    stacks = text[text.index('id="stacks"'):text.index('id="masters"')]
    row = stacks[stacks.index(f'<td class="num">{fid}</td><td>bad_seeing_V.fits</td>'):]
    row = row[:row.index("</tr>")]
    assert '<span class="tag rejected">rejected</span>' in row and "FWHM 7." in row
    assert "1 light rejected from stacks: bad_seeing_V.fits" in text


def test_quality_figure_marks_rejected_frames():
    t0 = datetime(2024, 3, 10, 21, 0)
    rows = []
    for i in range(6):
        rows.append(report.FrameRow(
            id=i + 1, name=f"l{i}.fits", paths=[], sha256=None, imagetyp="light",
            state="rejected" if i == 4 else "stacked", state_reason=None, date_obs=t0 + timedelta(minutes=5 * i),
            exptime=200.0, filter="V" if i < 3 else "R", object="M51", group_key=None, ccd_temp=-20.0 + 0.1 * i,
            set_temp=-20.0, n_stars=50 - i, fwhm=3.0 + (4.0 if i == 4 else 0.0), elongation=1.05, sky=100.0 + i,
            sky_noise=3.0, saturated_fraction=0.0, instrument="cam", telescope=None, header_warnings=[],
            created_at=None))
    fig = report.quality_figure(rows, title="t", dark_temperatures=[("master dark #1 (-20 °C)", -20.0)])
    try:
        axes = fig.axes
        assert [a.get_ylabel() for a in axes] == ["FWHM [px]", "sky background [ADU]", "stars detected",
                                                 "CCD temperature [°C]"]
        for ax, value in zip(axes, (7.0, 104.0, 46, -19.6), strict=True):
            marks = [ln for ln in ax.get_lines() if ln.get_label() == "rejected"]
            assert len(marks) == 1
            assert list(marks[0].get_ydata()) == [pytest.approx(value)]
            by_filter = {ln.get_label(): len(ln.get_ydata()) for ln in ax.get_lines()}
            assert by_filter["filter V"] == 3 and by_filter["filter R"] == 3
        assert any(ln.get_label().startswith("master dark") for ln in axes[3].get_lines())
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert report.quality_figure([dataclasses.replace(rows[0], date_obs=None)], title="t") is None


def _night_data(**kw) -> report.NightData:
    base = {"night": "2024-03-10", "generated": datetime(2024, 3, 11), "frames": {}, "problems": [], "masters": [],
                "calibrated": {}, "groups": []}
    base.update(kw)
    return report.NightData(**base)


def _light(i: int, when: datetime, **kw) -> report.FrameRow:
    values = {"id": i, "name": f"l{i}.fits", "paths": [], "sha256": None, "imagetyp": "light", "state": "stacked", "state_reason": None,
                  "date_obs": when, "exptime": 200.0, "filter": "I", "object": "M51", "group_key": "g", "ccd_temp": -20.0, "set_temp": -20.0,
                  "n_stars": 100, "fwhm": 3.0, "elongation": 1.0, "sky": 100.0, "sky_noise": 3.0, "saturated_fraction": 0.0,
                  "instrument": "cam", "telescope": None, "header_warnings": [], "created_at": None}
    values.update(kw)
    return report.FrameRow(**values)


def _master(i: int, kind: str, when: datetime, **kw) -> report.MasterRow:
    values = {"id": i, "kind": kind, "night": "2024-03-10", "version": 1, "latest": True, "exptime": None, "filter": None, "ccd_temp": None,
                  "n_frames": 3, "method": "median", "mean": 1.0, "noise": 0.1, "hot_pixels": None, "date_mid": when,
                  "bias_subtracted": False, "dark_subtracted": False, "path": "", "preview_path": None, "inputs": []}
    values.update(kw)
    return report.MasterRow(**values)


def test_warnings_for_far_flats_warm_darks_and_many_rejections():
    t = datetime(2024, 3, 10, 22, 0)
    lights = {i: _light(i, t + timedelta(minutes=4 * i), ccd_temp=-20.0 + (1.5 if i == 3 else 0.0),
                        state="rejected" if i < 3 else "stacked") for i in range(1, 9)}
    cal = {i: report.CalibratedRow(frame_id=i, path="", bias_id=1, dark_id=2, flat_id=3, dark_scale=200 / 300,
                                   partial=False, missing=None) for i in lights}
    masters = [_master(1, "bias", t), _master(2, "dark", t, exptime=300.0, ccd_temp=-20.0),
               _master(3, "flat", t + timedelta(days=5.5), filter="I", night="2024-03-15", bias_subtracted=True)]
    stack = report.StackRow(id=1, group_key="g", target="M51", filter="I", exptime=200.0, version=1, n_used=5,
                            n_rejected=3, total_exposure=1000.0, reference_frame_id=4, method="sigma_clip", path="",
                            preview_path=None, members=[])
    groups = [report.Group(key="g", target="M51", filter="I", exptime=200.0, frame_ids=list(lights), stack=stack)]
    data = _night_data(frames=lights, masters=masters, calibrated=cal, groups=groups)
    warnings, notes = report.night_warnings(data, temperature_tolerance=2.0)
    text = "\n".join(warnings)
    assert "master flat #3 (I) was taken 5." in text  # 5.5 days minus the lights' spread
    assert "1 lights were taken more than 1 degC from master dark #2" in text
    assert "ranged over 1.5 degC" in text
    assert "3 of 8 frames were rejected" in text
    assert not any("bias" in w for w in warnings)  # the bias is from the same night
    assert any("scaled x0.6667 for 8 lights" in n for n in notes)

    # The same night, well behaved: nothing to warn about.
    calm = {i: dataclasses.replace(f, ccd_temp=-20.0, state="stacked") for i, f in lights.items()}
    masters_ok = [*masters[:2], dataclasses.replace(masters[2], date_mid=t + timedelta(hours=10))]
    ok = _night_data(frames=calm, masters=masters_ok, calibrated=cal,
                     groups=[dataclasses.replace(groups[0], stack=dataclasses.replace(stack, n_used=8, n_rejected=0))])
    assert report.night_warnings(ok)[0] == []


@pytest.fixture(scope="module")
def no_flats(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("noflats")
    cfg = make_config(tmp)
    synth.make_night(cfg.paths.incoming, camera=CAMERA, n_bias=3, n_dark=3, n_flat=0, n_light=3, n_stars=30,
                     filters=("R",))
    reduce(cfg)
    return cfg


def test_lights_waiting_for_a_flat_are_shown_with_the_missing_master(no_flats, tmp_path):
    cfg = no_flats
    with Catalog(cfg.paths.database, writer=False) as cat:
        with cat.reader() as s:
            label = report.latest_night(s)
            reasons = [f.state_reason for f in s.scalars(select(Frame).where(Frame.state == "waiting"))]
        assert len(reasons) == 3 and all("flat" in r for r in reasons)
        page = report.build_report(cfg, cat, label, tmp_path / "out")
    text = page.read_text(encoding="utf-8")
    coverage = text[text.index('id="calibration"'):text.index('id="frames"')]
    assert "0 of 3 lights are calibrated" in coverage
    assert "Lights still waiting" in coverage
    assert "no master flat for filter" in coverage and "R_001.fits" in coverage
    assert "3 of 3 lights are still waiting for calibration" in text
    assert "Not stacked" in text
    assert page.parent == tmp_path / "out"


def test_rebuild_is_stable_and_refresh_never_raises(night, tmp_path, caplog):
    cfg, _, label, page, _ = night
    with Catalog(cfg.paths.database, writer=False) as cat:
        before = sorted(p.name for p in (page.parent / "img").iterdir())
        again = report.refresh(cfg, cat, label)
        assert again == page
        assert sorted(p.name for p in (page.parent / "img").iterdir()) == before
        assert report.refresh(dataclasses.replace(cfg, report=dataclasses.replace(cfg.report, refresh=False)),
                              cat, label) is None
        blocker = tmp_path / "products"
        blocker.write_text("a file where the products directory should be")
        broken = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, products=blocker))
        with caplog.at_level(logging.ERROR, logger="ccdwatch.report"):
            assert report.refresh(broken, cat, label) is None
        assert "refreshing the night report" in caplog.text


def test_rebuild_sends_only_pictures_not_drawn_yet_to_the_runner(night, tmp_path):
    """Comparison panels already in the image directory are not drawn again, nor shipped to a
    worker with the whole night's data: a refresh with nothing new draws the quality plot only."""
    cfg, _, label, _, _ = night
    kinds: list[list[str]] = []

    def recording(fn, tasks):
        kinds.append([t.kind for t in tasks])
        return [fn(t) for t in tasks]

    with Catalog(cfg.paths.database, writer=False) as cat:
        first = report.build_report(cfg, cat, label, tmp_path / "out", run=recording)
        report.build_report(cfg, cat, label, tmp_path / "out", run=recording)
    assert kinds[0].count("panel") >= 1 and kinds[1] == ["quality"]
    panels = [p.name for p in (first.parent / "img").glob("group-*.png")]
    assert len(panels) == kinds[0].count("panel")
    assert all(name in first.read_text() for name in panels)


def test_failed_pictures_are_logged_with_their_traceback(night, tmp_path, caplog):
    """A picture that fails on a worker leaves the page with a note and the log with the
    traceback, not just the exception's message."""
    cfg, _, label, _, _ = night

    def failing(fn, tasks):
        out = []
        for task in tasks:
            try:
                raise RuntimeError(f"cannot draw {task.kind}")
            except RuntimeError as exc:
                out.append(exc)
        return out

    with Catalog(cfg.paths.database, writer=False) as cat, caplog.at_level(logging.ERROR, logger="ccdwatch.report"):
        page = report.build_report(cfg, cat, label, tmp_path / "out", run=failing)
    assert page.is_file()
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert {r.getMessage().split(" failed")[0] for r in failures} >= {"report: quality plot"}
    assert any("comparison panel" in r.getMessage() for r in failures)
    assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in failures)
    assert "Traceback" in caplog.text and "in failing" in caplog.text


def test_cli_report_writes_where_asked_and_refuses_unknown_nights(night, tmp_path, capsys):
    cfg, _, label, _, _ = night
    args = ["--incoming", str(cfg.paths.incoming), "--products", str(cfg.paths.products), "--db", cfg.paths.database]
    assert main([*args, "report", "--night", label, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "r" / "index.html") and Path(out).is_file()
    assert main([*args, "report", "--night", "1999-01-01"]) == 1
    assert "no frames for night" in capsys.readouterr().err
    assert main([*args, "report"]) == 0  # default: the latest night
    assert capsys.readouterr().out.strip().endswith(f"reports/{label}/index.html")


# ------------------------------------------------------------------ a real browser
def test_page_loads_in_headless_chromium(night, tmp_path):
    _, _, _, page, _ = night
    shot = tmp_path / "report.png"
    result = browser.load(page, tmp_path, screenshot=shot)
    assert result.body_data("images-ok") == "true", result.body_data("images-broken")
    assert result.body_data("images-total") == str(len(parse(page).srcs))
    assert result.console == []
    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        assert np.asarray(im.convert("L")).std() > 10


def test_browser_check_catches_a_broken_page(tmp_path):
    """The checks above can fail: a missing image and a script error are both seen."""
    page = tmp_path / "bad" / "index.html"
    page.parent.mkdir()
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img src="img/missing.png"><script>' + report.IMAGE_CHECK_JS + "notDefined();</script></body></html>")
    result = browser.load(page, tmp_path)
    assert result.body_data("images-ok") == "false"
    assert result.body_data("images-broken") == "img/missing.png"
    assert any("notDefined" in c for c in result.console)


# ------------------------------------------------------------------ the real PHY241 night
@pytest.mark.realdata
@pytest.mark.xdist_group("real-night")
def test_real_night_report(real_night_reduced, tmp_path):
    cfg, args = real_night_reduced  # the night as `watch --once` left it (shared with test_real_night)
    assert main([*args, "report", "--night", "2012-02-18"]) == 0
    page = cfg.paths.products / "reports" / "2012-02-18" / "index.html"
    text = page.read_text(encoding="utf-8")
    masters = text[text.index('id="masters"'):text.index('id="calibration"')]
    for title in ("master bias", "master dark 300 s", "master flat I"):
        assert f"<h3>{title}" in masters
    assert "from night 2012-02-24" in masters  # the flats were taken six days later ...
    assert "master flat #" in text and "days from the lights it calibrated" in text  # ... and that is a warning
    with Catalog(cfg.paths.database, writer=False) as cat, cat.reader() as s:
        st = s.scalar(select(Stack).where(Stack.current))
        st_target, st_id, n_used, n_rej = st.target, st.id, st.n_used, st.n_rejected
    stacks = text[text.index('id="stacks"'):text.index('id="masters"')]
    assert f"<h3>{st_target} · I · 200 s</h3>" in stacks
    assert f'src="img/stack-{st_id}.png"' in stacks and "group-" in stacks
    assert f"{n_used} used, {n_rej} rejected" in stacks
    assert "18 of 18 lights are calibrated" in text
    assert 'src="img/quality.png"' in text
    srcs = parse(page).srcs
    assert len(srcs) == 1 + 3 + 1 + 1
    if browser.find_chromium() is not None:
        result = browser.load(page, tmp_path, screenshot=tmp_path / "real.png")
        assert result.body_data("images-ok") == "true"
        assert result.console == []


def test_a_master_flat_with_nothing_subtracted_is_flagged():
    t = datetime(2024, 3, 10, 22, 0)
    raw = _master(7, "flat", t, filter="V")
    good = _master(8, "flat", t, filter="R", bias_subtracted=True)
    data = report.NightData(night="2024-03-10", generated=t, frames={}, problems=[], masters=[raw, good],
                            calibrated={}, groups=[])
    warnings, _ = report.night_warnings(data)
    flagged = [w for w in warnings if "no bias, dark or dark-flat subtracted" in w]
    assert len(flagged) == 1 and flagged[0].startswith("master flat #7 (V")
