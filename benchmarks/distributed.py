"""One process against several (torchrun, DDP; gloo on the CPU) on the same config and global batch.

    python benchmarks/distributed.py --data-root ../shared/datasets --write-readme

Runs `kiln train ... train.devices=N` for N = 1, 2 one after the other and reads each run's
metrics.csv (training images/s, which sums every process) and test accuracy; the wall time is the
whole `kiln train` process, torchrun's start included. The load average before and after is
printed, because other work on the machine changes the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

from readme_block import cpu_name, run_kiln, write_block

REPO = Path(__file__).resolve().parents[1]


def train(devices: int, args: argparse.Namespace, work: Path) -> dict:
    overrides = [
        f"data={args.data}", f"data.root={args.data_root.resolve()}", f"data.subset={args.subset}",
        f"model={args.model}", f"epochs={args.epochs}", f"batch={args.batch}", "device=cpu",
        "run.report=false", f"train.devices={devices}", f"run.dir={work}", f"name=n{devices}",
    ]  # fmt: skip
    wall = run_kiln("train", *overrides, cwd=work)
    with open(work / f"n{devices}" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    test = json.loads((work / f"n{devices}" / "eval-test.json").read_text())
    return {
        "devices": devices,
        "overrides": overrides[:-2],
        "images_per_s": float(rows[-1]["samples_per_s"]),  # the last epoch: warmed up
        "train_s": sum(float(r["seconds"]) for r in rows),
        "wall_s": wall,
        "test_acc": test["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--subset", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="the global batch")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kiln-distributed-") as tmp:
        results = [train(n, args, Path(tmp)) for n in args.devices]
    load_after = os.getloadavg()[0]
    base = results[0]
    lines = [
        f"Measured on {cpu_name()}, {os.cpu_count()} cores; load average {load_before:.1f} "
        f"before, {load_after:.1f} after. Config: `kiln train {' '.join(base['overrides'][:-1])} "
        f"train.devices=N` (global batch {args.batch}, each of N processes takes "
        f"{args.batch}/N). Images/s: the last epoch's training rate, all processes together; "
        "train: the epochs' seconds; wall: the whole command, torchrun's start included.",
        "",
        "| processes | images/s | vs 1 | train | wall | test acc |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = r["images_per_s"] / base["images_per_s"]
        lines.append(
            f"| {r['devices']} | {r['images_per_s']:,.0f} | {ratio:.2f}x | {r['train_s']:.1f} s | "
            f"{r['wall_s']:.1f} s | {r['test_acc']:.2%} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        write_block("distributed", text)


if __name__ == "__main__":
    main()
