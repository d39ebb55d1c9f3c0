"""Time to accuracy: `kiln train RECIPE` end to end, against the targets Kiln sets itself.

Each recipe runs as its own process, as a person would run it; the time is from starting the
process until the line with the final test accuracy is printed (imports, reading and decoding the
data, training, validation and the test evaluation included; the report written afterwards is
not). The table shows the median over `--repeats` and every run's figures.

    python benchmarks/recipes.py [--repeats 3] [--only mnist-fast] [--write-readme]
"""

from __future__ import annotations

import argparse
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
    "mnist-fast": ("", 0.99, 15),
    "fashion-mnist-fast": ("", 0.91, 40),
    "cifar10-fast": ("cifar10", 0.90, 900),
    "cifar10-gpu": ("cifar10", 0.94, None),  # as fast as it goes: no target time
}
TEST_LINE = re.compile(r"test acc ([0-9.]+)%")


def shared_datasets() -> Path:
    for base in (ROOT, *ROOT.parents):
        if (base / "shared" / "datasets").is_dir():
            return base / "shared" / "datasets"
    raise SystemExit("no shared/datasets folder next to or above the checkout; pass --data-root")


def run_once(recipe: str, data_root: Path, extra: list[str]) -> tuple[float, float]:
    """(seconds from process start to the test-accuracy line, test accuracy)."""
    with tempfile.TemporaryDirectory() as runs:
        cmd = [
            sys.executable, "-m", "kiln", "train", str(ROOT / "recipes" / f"{recipe}.yaml"),
            f"data.root={data_root}", f"run.dir={runs}", "run.report=false", *extra,
        ]  # fmt: skip
        env = {**os.environ, "KILN_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
        )
        seconds, accuracy, tail = None, None, []
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            match = TEST_LINE.search(line)
            if match and seconds is None:
                seconds = time.perf_counter() - started
                accuracy = float(match.group(1)) / 100
        proc.wait()
        if proc.returncode != 0 or seconds is None:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(tail)}")
        return seconds, accuracy


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
    rows = []
    for recipe in args.only:
        sub, target_acc, target_s = TARGETS[recipe]
        runs = []
        for i in range(args.repeats):
            seconds, acc = run_once(recipe, datasets / sub, [f"train.seed={i}", *args.overrides])
            runs.append((seconds, acc))
            print(f"{recipe} seed {i}: {acc:.2%} test accuracy in {seconds:.1f} s", flush=True)
        s = statistics.median(r[0] for r in runs)
        a = statistics.median(r[1] for r in runs)
        met = "yes" if a >= target_acc and (target_s is None or s <= target_s) else "no"
        each = ", ".join(f"{acc:.2%} / {sec:.1f} s" for sec, acc in runs)
        target = f"{target_acc:.0%}" + (f" in {target_s} s" if target_s else "")
        rows.append(f"| `{recipe}` | {target} | {a:.2%} | {s:.1f} | {met} | {each} |")
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
            "| recipe | target | test accuracy (median) | seconds (median) | met | each run |",
            "| --- | --- | ---: | ---: | --- | --- |",
            *rows,
        ]
    )
    print("\n" + text)
    if args.write_readme:
        write_block(marker, text)


if __name__ == "__main__":
    main()
