"""Whole-night A/B: ``watch --once`` of two ccdwatch trees on the same benchmark night, alternated.

``python -m benchmarks.pairnights --a TREE_A --b TREE_B`` (``--night scaled|small|matched``,
``--pairs 4``): one warm-up run of A, then ``--pairs`` pairs in the order AB, BA, AB..., each run
a new catalogue and products directory, the night's raws read through before every run
(`measure.run`'s ``warm``) so that neither side reads them from the disk. Both trees' packages are
byte-compiled first, as installing them would (under ``PYTHONDONTWRITEBYTECODE`` a checkout's
modules were otherwise compiled again at every run: ~0.8 s of the scaled night, 2026-12-01). Each
tree's ``ccdwatch`` is imported from the tree itself (``PYTHONPATH`` and the working directory), with this Python.
Prints one JSON line: each side's walls, their medians and B/A of the medians. On a shared
machine this is the figure for what a change did to a whole night: both sides see the same load,
run by run.
"""

from __future__ import annotations

import argparse
import compileall
import json
import shutil
import statistics
import sys
from pathlib import Path

from benchmarks import measure, night

HERE = Path(__file__).resolve().parent


def one_night(tree: Path, incoming: str, raws: list[str], out: Path) -> float:
    """Wall seconds of one ``watch --once`` of ``tree`` on ``incoming``, into a new ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "ccdwatch", "watch", "--once", "--incoming", incoming,
           "--products", out / "products", "--db", out / "catalogue.db"]
    run = measure.run(f"pair-{tree.name}", cmd, cwd=tree, env={"PYTHONPATH": str(tree)}, warm=raws)
    if run.returncode:
        raise SystemExit(f"{tree}: watch --once exited {run.returncode}")
    return run.wall


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--a", type=Path, required=True, help="tree holding the ccdwatch package of side A")
    p.add_argument("--b", type=Path, required=True)
    p.add_argument("--night", default="scaled", choices=sorted(night.SHAPES))
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--workdir", type=Path, default=HERE / "results" / "nights")
    args = p.parse_args(argv)
    work = args.workdir.absolute()
    manifest = night.night(work / "nights", "2k", args.night)
    raws = [path for paths in manifest["files"].values() for path in paths]
    trees = {"A": args.a.absolute(), "B": args.b.absolute()}
    out = work / "pairnights" / night.night_dir("2k", args.night)
    for tree in trees.values():  # as installing them would: else, under PYTHONDONTWRITEBYTECODE, every run compiles
        compileall.compile_dir(tree / "ccdwatch", quiet=1)
    one_night(trees["A"], manifest["incoming"], raws, out)  # warm-up: caches, byte-compiled code
    walls: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(args.pairs):
        for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
            walls[side].append(round(one_night(trees[side], manifest["incoming"], raws, out), 3))
    shutil.rmtree(out, ignore_errors=True)
    medians = {side: statistics.median(w) for side, w in walls.items()}
    print(json.dumps({"night": night.night_dir("2k", args.night), "pairs": args.pairs, "A": walls["A"],
                      "B": walls["B"], "median A": medians["A"], "median B": medians["B"],
                      "B/A": medians["B"] / medians["A"]}))


if __name__ == "__main__":
    main()
