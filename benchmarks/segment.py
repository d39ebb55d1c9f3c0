"""Segmentation recipes (task=segment): what they reach on their test splits, and how long.

    python benchmarks/segment.py --data-root ../shared/datasets --write-readme

Builds the two data sets with `kiln data make` (mnist-seg: MNIST digits pasted on 64x64 canvases,
a class per digit; shapes3d: 32^3 volumes of spheres and cubes), trains recipes/mnist-seg.yaml
and recipes/shapes3d.yaml, and reads the test figures from each run's eval-test.json. Time: the
whole `kiln train` process. `--pin-core N` runs every command on CPU core N alone (taskset): on a
machine shared with other work, one thread on one core beat two threads on two busy ones by 3-8x.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from readme_block import cpu_name, run_kiln, write_block

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"mnist-seg": "mnist-seg.yaml", "shapes3d": "shapes3d.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--pin-core", type=int, help="run on this CPU core alone (taskset)")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    cpus = None if args.pin_core is None else str(args.pin_core)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-segment-") as tmp:
        work = Path(tmp)
        for name, recipe in RECIPES.items():
            run_kiln("data", "make", name, "--data-root", args.data_root.resolve(), cwd=work,
                     cpus=cpus)  # fmt: skip
            seconds = run_kiln("train", REPO / "recipes" / recipe, f"run.dir={work}", cwd=work,
                               cpus=cpus)  # fmt: skip
            test = json.loads((work / name / "eval-test.json").read_text())
            foreground = [r["dice"] for r in test["per_class"][1:] if r["dice"] is not None]
            rows.append((recipe, test, sum(foreground) / len(foreground), seconds))

    pinned = "" if args.pin_core is None else f", pinned to one core (taskset -c {args.pin_core})"
    lines = [
        f"Measured on {cpu_name()}{pinned}; test splits (mnist-seg: 1,000 canvases of 64x64, "
        "11 classes; shapes3d: 100 volumes of 32^3, 3 classes). Means over all classes, "
        "background included; foreground Dice leaves it out. Time: the whole `kiln train` "
        "process.",
        "",
        "| recipe | test mean IoU | test mean Dice | foreground Dice | pixel accuracy | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for recipe, m, fg, seconds in rows:
        lines.append(
            f"| {recipe} | {m['miou']:.4f} | {m['mean_dice']:.4f} | {fg:.4f} | "
            f"{m['pixel_acc']:.4f} | {seconds:.0f} s |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        write_block("segment", text)


if __name__ == "__main__":
    main()
