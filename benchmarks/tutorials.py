"""The tutorials' settings against Kiln's recipes on the same data: `kiln train RECIPE` end to end,
each as its own process, from the repository's root (recipes/tutorials/*.yaml import their model
classes from there).

Every run is recorded in benchmarks/tutorials.json (test figure, wall seconds, load average
before and after, date, command), so that a busy machine can measure a few at a time; the table
in recipes/tutorials/README.md is rendered from that file. The comparisons (dropout, L1/L2,
batch norm) keep their runs and write `kiln compare` pictures into recipes/tutorials/.

    python benchmarks/tutorials.py --list
    python benchmarks/tutorials.py --only mnist-mlp [--side tutorial|kiln|both] --write
    python benchmarks/tutorials.py --only twolayer --seed 1 --write  # another seed, kept beside
    python benchmarks/tutorials.py --compare --write      # the five FashionMNIST MLP runs
    python benchmarks/tutorials.py --table --write        # re-render the table only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from readme_block import cpu_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TUTORIALS = ROOT / "recipes" / "tutorials"
RESULTS = HERE / "tutorials.json"
README = TUTORIALS / "README.md"


@dataclass
class Pair:
    """A tutorial's settings (`tutorial`) and Kiln's recipe for the same data (`kiln`)."""

    name: str
    what: str
    tutorial: str  # recipe path from the repository's root
    kiln: str | None
    data: str  # data.root below the shared datasets folder ("" = the folder itself; None: none)
    metric: str  # key of eval-test.json
    percent: bool = True
    note: str = ""
    kiln_data: str | None = None  # Kiln's recipe's data.root, where it reads other files
    best: str | None = None  # Kiln's best recipe on the data when `kiln` is its quick one
    unmeasured: str = ""  # why the tutorial's recipe cannot be measured here


PAIRS = [
    Pair("mnist-mlp", "MNIST, MLP 784-64-10, Adam, 5 epochs",
         "recipes/tutorials/mnist-mlp-tutorial.yaml", "recipes/mnist-mlp.yaml", "", "accuracy"),
    Pair("mnist-example", "MNIST, the PyTorch example's CNN (Dropout2d, log_softmax + NLL), "
         "SGD 0.01 / 0.5, 10 epochs", "recipes/tutorials/mnist-example-tutorial.yaml",
         "recipes/mnist-fast.yaml", "", "accuracy"),
    Pair("mnist-lenet", "MNIST, LeNet-5, SGD 0.01 / 0.5, 10 epochs",
         "recipes/tutorials/mnist-lenet-tutorial.yaml", "recipes/mnist-fast.yaml", "",
         "accuracy"),
    Pair("fashion-mnist", "FashionMNIST quickstart, MLP 784-512-512-10, SGD 1e-3, 5 epochs",
         "recipes/fashion-mnist-mlp-tutorial.yaml", "recipes/fashion-mnist-mlp.yaml", "",
         "accuracy"),
    Pair("cifar10-lenet", "CIFAR-10, the tutorial's Net, batch 4, SGD 0.001 / 0.9, 2 epochs",
         "recipes/tutorials/cifar10-lenet-tutorial.yaml", "recipes/cifar10-quick.yaml", "",
         "accuracy", kiln_data="cifar10",  # the PNG folder (the tutorial's: the builtin)
         best="recipes/cifar10-fast.yaml"),
    Pair("twolayer", "diabetes table, TwoLayerNet, SGD, MSE, 500 steps of 64 rows",
         "recipes/tutorials/twolayer-table-tutorial.yaml", "recipes/diabetes.yaml", None, "r2",
         percent=False, note="R2 on the 88 test patients (higher is better)"),
    Pair("vae", "MNIST, the PyTorch example's VAE 784-400-20, Adam, 10 epochs",
         "recipes/tutorials/mnist-vae-tutorial.yaml", "recipes/mnist-vae-fast.yaml", "", "elbo",
         percent=False, note="test ELBO, nats per image (higher is better)",
         best="recipes/mnist-vae.yaml"),
    Pair("unet3d", "4-channel, 4-class 32^3 volumes (made up, BraTS-shaped), 3-D U-Net, "
         "Dice + CE, StepLR(10, 0.1), 20 epochs", "recipes/tutorials/unet3d-tutorial.yaml", None,
         None, "miou", percent=False, note="test mean IoU; no Kiln recipe beside it"),
    Pair("resnet18", "ants and bees, ResNet-18 fine-tuned from ImageNet weights, batch 4, "
         "SGD 0.001 / 0.9, StepLR(7, 0.1), 25 epochs",
         "recipes/tutorials/resnet18-transfer-tutorial.yaml", None, None, "accuracy",
         unmeasured="not measured: it needs torchvision's ImageNet weights and the hymenoptera "
         "images, and the machine these figures come from is offline"),
    Pair("pets", "four images (2 cats, 2 dogs), CSV img,label, 3 train / 1 test",
         "recipes/tutorials/pets-tutorial.yaml", None, None, "accuracy",
         note="one test image: a check that it runs, not a result"),
]  # fmt: skip
# Kiln's best recipes, too long to measure again on a busy 2-core CPU beside their quick ones:
# their figures as measured before (benchmarks/README.md), shown as such.
CITED = {
    "cifar10-lenet/best": "90.04% in 432 s (median of 3 seeds, benchmarks/recipes.py, in "
    "benchmarks/README.md)",
    "vae/best": "-101.70 in 19 min 22 s (on one core, benchmarks/generate.py, in "
    "benchmarks/README.md)",
}
COMPARE = {
    "dropout": ["recipes/dropout-none.yaml", "recipes/dropout-0.5.yaml"],
    "l1-l2": ["recipes/dropout-none.yaml", "recipes/tutorials/regularize-l1.yaml",
              "recipes/tutorials/regularize-l2.yaml"],
    "batchnorm": ["recipes/dropout-none.yaml", "recipes/tutorials/batchnorm.yaml"],
}  # fmt: skip


def shared_datasets() -> Path:
    for base in (ROOT, *ROOT.parents):
        if (base / "shared" / "datasets").is_dir():
            return base / "shared" / "datasets"
    raise SystemExit("no shared/datasets folder next to or above the checkout; pass --data-root")


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def save_result(key: str, result: dict) -> None:
    results = load_results()
    results[key] = result
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def train(recipe: str, data_root: Path | None, runs: Path, extra: list[str]) -> dict:
    """`kiln train RECIPE` from the repository's root: its test figures, wall seconds, load."""
    before = os.getloadavg()
    args = [recipe, f"run.dir={runs}", "run.report=false", *extra]
    if data_root is not None:
        args.insert(1, f"data.root={data_root}")
    command = [sys.executable, "-m", "kiln", "train", *args]
    env = {**os.environ, "KILN_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"kiln train {' '.join(args)} failed:\n{out.stdout[-3000:]}{out.stderr}")
    made = [line.split("Run directory: ", 1)[1] for line in out.stdout.splitlines()
            if line.startswith("Run directory: ")]  # fmt: skip
    run = Path(made[-1]) if Path(made[-1]).is_absolute() else ROOT / made[-1]
    test = json.loads((run / "eval-test.json").read_text())
    return {
        "recipe": recipe,
        "command": f"kiln train {recipe}" + (" data.root=DIR" if data_root is not None else ""),
        "test": {k: v for k, v in test.items() if isinstance(v, (int, float))},
        "seconds": round(seconds, 1),
        "load_before": [round(v, 2) for v in before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores",
        "run": str(run),
    }


def measure(
    pair: Pair, side: str, datasets: Path, runs: Path, extra: list[str], seed: int = 0
) -> None:
    recipe = pair.tutorial if side == "tutorial" else pair.kiln
    if recipe is None or (side == "tutorial" and pair.unmeasured):
        return
    data = pair.kiln_data if side == "kiln" and pair.kiln_data is not None else pair.data
    data_root = None if data is None else datasets / data
    if pair.name == "pets":
        make_pets(datasets)
    if pair.name == "unet3d" and not (ROOT / "data" / "tumours" / "classes.txt").is_file():
        sys.path.insert(0, str(TUTORIALS))
        from make_tumours import make

        make(ROOT / "data" / "tumours")
    result = train(recipe, data_root, runs, [*extra, f"train.seed={seed}"] if seed else extra)
    result["seed"] = seed
    result["command"] += f" train.seed={seed}" if seed else ""
    save_result(f"{pair.name}/{side}" + (f"/seed{seed}" if seed else ""), result)
    figure = result["test"].get(pair.metric)
    load = f"load {result['load_before'][0]} -> {result['load_after'][0]}"
    print(f"{pair.name} {side} seed {seed}: {pair.metric} {figure} in {result['seconds']} s "
          f"({load})")  # fmt: skip


def make_pets(datasets: Path) -> None:
    """data/pets from two CIFAR-10 cats and two dogs (recipes/tutorials/make_pets.py)."""
    sys.path.insert(0, str(TUTORIALS))
    from make_pets import make_pets as make

    make(datasets / "cifar10" / "train", ROOT / "data" / "pets")


def compare(datasets: Path, runs: Path, extra: list[str]) -> None:
    """Each comparison's runs (the shared baseline once) and its `kiln compare` picture."""
    made: dict[str, Path] = {}
    for recipes in COMPARE.values():
        for recipe in recipes:
            if recipe not in made:
                result = train(recipe, datasets, runs, extra)
                save_result(f"compare/{Path(recipe).stem}", result)
                made[recipe] = Path(result["run"])
                print(f"{recipe}: {result['test']['accuracy']:.2%} in {result['seconds']} s")
    for name, recipes in COMPARE.items():
        picture = TUTORIALS / f"compare-{name}.png"
        command = [sys.executable, "-m", "kiln", "compare", *(str(made[r]) for r in recipes),
                   "-o", str(picture)]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        print(f"wrote {picture}")


def shown(value: float | None, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if percent else f"{value:.3f}"


def figure(results: dict, key: str, pair: Pair) -> str:
    """Seed 0's figure and seconds, and the other seeds' figures where they were measured."""
    result = results.get(key)
    if result is None:
        return CITED.get(key, "not measured")
    text = f"{shown(result['test'].get(pair.metric), pair.percent)} in {result['seconds']:.0f} s"
    seeds = sorted((int(k.rsplit("/seed", 1)[1]), r) for k, r in results.items()
                   if k.startswith(f"{key}/seed"))  # fmt: skip
    if seeds:
        others = ", ".join(shown(r["test"].get(pair.metric), pair.percent) for _, r in seeds)
        text += f" (seed 0; seeds {', '.join(str(n) for n, _ in seeds)}: {others})"
    return text


def table() -> str:
    results = load_results()
    lines = [
        "| example | tutorial's settings | Kiln's recipe | commands |",
        "| --- | ---: | ---: | --- |",
    ]
    for pair in PAIRS:
        recipes = [pair.tutorial, *(r for r in (pair.kiln, pair.best) if r)]
        commands = "<br>".join(f"`kiln train {r}`" for r in recipes)
        what = pair.what + (f" ({pair.note})" if pair.note else "")
        tutorial = pair.unmeasured or figure(results, f"{pair.name}/tutorial", pair)
        kiln_figure = figure(results, f"{pair.name}/kiln", pair) if pair.kiln else "-"
        if pair.best:
            kiln_figure += f"<br>best: {figure(results, f'{pair.name}/best', pair)}"
        lines.append(f"| {what} | {tutorial} | {kiln_figure} | {commands} |")
    compared = [results[k] for k in sorted(results) if k.startswith("compare/")]
    if compared:
        lines += ["", "| comparison run | test accuracy | seconds |", "| --- | ---: | ---: |"]
        lines += [f"| `{r['recipe']}` | {r['test']['accuracy']:.2%} | {r['seconds']:.0f} |"
                  for r in compared]  # fmt: skip
    loads = [r["load_before"][0] for r in results.values()] + [
        r["load_after"][0] for r in results.values()]  # fmt: skip
    dates = sorted({r["date"] for r in results.values()})
    machines = sorted({r["machine"] for r in results.values()})
    if results:
        lines += ["", f"Measured {', '.join(dates)} with `python benchmarks/tutorials.py` on "
                  f"{'; '.join(machines)}, shared with other jobs: the 1-minute load average "
                  f"ranged {min(loads):.1f} to {max(loads):.1f} over the runs, so the seconds "
                  "are those of a busy machine (each figure is one run, seed 0 unless said; the "
                  "whole `kiln train` process, data reading included; each tutorial recipe and "
                  "Kiln's beside it were run back to back). Test figures: the best checkpoint on "
                  "the test split; with no validation split (the tutorials' own split), the last "
                  "epoch."]  # fmt: skip
    return "\n".join(lines)


def write_table() -> None:
    text = README.read_text()
    start, end = "<!-- tutorials:start -->", "<!-- tutorials:end -->"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    README.write_text(f"{head}{start}\n{table()}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=[p.name for p in PAIRS], default=[])
    parser.add_argument("--side", choices=["tutorial", "kiln", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0, help="train.seed (0: the table's figure)")
    parser.add_argument("--compare", action="store_true", help="the regularization comparisons")
    parser.add_argument("--table", action="store_true", help="only render the table")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--write", action="store_true", help="rewrite recipes/tutorials/README.md")
    parser.add_argument("--data-root", type=Path, help="default: shared/datasets by the checkout")
    parser.add_argument("--runs", type=Path, help="keep the runs here (default: a temporary dir)")
    parser.add_argument("overrides", nargs="*", help="key=value for every run")
    args = parser.parse_args()
    if args.list:
        for pair in PAIRS:
            print(f"{pair.name}: {pair.tutorial} | {pair.kiln}")
        return
    datasets = args.data_root or shared_datasets()
    runs = args.runs or Path(tempfile.mkdtemp(prefix="kiln-tutorials-"))
    try:
        for pair in (p for p in PAIRS if p.name in args.only):
            for side in ("tutorial", "kiln") if args.side == "both" else (args.side,):
                measure(pair, side, datasets, runs, args.overrides, args.seed)
        if args.compare:
            compare(datasets, runs, args.overrides)
    finally:
        if args.runs is None:
            shutil.rmtree(runs, ignore_errors=True)
    print("\n" + table())
    if args.write:
        write_table()


if __name__ == "__main__":
    main()
