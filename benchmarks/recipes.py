"""Time to accuracy: `kiln train RECIPE` end to end, against the targets Kiln sets itself.

Each recipe runs as its own process, as a person would run it, with its default settings (the
report included); the time is from starting the process until it exits: imports, reading and
decoding the data, training, validation, the test evaluation, the report and the exit. The run's
phases.json splits it (imports, data, model, first training step, training, test, report, exit),
and the machine's load average is recorded with each run: on a shared machine, compare figures
taken at a similar load. The table shows the median over `--repeats` and every run's figures.

    python benchmarks/recipes.py [--repeats 3] [--only mnist-fast] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from readme_block import cpu_name, write_block

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# recipe: (data.root below the shared datasets folder, target test accuracy, target seconds)
TARGETS = {
    "mnist-fast": ("", 0.99, 10),
    "fashion-mnist-fast": ("", 0.91, 30),
    "cifar10-fast": ("cifar10", 0.90, 720),
    "cifar10-gpu": ("cifar10", 0.94, None),  # as fast as it goes: no target time
}
TEST_LINE = re.compile(r"test acc ([0-9.]+)%")
# phases.json's marks, and the name of the phase each one ends
PHASES = {"imported": "imports", "data": "data", "model": "model", "first_step": "first step",
          "trained": "training", "tested": "test", "reported": "report"}  # fmt: skip


def shared_datasets() -> Path:
    for base in (ROOT, *ROOT.parents):
        if (base / "shared" / "datasets").is_dir():
            return base / "shared" / "datasets"
    raise SystemExit("no shared/datasets folder next to or above the checkout; pass --data-root")


def run_once(recipe: str, data_root: Path, extra: list[str]) -> dict:
    """Seconds to the process's exit, test accuracy, the seconds of each phase, the load."""
    with tempfile.TemporaryDirectory() as runs:
        cmd = [
            sys.executable, "-m", "kiln", "train", str(ROOT / "recipes" / f"{recipe}.yaml"),
            f"data.root={data_root}", f"run.dir={runs}", *extra,
        ]  # fmt: skip
        env = {**os.environ, "KILN_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        load = os.getloadavg()[0]
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
        )
        accuracy, tail = None, []
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            match = TEST_LINE.search(line)
            if match and accuracy is None:
                accuracy = float(match.group(1)) / 100
        proc.wait()
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or accuracy is None:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(tail)}")
        marks = {}
        for path in Path(runs).glob("*/phases.json"):
            marks = json.loads(path.read_text())["seconds_since_process_start"]
        phases, previous = {}, 0.0
        for mark, name in PHASES.items():
            if mark in marks:
                phases[name], previous = marks[mark] - previous, marks[mark]
        phases["exit"] = seconds - previous
        load = max(load, os.getloadavg()[0])
        return {"seconds": seconds, "accuracy": accuracy, "phases": phases, "load": load}


def gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    cpu = [name for name in TARGETS if TARGETS[name][2] is not None]
    parser.add_argument("--only", nargs="+", choices=list(TARGETS), default=cpu)
    parser.add_argument("--data-root", type=Path, help="default: shared/datasets by the checkout")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value for every recipe")
    args = parser.parse_args()
    datasets = args.data_root or shared_datasets()
    rows, phase_rows = [], []
    for recipe in args.only:
        sub, target_acc, target_s = TARGETS[recipe]
        runs = []
        for i in range(args.repeats):
            run = run_once(recipe, datasets / sub, [f"train.seed={i}", *args.overrides])
            runs.append(run)
            split = ", ".join(f"{name} {sec:.1f}" for name, sec in run["phases"].items())
            print(
                f"{recipe} seed {i}: {run['accuracy']:.2%} test accuracy in "
                f"{run['seconds']:.1f} s ({split}; load {run['load']:.1f})",
                flush=True,
            )
        secs = statistics.median(r["seconds"] for r in runs)
        a = statistics.median(r["accuracy"] for r in runs)
        met = "yes" if a >= target_acc and (target_s is None or secs <= target_s) else "no"
        each = ", ".join(f"{r['accuracy']:.2%} / {r['seconds']:.1f} s" for r in runs)
        loads = ", ".join(f"{r['load']:.1f}" for r in runs)
        target = f"{target_acc:.0%}" + (f" in {target_s} s" if target_s else "")
        rows.append(f"| `{recipe}` | {target} | {a:.2%} | {secs:.1f} | {met} | {each} | {loads} |")
        names = list(runs[0]["phases"])
        medians = [statistics.median(r["phases"].get(n, 0.0) for r in runs) for n in names]
        phase_rows.append(f"| `{recipe}` | " + " | ".join(f"{m:.1f}" for m in medians) + " |")
        phase_names = names
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = cpu_name()
    gpu = gpu_name()
    if gpu:
        cpu = f"{gpu} with {cpu}"
    seeds = f"train.seed=0..{args.repeats - 1}"
    extra = f" {' '.join(args.overrides)}" if args.overrides else ""
    marker = "recipes-gpu" if gpu else "recipes"
    text = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/recipes.py --repeats "
            f"{args.repeats} --only {' '.join(args.only)}{extra}` ({seeds}) on {cpu}, "
            f"{cores} cores, Python {platform.python_version()}.",
            "",
            "| recipe | target | test accuracy (median) | seconds to exit (median) | met | "
            "each run | load average (1 min) |",
            "| --- | --- | ---: | ---: | --- | --- | --- |",
            *rows,
            "",
            "Where the seconds go (medians; from the run's phases.json): imports until kiln.train "
            "starts, reading the data, building the model, the first training step (the trainer, "
            "the optimizer, one batch), the rest of training with validation, the test "
            "evaluation, the report, and the exit.",
            "",
            "| recipe | " + " | ".join(phase_names) + " |",
            "| --- |" + " ---: |" * len(phase_names),
            *phase_rows,
        ]
    )
    print("\n" + text)
    if args.write_readme:
        write_block(marker, text)


if __name__ == "__main__":
    main()
