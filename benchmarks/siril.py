"""Siril (``siril-cli``) on the same night, with a script equivalent to ccdwatch's reduction."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def siril_cli() -> str | None:
    """Path of ``siril-cli`` (Debian package ``siril``), or None."""
    return shutil.which("siril-cli")


def prepare(manifest: dict, workdir: Path) -> Path:
    """Lay the night out as Siril expects (one directory per frame set, symlinks to the raw files)
    and write the script; returns the script path.

    The script: stack biases (sigma-clip), calibrate darks with the bias and stack them (so the
    dark can be scaled to the lights' exposure with ``-opt``), calibrate and stack the flats of
    each filter (multiplicative normalisation), calibrate the lights with bias, dark (optimised
    scaling) and flat (``preprocess``; Siril 1.0 has no ``calibrate`` yet), register (global star alignment),
    stack with sigma-clip rejection and additive+scale normalisation. When the darks match the
    lights' exposure (the "matched" and "small" nights) the dark is subtracted as it is, without
    ``-opt``: the common case, where Siril has no dark scaling to search for.
    """
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    files = manifest["files"]
    groups: dict[str, list[str]] = {"biases": files["bias"], "darks": files["dark"]}
    filters = sorted(set(manifest["flat_filters"]))
    for filt in filters:
        groups[f"flats_{filt}"] = [p for p, f in zip(files["flat"], manifest["flat_filters"], strict=False) if f == filt]
        groups[f"lights_{filt}"] = [lt["path"] for lt in manifest["lights"] if lt["filter"] == filt]
    for name, paths in groups.items():
        (workdir / name).mkdir()
        for p in paths:
            os.symlink(p, workdir / name / Path(p).name)
    (workdir / "masters").mkdir()
    matched = manifest["exptimes"]["dark"] == manifest["exptimes"]["light"]
    opt = "" if matched else " -opt"
    lines = [
        "requires 1.0.0",
        "cd biases", "convert bias -out=../process", "cd ../process",
        "stack bias rej 3 3 -nonorm -out=../masters/bias_stacked", "cd ..",
        "cd darks", "convert dark -out=../process", "cd ../process",
        "preprocess dark -bias=../masters/bias_stacked",
        "stack pp_dark rej 3 3 -nonorm -out=../masters/dark_stacked", "cd ..",
    ]
    for filt in filters:
        lines += [
            f"cd flats_{filt}", f"convert flat_{filt} -out=../process", "cd ../process",
            f"preprocess flat_{filt} -bias=../masters/bias_stacked",
            f"stack pp_flat_{filt} rej 3 3 -norm=mul -out=../masters/flat_{filt}_stacked", "cd ..",
            f"cd lights_{filt}", f"convert light_{filt} -out=../process", "cd ../process",
            f"preprocess light_{filt} -bias=../masters/bias_stacked -dark=../masters/dark_stacked{opt} "
            f"-flat=../masters/flat_{filt}_stacked",
            f"register pp_light_{filt}",
            f"stack r_pp_light_{filt} rej 3 3 -norm=addscale -output_norm -out=../result_{filt}", "cd ..",
        ]
    lines.append("close")
    script = workdir / "night.ssf"
    script.write_text("\n".join(lines) + "\n")
    return script


def command(script: Path) -> list[str]:
    return [siril_cli() or "siril-cli", "-d", str(script.parent), "-s", str(script)]
