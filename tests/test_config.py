"""Configuration: defaults, TOML loading, and errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccdwatch.config import Config, ConfigError, database_url, load_config, parse_config
from ccdwatch.headers import ImageType


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ccdwatch.toml"
    p.write_text(text)
    return p


def test_defaults_need_no_file(monkeypatch):
    monkeypatch.delenv("CCDWATCH_CONFIG", raising=False)
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.paths.incoming == Path("data/incoming")
    assert cfg.masters.min_frames == {"bias": 3, "dark": 3, "flat": 3}
    assert cfg.masters.flat_max_age_days == 14 and cfg.masters.bias_max_age_days == 30
    assert cfg.stack.quiet_minutes == 20 and cfg.calibration.max_wait_hours == 18


def test_file_values_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, """
[paths]
incoming = "cam"
database = "state/cat.db"
[masters]
min_frames = {flat = 5}
temperature_tolerance = 1.5
[night]
timezone = "Europe/London"
"""))
    assert cfg.paths.incoming == tmp_path / "cam"
    assert cfg.paths.database == str(tmp_path / "state" / "cat.db")
    assert cfg.masters.min_frames == {"bias": 3, "dark": 3, "flat": 5}
    assert cfg.masters.temperature_tolerance == 1.5
    assert cfg.night.timezone == "Europe/London"


def test_env_var_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("CCDWATCH_CONFIG", str(write(tmp_path, "[watch]\nsettle_seconds = 9\n")))
    assert load_config(None).watch.settle_seconds == 9.0


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[watch]\nsetle_seconds = 3\n", ["watch.setle_seconds", "did you mean 'watch.settle_seconds'"]),
        ("[wach]\n", ["'wach'", "did you mean 'watch'"]),
        ("[watch]\nobserver = 'fanotify'\n", ["watch.observer", "'inotify'", "'polling'"]),
        ("[watch]\nsettle_seconds = 'soon'\n", ["watch.settle_seconds", "number"]),
        ("[watch]\npoll_interval = 0\n", ["watch.poll_interval", "> 0"]),
        ("[masters]\nmin_frames = {bias = 0}\n", ["masters.min_frames.bias", ">= 1"]),
        ("[masters]\nmin_frames = {biass = 2}\n", ["masters.min_frames.biass", "did you mean"]),
        ("[masters]\nmax_dark_scale = 0.5\n", ["masters.max_dark_scale", ">= 1", "never scale"]),
        ("[masters]\nmax_dark_scale = nan\n", ["masters.max_dark_scale", ">= 1"]),
        ("[night]\ntimezone = 'Mars/Olympus'\n", ["night.timezone", "Europe/London"]),
        ("[ingest]\nallow_compressed = 'yes'\n", ["ingest.allow_compressed", "true or false"]),
        ("[[classify]]\nglob = 'bias*'\nimagetyp = 'zero'\n", ["classify[1].imagetyp", "bias"]),
        ("[[classify]]\nimagetyp = 'bias'\n", ["classify[1]"]),
        ("[[classify]]\nglob = 'x'\nset = {a = 1}\n", ["classify[1].set"]),
        ("[paths\n", ["not valid TOML"]),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, needles):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    for needle in needles:
        assert needle in str(err.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_classification_rules_in_order(tmp_path):
    cfg = parse_config({"classify": [
        {"glob": "twiflat*", "imagetyp": "flat", "filter": "I"},
        {"header": {"imagetyp": ""}, "glob": "*dark*", "imagetyp": "dark"},
    ]}, base=tmp_path)
    assert [r.imagetyp for r in cfg.classify] == [ImageType.FLAT, ImageType.DARK]
    assert cfg.classify[0].filter == "I"
    assert cfg.classify[1].header == {"IMAGETYP": ""}


def test_overrides_and_database_url(tmp_path):
    cfg = Config().with_overrides(incoming=tmp_path / "in", database="sqlite:///x.db")
    assert cfg.paths.incoming == tmp_path / "in"
    assert cfg.paths.database == "sqlite:///x.db"
    assert database_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert database_url(str(tmp_path / "c.db")) == f"sqlite:///{tmp_path / 'c.db'}"


def test_stack_normalisation_scales_by_default_and_is_validated(tmp_path: Path) -> None:
    assert parse_config({}, base=tmp_path).stack.normalisation == "scale"
    assert parse_config({"stack": {"normalisation": "offset"}}, base=tmp_path).stack.normalisation == "offset"
    with pytest.raises(ConfigError, match=r"stack\.normalisation.*'scale', 'offset'.*'multiply'"):
        parse_config({"stack": {"normalisation": "multiply"}}, base=tmp_path)
