"""The next morning's questions at the command line: answers, or errors that say what to type.

Found by a review of the CLI on a reduced night: an ambiguous file name answered "no frame
matches"; a malformed --since ended in a traceback; --limit 0 listed every row; a mistyped
--site said the catalogue was empty; a catalogue from a newer ccdwatch was told to upgrade,
and the upgrade failed with a traceback after writing a backup.
"""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from ccdwatch import synth
from ccdwatch.cli import main

from .helpers import make_config

CAMERA = synth.Camera(shape=(48, 64))


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory) -> list[str]:
    """Two nights whose camera program named the files alike, in dated folders; the CLI's
    arguments for the reduced catalogue."""
    root = tmp_path_factory.mktemp("cli")
    cfg = make_config(root)
    for day, seed in (("2024-03-10", 1), ("2024-03-12", 2)):
        staging = root / f"staging-{seed}"
        synth.make_night(staging, camera=CAMERA, seed=seed, n_bias=3, n_dark=0, n_flat=0, filters=("V",),
                         n_light=0, n_stars=0)
        (cfg.paths.incoming / day).mkdir()
        for p in sorted(staging.iterdir()):
            shutil.copy2(p, cfg.paths.incoming / day / p.name)
    args = ["--incoming", str(cfg.paths.incoming), "--products", str(cfg.paths.products), "--db", cfg.paths.database]
    assert main([*args, "-q", "watch", "--once"]) == 0
    return args


def test_an_ambiguous_name_lists_its_frames(two_nights, capsys):
    name = "bias_001.fits"
    assert main([*two_nights, "show", name]) == 1
    err = capsys.readouterr().err
    assert f"'{name}' matches 2 frames" in err and "2024-03-10/" + name in err and "2024-03-12/" + name in err
    assert main([*two_nights, "show", "2024-03-12/" + name]) == 0  # more of the path: one frame
    assert name in capsys.readouterr().out
    assert main([*two_nights, "show", "ias_001.fits"]) == 1  # a name is matched whole, not as any suffix
    assert "no frame" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "words"), [(["--since", "yesterday"], "not an ISO date or time"),
                                               (["--limit", "0"], "not a number of rows")])
def test_bad_query_options_are_usage_errors(two_nights, capsys, option, words):
    with pytest.raises(SystemExit) as stop:
        main([*two_nights, "frames", *option])
    assert stop.value.code == 2 and words in capsys.readouterr().err


def test_an_unknown_site_is_named_with_the_sites_there_are(two_nights, capsys):
    for command, code in (("frames", 0), ("report", 1)):  # an empty listing stays one (scripts), with the note
        assert main([*two_nights, "--site", "nosuch", command]) == code
        err = capsys.readouterr().err
        assert "no frames of site 'nosuch'; this catalogue's sites:" in err and "holds no frames" not in err


def test_a_catalogue_of_a_newer_ccdwatch_is_never_upgraded(two_nights, tmp_path, capsys):
    db = tmp_path / "future.db"
    shutil.copy2(two_nights[two_nights.index("--db") + 1], db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '9999'")
    assert main(["--db", str(db), "db", "check"]) == 1
    assert "newer ccdwatch" in capsys.readouterr().out
    assert main(["--db", str(db), "db", "upgrade"]) == 4
    assert "never downgrade" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.bak-*"))  # no backup of a refused upgrade
