"""The real PHY241 night (MaxIm DL, QSI 532): skipped when ../shared is absent.

Reduced once, by :func:`tests.conftest.real_night_reduced`, which the night report's test shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch.catalog import Catalog
from ccdwatch.cli import main
from ccdwatch.fitsio import read_product
from ccdwatch.models import Calibrated, Frame, Master, Stack

pytestmark = pytest.mark.xdist_group("real-night")  # one reduction of the night per worker


@pytest.fixture
def reduced(real_night_reduced):
    return real_night_reduced


def test_27_frames_with_types_exposures_filters(reduced, capsys):
    cfg, args = reduced
    capsys.readouterr()
    assert main([*args, "frames", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 27
    by_type = {}
    for r in rows:
        by_type.setdefault(r["imagetyp"], []).append(r)
        assert {"id", "path", "imagetyp", "exptime", "filter", "object", "date_obs", "night", "state"} <= set(r)
    assert {k: len(v) for k, v in by_type.items()} == {"bias": 3, "dark": 3, "flat": 3, "light": 18}
    assert {r["exptime"] for r in by_type["dark"]} == {300.0}
    assert {r["exptime"] for r in by_type["light"]} == {200.0}
    assert {r["filter"] for r in by_type["flat"] + by_type["light"]} == {"I"}
    assert {r["night"] for r in by_type["light"]} == {"2012-02-18"}
    assert {r["night"] for r in by_type["flat"]} == {"2012-02-24"}


def test_three_masters_and_18_lights_with_scaled_dark(reduced):
    cfg, _ = reduced
    with Catalog(cfg.paths.database, writer=False) as cat, cat.reader() as s:
        masters = {m.kind: m for m in s.scalars(select(Master))}
        assert sorted(masters) == ["bias", "dark", "flat"]
        assert masters["dark"].exptime == 300.0 and masters["dark"].bias_subtracted
        assert masters["flat"].filter == "I" and masters["flat"].night == "2012-02-24"
        cals = s.scalars(select(Calibrated).where(Calibrated.current)).all()
        assert len(cals) == 18
        for c in cals:
            assert c.dark_scale == pytest.approx(200 / 300)
            assert (c.bias_id, c.dark_id, c.flat_id) == (masters["bias"].id, masters["dark"].id, masters["flat"].id)
        flat = read_product(masters["flat"].path)[1]
        assert np.nanmedian(flat) == pytest.approx(1.0, abs=1e-3)
        bias = read_product(masters["bias"].path)[1]
        assert 300 < np.median(bias) < 350


def test_one_m51_stack_with_preview(reduced):
    cfg, _ = reduced
    with Catalog(cfg.paths.database, writer=False) as cat, cat.reader() as s:
        stacks = s.scalars(select(Stack).where(Stack.current)).all()
        assert len(stacks) == 1
        st = stacks[0]
        assert st.filter == "I" and st.n_used + st.n_rejected == 18 and st.n_used >= 12
        for m in st.members:
            if not m.used:
                assert m.reason
        assert Path(st.preview_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        frames = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
        assert all(f.n_stars and f.fwhm for f in frames)


def test_gain_measured_from_the_twilight_flats_contradicts_egain(reduced, capsys):
    """The QSI 532's header says EGAIN = 2.4; photon transfer on its three twilight flats says ~1.3
    (the lights' sky noise agrees with the latter): the master flat records it and the night's
    report warns."""
    from ccdwatch.report.checks import night_warnings
    from ccdwatch.report.collect import collect

    cfg, args = reduced
    capsys.readouterr()
    assert main([*args, "masters", "--format", "json"]) == 0
    flat = next(m for m in json.loads(capsys.readouterr().out) if m["kind"] == "flat")
    assert 1.2 < flat["params"]["gain_measured"] < 1.4
    assert flat["params"]["gain_used"] == pytest.approx(2.4) and flat["params"]["gain_check"]["level"] == "warning"
    header = fits.getheader(flat["path"])
    assert header["GAINMEAS"] == flat["params"]["gain_measured"] and header["GAINPAIR"] == 2
    with Catalog(cfg.paths.database, writer=False) as cat, cat.reader() as s:
        warnings, _ = night_warnings(collect(s, flat["night"]))
    assert [w for w in warnings if '[detector.cameras."QSI 532"] gain = 1.' in w]
