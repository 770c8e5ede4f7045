"""Real nights laid out and typed differently, on the defaults (issue: real nights from any camera).

Synthetic cases built from the project's camera: a CMOS library in folders without IMAGETYP and
with decimal-comma cards; dome flats typed Light; flat-test and focus frames; a wrong rule, then
corrected, converging to what a fresh run with the corrected rules makes.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.config import ConfigError, parse_config
from ccdwatch.daemon.watch import Watcher
from ccdwatch.headers import ClassificationRule, ImageType, normalise, path_type
from ccdwatch.models import Calibrated, Frame, FrameState, Master, Stack
from ccdwatch.pipeline import Pipeline

from .helpers import make_config

CAMERA = synth.Camera(shape=(96, 128))


def run_once(cfg) -> None:
    with Catalog(cfg.paths.database) as cat, Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()


def set_card(path: Path, key: str, text: str | None) -> None:
    """Rewrite one header card's 80 characters in place (``None`` blanks it), as a camera would
    write it: astropy would refuse to write 'EXPTIME = 6,4E-05' itself."""
    raw = bytearray(path.read_bytes())
    for i in range(0, 2880 * 4, 80):
        if raw[i:i + 8].decode().rstrip() == key:
            raw[i:i + 80] = (b" " * 80 if text is None else f"{key:8s}= {text}".ljust(80).encode())
            path.write_bytes(bytes(raw))
            return
    raise AssertionError(f"{key} not in {path}")


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> synth.NightTruth:
    return synth.make_night(tmp_path_factory.mktemp("night"), camera=CAMERA, seed=31, n_bias=3, n_dark=3,
                            dark_exptime=200.0, n_flat=3, filters=("V",), n_light=4, light_exptime=200.0,
                            n_stars=40)


# ---------------------------------------------------------------------------------- path words
@pytest.mark.parametrize("relpath, kind", [
    ("Bias/Bias_0001.fits", ImageType.BIAS),
    ("Dark/Dark_30s/Dark_30s_0003.fits", ImageType.DARK),
    ("Flat/Flat_0002.fit", ImageType.FLAT),
    ("DarkFlat/DF_1s_001.fits", ImageType.DARK),
    ("flats/skyflat_R_001.fits", ImageType.FLAT),
    ("twiflat_I1.fit", ImageType.FLAT),
    ("2024-03-10/LIGHT/M51_300s_0001.fits", ImageType.LIGHT),
    ("Light_M42_300.0s_Bin1_gain100_offset30_0001.fit", ImageType.LIGHT),  # 'offset' not leading
    ("Offset_001.fit", ImageType.BIAS),
    ("focus_0001.fits", ImageType.UNKNOWN),
    ("flat_test_01.fits", ImageType.UNKNOWN),
    ("M51_I_001.fit", None),
    ("M51/R/frame_001.fits", None),
    # what other camera programs write
    ("AutoFlat/AutoFlat-PA123.4-Red-Bin1-001.fts", ImageType.FLAT),  # ACP
    ("calib/BiasFrames/001.fit", ImageType.BIAS),
    ("dark300s_1.fits", ImageType.DARK),  # a word run into its exposure
    ("APT_Images/DarkFlats/DF_0001_1s.fit", ImageType.DARK),
    ("M42_Gain100_Offset30_001.fit", None),
    ("AutoFocus/FocusImage-001.fts", ImageType.UNKNOWN),  # ACP's focus runs
    ("Focus/M51_001.fit", ImageType.UNKNOWN),
    ("Dark/MasterDark_300s.fit", ImageType.UNKNOWN),  # a master kept in the library
    ("M51/Stack_16bits_10frames_300s.fits", ImageType.UNKNOWN),  # SharpCap's live stack
    # a target's name with a type word in it, filed by type (N.I.N.A.): the path names two types
    ("2024-03-10/Dark Shark Nebula/LIGHT/Dark Shark Nebula_2024-03-10_22-00-03_L_-10.00C_0000.fits", None),
    ("Lights/Dark Nebula LDN673_001.fit", None),
    ("Dark Shark Nebula/LIGHT/frame_0001.fits", None),
])
def test_path_words_name_the_type(relpath, kind):
    assert path_type(relpath)[0] is kind


@pytest.mark.parametrize("value", ["Flat_Dome", "FLAT-SKY", "flat sky", "AutoFlat", "Flat Frames"])
def test_flat_spellings_with_the_source_after_the_word(value):
    from ccdwatch.headers import parse_image_type

    assert parse_image_type(value) is ImageType.FLAT


def test_a_master_or_a_live_stack_named_so_is_never_a_raw_frame_whatever_its_header():
    for name, imagetyp in (("MasterDark_300s.fit", "Dark Frame"), ("master_flat_V.fits", "Flat Field"),
                           ("Stack_16bits_10frames_300s.fits", "Light")):
        info = normalise({"IMAGETYP": imagetyp, "EXPTIME": 300}, filename=name)
        assert info.imagetyp is ImageType.UNKNOWN and "not a raw exposure" in info.type_source, name
    # a focus or test exposure typed as a calibration frame keeps its header's type
    assert normalise({"IMAGETYP": "Flat Field"}, filename="flat_test_01.fits").imagetyp is ImageType.FLAT


def test_pixels_decide_when_header_and_name_disagree(night):
    flat, light = night.files["flat"][0], night.files["light"][0]
    rules: tuple[ClassificationRule, ...] = ()
    from ccdwatch import evidence
    from ccdwatch.fitsio import read_raw

    for path, name, expected in ((flat, "domeflat_V_001.fits", ImageType.FLAT),
                                 (light, "flat_V_001.fits", ImageType.LIGHT)):
        raw = read_raw(path)
        header = raw.header.copy()
        header["IMAGETYP"] = "Light Frame" if expected is ImageType.FLAT else "Light Frame"
        info = normalise(header, filename=name, rules=rules, pixels=evidence.measure(raw.data))
        assert info.imagetyp is expected, info.type_source
        if expected is ImageType.FLAT:
            assert info.classified_by == "pixels" and "without stars" in info.type_source
        else:  # a star field named 'flat': the header (Light) stands, and the pixels agree
            assert info.classified_by == "header" and "star field" in info.type_source


def test_sky_flats_shot_as_lights_of_a_target_named_flat(night):
    """A sequence of sky flats run as lights (IMAGETYP 'Light Frame') of a target named 'Flat':
    the object name counts as a path would, and the pixels decide; a star field named 'Flats', a
    target whose name merely holds a type's word, or frames whose folder names a type, do not turn."""
    from ccdwatch import evidence
    from ccdwatch.fitsio import read_raw

    flat, light = read_raw(night.files["flat"][0]), read_raw(night.files["light"][0])
    flat_px, light_px = evidence.measure(flat.data), evidence.measure(light.data)
    for name in ("Flat", "SkyFlats", "Dawn flat", "FLAT FIELD"):
        info = normalise({**flat.header, "IMAGETYP": "Light Frame", "OBJECT": name}, filename="seq_0001.fits",
                         pixels=flat_px)
        assert info.imagetyp is ImageType.FLAT and info.classified_by == "pixels", (name, info.type_source)
        assert f"object name {name!r}" in info.type_source
    # without an image-type card the object name decides, as a header card
    header = {k: v for k, v in flat.header.items() if k != "IMAGETYP"}
    info = normalise({**header, "OBJECT": "Flats"}, filename="seq_0001.fits", pixels=flat_px)
    assert info.imagetyp is ImageType.FLAT and info.classified_by == "header", info.type_source
    # a star field stays a light, and says why
    info = normalise({**light.header, "IMAGETYP": "Light Frame", "OBJECT": "Flats"}, filename="seq_0001.fits",
                     pixels=light_px)
    assert info.imagetyp is ImageType.LIGHT and "object name 'Flats' says flat" in info.type_source
    for obj, kind in (("Dark Shark Nebula", ImageType.LIGHT), ("Flat", ImageType.LIGHT)):
        info = normalise({**flat.header, "IMAGETYP": "Light Frame", "OBJECT": obj},
                         filename="Lights/M51/seq_0001.fits" if obj == "Flat" else "seq_0001.fits", pixels=flat_px)
        assert info.imagetyp is kind, (obj, info.type_source)


def test_a_star_field_whose_path_names_a_dark_is_a_light(night):
    """No IMAGETYP, and a path that says dark (a 'Dark ... Nebula' target in the file name and in
    its folder): a dark never shows a star field, so the pixels make it a light. (The target's
    word made such frames darks, and enough of them a master dark of star fields.)"""
    from ccdwatch import evidence
    from ccdwatch.fitsio import read_raw

    raw = read_raw(night.files["light"][0])
    header = raw.header.copy()
    del header["IMAGETYP"]
    pixels = evidence.measure(raw.data)
    for name in ("Dark Shark Nebula_2024-03-10_22-00-03_L_-10.00C_0000.fits", "Dark Horse/frame_0001.fits",
                 "2024-03-10/Dark Shark Nebula/LIGHT/Dark Shark Nebula_0000.fits"):
        info = normalise(header, filename=name, pixels=pixels)
        assert info.imagetyp is ImageType.LIGHT and info.classified_by == "pixels", (name, info.type_source)
        assert "star field" in info.type_source
    dark = read_raw(night.files["dark"][0])  # a real dark in a dark's folder stays a dark
    header = dark.header.copy()
    del header["IMAGETYP"]
    info = normalise(header, filename="Darks/Dark_200s_0001.fits", pixels=evidence.measure(dark.data))
    assert info.imagetyp is ImageType.DARK and info.classified_by == "path"


def test_an_object_named_unknown_names_no_target():
    """'Unknown' (what some programs write without a target) is no object: such lights are grouped
    by their pointing, not stacked together across fields."""
    for value in ("Unknown", "UNKNOWN", "untitled"):
        info = normalise({"IMAGETYP": "Light Frame", "OBJECT": value, "FILTER": value, "EXPTIME": 60},
                         filename="frame_001.fits")
        assert info.object is None and info.filter is None, value
    assert normalise({"IMAGETYP": "Light Frame", "OBJECT": "M51"}, filename="x.fits").object == "M51"

# ---------------------------------------------------------------------------------- whole nights
def test_cmos_library_in_folders_without_imagetyp_and_decimal_commas(night, tmp_path):
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    layout = {"bias": "Bias/Bias_{:04d}.fits", "dark": "Dark/Dark_200s/Dark_200s_{:04d}.fits",
              "flat": "Flat/Flat_{:04d}.fits", "light": "Light/M51/Light_{:04d}.fits"}
    for kind, paths in night.files.items():
        for i, src in enumerate(paths, start=1):
            dest = cfg.paths.incoming / layout[kind].format(i)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            set_card(dest, "IMAGETYP", None)
            if kind == "bias":
                set_card(dest, "EXPTIME", "6,4E-05")
    run_once(cfg)
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        frames = s.scalars(select(Frame)).all()
        assert sorted(f.imagetyp for f in frames) == sorted(["bias"] * 3 + ["dark"] * 3 + ["flat"] * 3 + ["light"] * 4)
        assert all(f.classification["by"] == "path" for f in frames)
        biases = [f for f in frames if f.imagetyp == "bias"]
        assert all(f.exptime == pytest.approx(6.4e-5) for f in biases)
        assert not [f for f in frames if f.state in (FrameState.QUARANTINED, FrameState.FAILED)]
        assert {m.kind for m in s.scalars(select(Master))} == {"bias", "dark", "flat"}
        stack = s.scalar(select(Stack).where(Stack.current))
        assert stack is not None and stack.n_used == 4


def test_dome_flats_typed_light_and_test_frames_typed_light(night, tmp_path):
    """Flats saved as 'Light Frame' (their names say domeflat) make the master flat; a flat-test
    and a focus frame, also typed Light, are not stacked into one-frame stacks."""
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    for kind, paths in night.files.items():
        for i, src in enumerate(paths, start=1):
            name = f"domeflat_V_{i:03d}.fits" if kind == "flat" else src.name
            shutil.copy2(src, cfg.paths.incoming / name)
            if kind == "flat":
                set_card(cfg.paths.incoming / name, "IMAGETYP", "'Light Frame'")
    shutil.copy2(night.files["flat"][0], cfg.paths.incoming / "flat_test_01.fits")
    set_card(cfg.paths.incoming / "flat_test_01.fits", "IMAGETYP", "'Light Frame'")
    set_card(cfg.paths.incoming / "flat_test_01.fits", "DATE-OBS", "'2024-03-10T23:58:00'")  # another exposure
    shutil.copy2(night.files["light"][0], cfg.paths.incoming / "focus_0001.fits")
    set_card(cfg.paths.incoming / "focus_0001.fits", "DATE-OBS", "'2024-03-10T23:59:00'")  # another exposure
    run_once(cfg)
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        by_name = {Path(f.path).name: f for f in s.scalars(select(Frame))}
        assert all(by_name[f"domeflat_V_{i:03d}.fits"].imagetyp == "flat" for i in (1, 2, 3))
        assert by_name["flat_test_01.fits"].imagetyp == "unknown"
        assert by_name["focus_0001.fits"].imagetyp == "unknown"
        assert s.scalar(select(Master).where(Master.kind == "flat")).n_frames == 3
        stacks = s.scalars(select(Stack)).all()
        assert [st.n_used for st in stacks] == [4]
        assert all(f.state == FrameState.STACKED for f in by_name.values() if f.imagetyp == "light")


def _outcome(root: Path) -> dict:
    """What a reduction amounts to, independent of ids and paths: current masters by kind and
    inputs, each light's masters, each current stack's members and pixels."""
    with Catalog(str(root / "state" / "ccdwatch.db")) as cat, cat.reader() as s:
        frames = {f.id: Path(f.path).name for f in s.scalars(select(Frame))}
        masters = {m.id: m for m in s.scalars(select(Master))}
        usable = sorted((m.kind, m.filter or "", tuple(sorted(frames[i.frame_id] for i in m.inputs)))
                        for m in masters.values() if m.retired is None)
        cals = {}
        for c in s.scalars(select(Calibrated).where(Calibrated.current)):
            ms = tuple(sorted(frames[i.frame_id] for mid in (c.bias_id, c.dark_id, c.flat_id) if mid
                              for i in masters[mid].inputs))
            cals[frames[c.frame_id]] = (ms, hashlib.sha256(np.ascontiguousarray(fits.getdata(c.path)).tobytes())
                                        .hexdigest())
        stacks = sorted((tuple(sorted(frames[m.frame_id] for m in st.members if m.used)),
                         hashlib.sha256(np.ascontiguousarray(fits.getdata(st.path)).tobytes()).hexdigest())
                        for st in s.scalars(select(Stack).where(Stack.current)))
    return {"masters": usable, "calibrated": cals, "stacks": stacks}


def test_wrong_rule_then_corrected_converges_to_a_fresh_run(night, tmp_path):
    staging = night.files["bias"][0].parent
    wrong = ClassificationRule(glob="flat_*", imagetyp=ImageType.DARK)  # a user's mistake
    base = dict(incoming=staging, workers={"processes": 0}, report={"refresh": False})
    cfg_wrong = make_config(tmp_path / "fixed", **base)
    cfg_wrong = type(cfg_wrong)(**{**cfg_wrong.__dict__, "classify": (wrong,)})
    run_once(cfg_wrong)
    with Catalog(cfg_wrong.paths.database) as cat, cat.reader() as s:
        assert not s.scalars(select(Master).where(Master.kind == "flat")).all()
        assert {f.state for f in s.scalars(select(Frame).where(Frame.imagetyp == "light"))} == {"waiting"}
    cfg_right = make_config(tmp_path / "fixed", **base)  # same catalogue, the rule removed
    run_once(cfg_right)  # reclassifies at start-up
    fresh = make_config(tmp_path / "fresh", **base)
    run_once(fresh)
    assert _outcome(tmp_path / "fixed") == _outcome(tmp_path / "fresh")
    with Catalog(cfg_right.paths.database) as cat, cat.reader() as s:
        retired = s.scalars(select(Master).where(Master.retired.is_not(None))).all()
        assert retired and all(m.kind == "dark" for m in retired)
        flat = s.scalars(select(Frame).where(Frame.imagetyp == "flat")).first()
        assert any(e.kind == "reclassified" for e in flat.events)


def test_ignore_and_path_rules(night, tmp_path):
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    for kind, paths in night.files.items():
        for src in paths:
            dest = cfg.paths.incoming / ("Junk" if kind == "flat" else "Night") / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    cfg = type(cfg)(**{**cfg.__dict__, "classify": (ClassificationRule(path="Junk/**", imagetyp="ignore"),)})
    run_once(cfg)
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        flats = s.scalars(select(Frame).where(Frame.path.like("%/Junk/%"))).all()
        assert len(flats) == 3 and {f.state for f in flats} == {FrameState.IGNORED}
        assert all("rule 1 (path 'Junk/**')" in f.state_reason for f in flats)
        assert not s.scalars(select(Master).where(Master.kind == "flat")).all()


def test_a_glob_with_a_folder_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"use path = 'Dark/\*'"):
        parse_config({"classify": [{"glob": "Dark/*", "imagetyp": "dark"}]}, base=tmp_path)
    cfg = parse_config({"classify": [{"path": "**/flats/*", "imagetyp": "flat"},
                                     {"glob": "junk*", "imagetyp": "ignore"}]}, base=tmp_path)
    assert cfg.classify[0].matches("2024/flats/a.fits", {}) and not cfg.classify[0].matches("flats2/a.fits", {})
    assert cfg.classify[1].ignore


def test_summary_says_what_would_classify_the_unused_frames(night, tmp_path, capsys):
    """Darks in a folder that names no type, without IMAGETYP: their pixels cannot say 'dark', so
    they stay unclassified, and the summary gives the rule that would use them."""
    from ccdwatch.cli import main

    incoming = tmp_path / "incoming"
    for kind, paths in night.files.items():
        for src in paths:
            dest = incoming / ("misc" if kind == "dark" else "night") / src.name.replace("dark_", "x_")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            if kind == "dark":
                set_card(dest, "IMAGETYP", None)
    config = tmp_path / "c.toml"
    config.write_text(f'[paths]\nincoming = "{incoming}"\nproducts = "{tmp_path / "p"}"\n'
                      f'database = "{tmp_path / "c.db"}"\n[workers]\nprocesses = 0\n[report]\nrefresh = false\n'
                      '[[classify]]\nglob = "nothing*"\nimagetyp = "flat"\n')
    assert main(["-q", "--config", str(config), "watch", "--once"]) == 0
    out = capsys.readouterr().out
    assert "UNCLASSIFIED 3 frame(s)" in out
    assert 'path = "misc/**"' in out
    assert "rule 1 (glob 'nothing*') matched no frame" in out


def test_cmos_values_shifted_into_16_bits_are_detected_and_set_saturation(tmp_path):
    """A 12-bit CMOS writes values x16: its saturation is 65520, not 65535, and `show` says 12 bits."""
    from ccdwatch.evidence import adc_shift
    from ccdwatch.pipeline.calibrate import saturation

    rng = np.random.default_rng(5)
    shifted = (rng.integers(100, 4095, (64, 80)) << 4).astype(np.uint16)
    assert adc_shift(shifted) == 4 and adc_shift(shifted | 1) == 0 and adc_shift(shifted.astype(np.float32)) == 0
    cfg = make_config(tmp_path)
    frame = Frame(header={}, classification={"pixels": {"adc_shift": 4}})
    ctx = type("Ctx", (), {"cfg": cfg})()
    assert saturation(ctx, frame) == 65520.0  # type: ignore[arg-type]
    frame.header = {"SATURATE": 60000}
    assert saturation(ctx, frame) == 60000.0  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.int32, np.float32])
def test_saturated_map_is_the_comparison_with_the_level_in_any_raw_type(dtype):
    """The light job compares an integer raw with its saturation in the raw's own type (the level's
    ceiling; nothing beyond the type's range): the same map as ``raw >= level`` in float64."""
    from ccdwatch.jobs.tasks import _at_or_above, saturation_level

    rng = np.random.default_rng(3)
    raw = rng.integers(-200 if np.dtype(dtype).kind != "u" else 0, 251, (40, 50)).astype(dtype)
    for level in (-1e9, -200.5, -3.0, 0.0, 0.5, 10.2, 249.0, 249.9, 255.0, 65535.0, 1e12, np.inf, -np.inf, np.nan):
        assert np.array_equal(_at_or_above(raw, level), raw.astype(np.float64) >= level), (dtype, level)
    piled = rng.integers(1000, 4000, (40, 50)).astype(dtype if np.dtype(dtype).itemsize > 1 else np.uint16)
    piled.flat[:7] = 4095  # a 12-bit ceiling where pixels pile up
    assert saturation_level(piled, None) == 4095.0


@pytest.mark.parametrize("cards, seconds", [
    ({"EXPTIME": "3,5 s"}, 3.5),       # a number in a string, decimal comma, unit
    ({"EXPTIME": "6,4E-05"}, 6.4e-5),
    ({"EXPOINUS": 64}, 6.4e-5),        # microseconds (SharpCap)
    ({"EXPOSURE": "200"}, 200.0),
    ({"EXPTIME": "1,234,5"}, None),    # not a number: never guessed
])
def test_exposure_read_leniently(cards, seconds):
    info = normalise({"IMAGETYP": "Light", **cards}, filename="x.fits")
    assert info.exptime == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize("shape", [(16, 16), (5, 7), (3, 200), (2000, 3)])
def test_pixel_statistics_of_tiny_frames_never_fail(shape):
    from ccdwatch import evidence

    ev = evidence.measure(np.random.default_rng(0).integers(100, 200, shape).astype(np.uint16))
    assert ev.n_sources == 0 and ev.full_scale == 65535.0


def test_start_up_with_unchanged_rules_loads_no_frame(night, tmp_path):
    # the start-up reclassification asks the database for the frames classified under other
    # rules: with the same rules none is loaded; after a rule change, every read frame is
    from ccdwatch.catalog.queries import frames_to_reclassify
    from ccdwatch.headers import fingerprint

    staging = night.files["bias"][0].parent
    cfg = make_config(tmp_path, incoming=staging, workers={"processes": 0}, report={"refresh": False})
    run_once(cfg)
    changed = (ClassificationRule(glob="flat_*", imagetyp=ImageType.DARK),)
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        everything = frames_to_reclassify(s)
        assert len(everything) == sum(len(v) for v in night.files.values())
        assert frames_to_reclassify(s, unless_fingerprint=fingerprint(cfg.classify)) == []
        assert len(frames_to_reclassify(s, unless_fingerprint=fingerprint(changed))) == len(everything)



def test_masters_and_live_stacks_among_the_raw_files_are_not_used(night, tmp_path):
    """A master dark left in the darks' folder (typed 'Dark Frame', as tools keep their inputs'
    cards) and a live stack typed Light: neither goes into a master or a stack."""
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    for paths in night.files.values():
        for src in paths:
            shutil.copy2(src, cfg.paths.incoming / src.name)
    with fits.open(night.files["dark"][0]) as hdus:
        header = hdus[0].header.copy()
        header["DATE-OBS"] = "2024-03-10T21:00:00"
        fits.PrimaryHDU(hdus[0].data.astype(np.float32), header).writeto(cfg.paths.incoming / "MasterDark_200s.fits")
    shutil.copy2(night.files["light"][0], cfg.paths.incoming / "Stack_16bits_4frames_800s.fits")
    set_card(cfg.paths.incoming / "Stack_16bits_4frames_800s.fits", "DATE-OBS", "'2024-03-11T01:00:00'")
    run_once(cfg)
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        by_name = {Path(f.path).name: f for f in s.scalars(select(Frame))}
        for name in ("MasterDark_200s.fits", "Stack_16bits_4frames_800s.fits"):
            assert by_name[name].state == FrameState.UNCLASSIFIED and "not a raw exposure" in by_name[name].state_reason
        assert s.scalar(select(Master).where(Master.kind == "dark")).n_frames == 3
        assert [st.n_used for st in s.scalars(select(Stack))] == [4]


def test_unused_frames_are_grouped_by_reason_not_one_line_per_file():
    """Twenty autofocus frames are one group with one rule; darks without a type whose pixel levels
    differ are one group; a master among the raw files gets no rule that would use it."""
    from ccdwatch.advice import unused_frames

    def frame(relpath: str, reason: str) -> Frame:
        return Frame(path=f"/in/{relpath}", relpath=relpath, state=FrameState.UNCLASSIFIED, state_reason=reason,
                     classification={})

    focus = [frame(f"focus_{i:04d}.fits", f"file name 'focus_{i:04d}.fits' says focus: not data "
                   "(IMAGETYP='Light Frame')") for i in range(1, 21)]
    darks = [frame(f"misc/x_{i}.fits", "no image-type keyword (IMAGETYP, FRAME); no folder or file name names "
                   f"a type; pixels are not conclusive (level {1000 + 7 * i} ADU (2% of full scale), {i % 2} "
                   "star-like sources)") for i in range(5)]
    master = [frame("Dark/MasterDark_300s.fit", "file name 'MasterDark_300s.fit' says master: not a raw "
                    "exposure (IMAGETYP='Dark Frame')")]
    advice = unused_frames(focus + darks + master)
    assert [(a.count, a.reason) for a in advice] == [
        (20, "file name says focus: not data (IMAGETYP='Light Frame')"),
        (5, "no image-type keyword (IMAGETYP, FRAME); no folder or file name names a type; pixels are not conclusive"),
        (1, "file name says master: not a raw exposure (IMAGETYP='Dark Frame')"),
    ]
    assert advice[0].rule is not None and 'glob = "focus*"' in advice[0].rule
    assert advice[1].rule is not None and 'path = "misc/**"' in advice[1].rule
    assert advice[2].rule is None
    # names with no common start: the word they share
    mixed = [frame("M51_V_focus.fits", "file name 'M51_V_focus.fits' says focus: not data"),
             frame("focus_0001.fits", "file name 'focus_0001.fits' says focus: not data")]
    rule = unused_frames(mixed)[0].rule
    assert rule is not None and 'glob = "*focus*"' in rule
    apart = [frame("a1.fits", "file name 'a1.fits' says test: not data"),
             frame("b2.fits", "file name 'b2.fits' says test: not data")]
    rule = unused_frames(apart)[0].rule
    assert rule is not None and 'glob = "a1.fits"   # one such rule for each of these files' in rule


def test_waiting_lights_say_what_darks_exist(night, tmp_path):
    """Darks at another temperature: the lights' reason names the masters' temperature; with the
    darks typed otherwise by mistake, it says none has arrived."""
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    for kind, paths in night.files.items():
        for src in paths:
            shutil.copy2(src, cfg.paths.incoming / src.name)
            if kind == "dark":
                set_card(cfg.paths.incoming / src.name, "SET-TEMP", "-5.0")
                set_card(cfg.paths.incoming / src.name, "CCD-TEMP", "-5.0")
    run_once(cfg)
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        lights = s.scalars(select(Frame).where(Frame.imagetyp == "light")).all()
        assert {f.state for f in lights} == {FrameState.WAITING}
        assert all("within 2 degC of -20 degC: the master darks are at -5 degC" in f.state_reason for f in lights)
    cfg = make_config(tmp_path / "b", workers={"processes": 0}, report={"refresh": False})
    for paths in night.files.values():
        for src in paths:
            shutil.copy2(src, cfg.paths.incoming / src.name)
    cfg = type(cfg)(**{**cfg.__dict__, "classify": (ClassificationRule(glob="dark_*", imagetyp="bias"),)})
    run_once(cfg)
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        light = s.scalars(select(Frame).where(Frame.imagetyp == "light")).first()
        assert "no darks have arrived (3 needed)" in light.state_reason


def test_an_error_the_same_bytes_raise_again_is_not_retried(night, tmp_path, monkeypatch):
    from ccdwatch.jobs import tasks

    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    shutil.copy2(night.files["bias"][0], cfg.paths.incoming / "bias_001.fits")
    calls = []

    def broken(spec):
        calls.append(spec.path)
        raise ValueError("a value this file always has")

    monkeypatch.setattr(tasks, "ingest", broken)
    run_once(cfg)
    run_once(cfg)
    assert len(calls) == 1
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        frame = s.scalars(select(Frame)).one()
        assert frame.state == FrameState.QUARANTINED and frame.tries == 0
        assert frame.state_reason == "ingest-error: ValueError: a value this file always has"
        from ccdwatch.catalog.queries import night_type_counts

        assert night_type_counts(s) == []  # `nights` shows no blank night for it


def test_flats_calibrated_with_the_dark_flats_of_their_exposure(tmp_path):
    """Dark-flats of the flats' 3 s beside 200 s darks: the master flat subtracts the dark-flat
    (its hot pixels, 300-900 ADU on 20000, would otherwise be 1.5-4.5 % too bright) and matches
    the camera's true response there."""
    camera = synth.Camera(shape=(96, 128), hot_pixel_fraction=0.01, hot_pixel_rate=200.0)
    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    synth.make_night(cfg.paths.incoming, camera=camera, seed=3, n_bias=3, n_dark=3, dark_exptime=200.0, n_flat=3,
                     flat_exptime=3.0, filters=("V",), n_light=3, n_stars=30)
    synth.make_night(cfg.paths.incoming / "DarkFlat", camera=camera, seed=4, n_bias=0, n_dark=3, dark_exptime=3.0,
                     filters=(), n_light=0)
    run_once(cfg)
    with Catalog(cfg.paths.database) as cat, cat.reader() as s:
        flat = s.scalar(select(Master).where(Master.kind == "flat"))
        dark_flat = s.get(Master, flat.dark_id)
        assert dark_flat is not None and dark_flat.exptime == 3.0 and flat.dark_subtracted
        lights = s.scalars(select(Calibrated)).all()
        assert {s.get(Master, c.dark_id).exptime for c in lights} == {200.0}
        path = flat.path
    measured, truth = fits.getdata(path).astype(float), synth.flat_response(camera)
    hot = synth.hot_pixels(camera)
    ratio = measured / truth
    assert abs(np.nanmedian(ratio[hot]) / np.nanmedian(ratio[~hot]) - 1) < 0.004


def test_night_report_lists_unused_frames_by_reason_with_the_rule(night, tmp_path):
    """Three autofocus frames typed Light and a frame ignored by a rule: the night report groups them
    by reason and gives the rule that would use the focus frames, as the --once summary does."""
    import html

    from ccdwatch.report import build_report

    cfg = make_config(tmp_path, workers={"processes": 0}, report={"refresh": False})
    for paths in night.files.values():
        for src in paths:
            shutil.copy2(src, cfg.paths.incoming / src.name)
    for i in range(3):
        name = f"focus_{i + 1:04d}.fits"
        shutil.copy2(night.files["light"][i], cfg.paths.incoming / name)
        set_card(cfg.paths.incoming / name, "DATE-OBS", f"'2024-03-10T23:5{i}:00'")
    shutil.copy2(night.files["bias"][0], cfg.paths.incoming / "junk_001.fits")
    set_card(cfg.paths.incoming / "junk_001.fits", "DATE-OBS", "'2024-03-10T21:00:00'")
    cfg = type(cfg)(**{**cfg.__dict__, "classify": (ClassificationRule(glob="junk*", imagetyp="ignore"),)})
    run_once(cfg)
    with Catalog(cfg.paths.database) as cat:
        page = html.unescape(build_report(cfg, cat, "2024-03-10").read_text())
    assert "unclassified 3 frame(s) (focus_0001.fits, focus_0002.fits, focus_0003.fits): file name says focus" in page
    assert 'glob = "focus*"' in page
    assert "ignored 1 frame(s) (junk_001.fits): rule 1 (glob 'junk*')" in page


@pytest.mark.parametrize(("relpath", "target"), [
    ("M51_I_001.fit", "M51"), ("NGC 7000/LIGHT/Light_Ha_001.fits", "NGC 7000"), ("Sh2-155-Ha-003.fits", "Sh2-155"),
    ("2024-03-10/M42/Light_001.fits", "M42"), ("M101.fit", "M101"), ("ic1805_Ha_300s.fits", "ic1805"),
    ("IMG_1234.fits", None), ("Light_001.fits", None), ("M_001.fits", None), ("Mars_001.fits", None),
    ("frame_0001.fits", None), ("M1234_x.fits", None)])
def test_a_light_without_object_takes_the_designation_its_path_gives(relpath, target):
    """OBJECT blank (the real night's MaxIm lights): a catalogue designation at the start of the
    file name, else of the nearest folder, is the light's target; anything else names none."""
    info = normalise({"IMAGETYP": "Light Frame", "EXPTIME": 200}, filename=relpath)
    assert info.object == target
    if target is not None:  # a calibration frame takes no target from its name, OBJECT wins over the path
        assert normalise({"IMAGETYP": "Flat Field"}, filename=relpath).object is None
        assert normalise({"IMAGETYP": "Light Frame", "OBJECT": "Comet"}, filename=relpath).object == "Comet"
