"""Training to a time budget (`train.time`) against cutting the epochs by hand.

For a recipe, the full run is timed first (from `kiln.train` being called to its return: data,
training, test and report, what a budget counts); then, for budgets of 1/4, 1/2 and 1x that
time, the same recipe with `train.time=BUDGET`, and with its epochs cut by hand in the same
proportion (rounded, at least 1), as a person without the option would. Each run is its own
process; the table shows the median over --repeats runs, every run's figures, and the load
average of the machine while they ran (wall-clock budgets mean nothing on a busy machine without
it).

    python benchmarks/budget.py [--recipe mnist-fast] [--repeats 3] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

from readme_block import cpu_name, write_block

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FRACTIONS = (0.25, 0.5, 1.0)
RUN = """
import json, sys, time
import kiln
started = time.perf_counter()
run = kiln.train(sys.argv[1], progress=False, **json.loads(sys.argv[2]))
seconds = time.perf_counter() - started
info = json.loads((run.path / "info.json").read_text())
print("RESULT " + json.dumps({"seconds": seconds, "test_acc": run.test_acc,
                              "epochs": len(run.history), "budget": info.get("budget")}))
"""


def shared_datasets() -> Path:
    for base in (ROOT, *ROOT.parents):
        if (base / "shared" / "datasets").is_dir():
            return base / "shared" / "datasets"
    raise SystemExit("no shared/datasets folder next to or above the checkout")


def run(recipe: str, runs: Path, **overrides) -> dict:
    """One `kiln.train` in a fresh process; its seconds, test accuracy, epochs, budget record."""
    settings = {"data__root": str(shared_datasets()), "run__dir": str(runs), **overrides}
    env = {**os.environ, "KILN_OFFLINE": "1"}
    load = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(ROOT / "recipes" / f"{recipe}.yaml"), json.dumps(settings)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{recipe} {overrides} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "load": load}


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mnist-fast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", default="/tmp/kiln-budget-bench", help="run folders go here")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    import yaml

    epochs = yaml.safe_load((ROOT / "recipes" / f"{args.recipe}.yaml").read_text())["train"][
        "epochs"
    ]
    runs = Path(args.runs)
    full = [run(args.recipe, runs) for _ in range(args.repeats)]
    seconds = median([r["seconds"] for r in full])
    print(f"{args.recipe}: {epochs} epochs, {seconds:.1f} s (median of {len(full)}), "
          f"test {median([r['test_acc'] for r in full]):.2%}", flush=True)  # fmt: skip
    rows = []
    for fraction in FRACTIONS:
        budget = round(seconds * fraction, 1)
        by_hand = max(1, round(epochs * fraction))
        timed, cut = [], []
        for _ in range(args.repeats):  # interleaved: both see the same load
            timed.append(run(args.recipe, runs, train__time=budget))
            cut.append(run(args.recipe, runs, train__epochs=by_hand))
        rows.append((fraction, budget, by_hand, timed, cut))
        print(row(args.recipe, fraction, budget, by_hand, timed, cut), flush=True)
    table = render(args.recipe, epochs, seconds, full, rows, args.repeats)
    print(table)
    if args.write_readme:
        write_block(f"budget-{args.recipe}", table)


def over(r: dict) -> float:
    return r["budget"]["over_seconds"]


def row(recipe, fraction, budget, by_hand, timed, cut) -> str:
    t_acc, c_acc = median([r["test_acc"] for r in timed]), median([r["test_acc"] for r in cut])
    t_sec, c_sec = median([r["seconds"] for r in timed]), median([r["seconds"] for r in cut])
    worst = max(over(r) for r in timed)
    each = " / ".join(
        f"{r['epochs']} ep {r['test_acc']:.2%} {r['seconds']:.1f} s ({over(r):+.1f})" for r in timed
    )
    load = max(r["load"] for r in timed + cut)
    planned = "/".join(str(r["budget"]["planned_epochs"]) for r in timed)
    return (
        f"| `{recipe}` | {fraction:g}x = {budget:.1f} s | {planned} | {t_acc:.2%} | {t_sec:.1f} | "
        f"{median([over(r) for r in timed]):+.1f} ({worst / budget:+.0%} worst) | {by_hand} | "
        f"{c_acc:.2%} | {c_sec:.1f} | {load:.1f} | {each} |"
    )


def render(recipe, epochs, seconds, full, rows, repeats) -> str:
    lines = [
        f"`python benchmarks/budget.py --recipe {recipe} --repeats {repeats}` on {cpu_name()}, "
        f"{os.cpu_count()} logical CPUs, {date.today().isoformat()}; the full recipe "
        f"({epochs} epochs): {seconds:.1f} s, test "
        f"{median([r['test_acc'] for r in full]):.2%} (median of {len(full)}; each: "
        + " / ".join(f"{r['seconds']:.1f} s {r['test_acc']:.2%}" for r in full)
        + ").",
        "",
        "| recipe | budget | epochs planned | test acc | seconds | over budget (median) | "
        "epochs by hand | test acc | seconds | load avg (max) | each budget run |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for fraction, budget, by_hand, timed, cut in rows:
        lines.append(row(recipe, fraction, budget, by_hand, timed, cut))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
