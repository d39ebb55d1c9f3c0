"""Which of the CIFAR-10 speed runs' techniques pay on this machine: recipes/cifar10-fast.yaml with
one option changed at a time (a whitened first layer, lookahead weight averaging, translated test
time views, label smoothing, batch size, epochs), test accuracy and training time for each.

Full CIFAR-10 runs take a quarter of an hour each on 2 cores, so the ablation trains on a subset
(`--subset`, default 20,000 images) for fewer epochs (`--epochs`, default 5) unless told
otherwise: it ranks the options, the final figures come from benchmarks/recipes.py. The PNG folder
is decoded once into a cache of .npy files (`--cache`), and every variant then trains in this
process through `kiln.train` on a registered dataset that reads them.

    python benchmarks/cifar_ablation.py [--subset 20000] [--epochs 5] [--seeds 0 1]
        [--only recipe whiten ...] [--data-root DIR] [--write-readme]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from readme_block import cpu_name, write_block

import kiln
from kiln.data.builtin import CIFAR10_CLASSES, load_cifar10
from kiln.data.registry import RawDataset, Split, register_dataset
from kiln.models.tta import infer
from kiln.rundir import RunDir, load_model

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "cifar10-fast.yaml"
# name: (overrides on the recipe, what it changes). Test-time views need no training of their
# own: every trained variant is also evaluated with model.tta none, flip and flip_translate.
VARIANTS = {
    "recipe": ({}, "recipes/cifar10-fast.yaml as it is"),
    "whiten": ({"model.whiten": True}, "patch-whitened frozen first layer"),
    "lookahead": ({"train.lookahead": True}, "lookahead weight averaging"),
    "whiten + lookahead": ({"model.whiten": True, "train.lookahead": True}, "both"),
    "no label smoothing": ({"train.label_smoothing": 0.0}, "label smoothing 0 (recipe: 0.2)"),
    "batch 512": (
        {"data.batch_size": 512, "optim.lr": 0.3},
        "batch 512, lr 0.3 (recipe: 256, 0.2)",
    ),
    "batch 128": ({"data.batch_size": 128, "optim.lr": 0.1}, "batch 128, lr 0.1"),
}
TTA = ("none", "flip", "flip_translate")


def shared_datasets() -> Path:
    for base in (HERE.parent, *HERE.parent.parents):
        if (base / "shared" / "datasets").is_dir():
            return base / "shared" / "datasets"
    raise SystemExit("no shared/datasets folder next to or above the checkout; pass --data-root")


def decoded(data_root: Path, cache: Path) -> RawDataset:
    """CIFAR-10 as uint8 tensors, decoded from the PNG folder on the first call only."""
    files = {s: cache / f"cifar10-{s}-{k}.npy" for s in ("train", "test") for k in ("x", "y")}
    if not all(f.is_file() for f in files.values()):
        cache.mkdir(parents=True, exist_ok=True)
        raw = load_cifar10(None, data_root)
        for split in ("train", "test"):
            part = getattr(raw, split)
            np.save(cache / f"cifar10-{split}-x.npy", part.images.numpy())
            np.save(cache / f"cifar10-{split}-y.npy", part.labels.numpy())

    def split(name: str) -> Split:
        x = torch.from_numpy(np.load(cache / f"cifar10-{name}-x.npy"))
        return Split(x, torch.from_numpy(np.load(cache / f"cifar10-{name}-y.npy")))

    # The folder's files are in class order: shuffled once, so that data.subset takes all classes.
    train = split("train")
    train = train.take(torch.randperm(len(train), generator=torch.Generator().manual_seed(0)))
    return RawDataset(train, split("test"), list(CIFAR10_CLASSES))


def run_variant(overrides: dict, subset: int, epochs: int, seed: int, test: Split) -> dict:
    """Test accuracy with each of TTA's test-time views, and the seconds of training and
    validation, of one run."""
    with tempfile.TemporaryDirectory() as runs:
        options = {
            "data.name": "cifar10-decoded", "data.subset": subset, "train.epochs": epochs,
            "train.seed": seed, "run.dir": runs, "run.report": False, **overrides,
        }  # fmt: skip
        run = kiln.train(
            str(RECIPE), progress=False, **{k.replace(".", "__"): v for k, v in options.items()}
        )
        model, _ = load_model(RunDir(run.path), "best")
        info = RunDir(run.path).data_info()
        result = {tta: test_accuracy(model, test, info, tta) for tta in TTA}
        result["seconds"] = sum(row["seconds"] for row in run.history)
        return result


@torch.inference_mode()
def test_accuracy(model: torch.nn.Module, test: Split, info, tta: str) -> float:
    model = model.eval().to(memory_format=torch.channels_last)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    right = 0
    for start in range(0, len(test), 1000):
        x = (test.images[start : start + 1000].float() / 255 - mean) / std
        logits = infer(model, x.contiguous(memory_format=torch.channels_last), tta)
        right += int((logits.argmax(1) == test.labels[start : start + 1000]).sum())
    return right / len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--data-root", type=Path, help="default: shared/datasets/cifar10")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kiln-bench")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    data = decoded(args.data_root or shared_datasets() / "cifar10", args.cache)
    register_dataset("cifar10-decoded", "CIFAR-10 decoded once (benchmarks)")(
        lambda cfg, root: data
    )
    load = [f"{x:.2f}" for x in os.getloadavg()]
    rows, base = [], None
    for name in args.only:
        overrides, what = VARIANTS[name]
        runs = []
        for seed in args.seeds:
            runs.append(run_variant(overrides, args.subset, args.epochs, seed, data.test))
            shown = ", ".join(f"tta {t} {runs[-1][t]:.2%}" for t in TTA)
            print(f"{name} seed {seed}: {shown}; {runs[-1]['seconds']:.0f} s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)  # fmt: skip
        median = {key: statistics.median(r[key] for r in runs) for key in (*TTA, "seconds")}
        base = median if name == "recipe" else base
        cells = []
        for tta in TTA:
            delta = "" if base is None else f" ({(median[tta] - base['flip']) * 100:+.2f})"
            cells.append(f"{median[tta]:.2%}{delta}")
        each = ", ".join(f"{r['flip']:.2%}" for r in runs)
        rows.append(f"| {name} | {what} | {' | '.join(cells)} | {median['seconds']:.0f} | {each} |")
    seeds = " ".join(map(str, args.seeds))
    text = "\n".join([
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/cifar_ablation.py "
        f"--subset {args.subset} --epochs {args.epochs} --seeds {seeds}` on {cpu_name()}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}; load average "
        f"{' '.join(load)} at the start, {os.getloadavg()[0]:.2f} at the end. Test accuracy on "
        "the 10,000 test images (median over the seeds) with each model.tta, in brackets the "
        "points gained over the recipe as it is (tta flip); seconds: training and validation.",
        "",
        "| variant | what changes | tta none | tta flip | tta flip_translate | seconds | "
        "each seed (flip) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        *rows,
    ])  # fmt: skip
    print("\n" + text)
    if args.write_readme:
        write_block("cifar-ablation", text)


if __name__ == "__main__":
    main()
