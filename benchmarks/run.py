"""Training throughput, side by side on matched work: the tutorial loop, Lightning, the compute
bound and Kiln. Same data (FashionMNIST), model (MLP 784-512-512-10), optimizer (Adam 1e-3),
batch size (64), epochs and number of training samples for all of them, each run in a fresh
Python process of its own, one after another. Prints medians over repeats and the ratios;
--write-readme updates benchmarks/README.md.

    python benchmarks/run.py [--quick] [--repeats N] [--data-root DIR] [--write-readme]

Data is never downloaded: the official FashionMNIST .gz files are copied from a shared folder into
a writable root (--data-root, else $KILN_DATA, else a temp folder) and unpacked there.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import torch
from readme_block import write_block
from torch import nn

HERE = Path(__file__).resolve().parent
# Where the read-only official files may live: a shared/ folder next to or above the checkout.
SHARED = [
    p / "shared" / "datasets" / "FashionMNIST" / "raw" for p in (HERE.parent, HERE.parents[1])
]
FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]

BATCH, LR = 64, 1e-3
VAL_FRACTION = 0.1  # Kiln holds out 10% of the 60,000 for validation: 54,000 remain
FULL = (54_000, 5)  # (training samples per epoch, epochs)
QUICK = (10_000, 1)


def make_model() -> nn.Module:
    """The tutorial's MLP, shared by the three baselines (Kiln builds the same from its config)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


# Data ------------------------------------------------------------------------------------------
def data_root(arg: str | None) -> Path:
    """A writable root holding FashionMNIST/raw with the official files, unpacked."""
    root = Path(arg or os.environ.get("KILN_DATA") or Path(tempfile.gettempdir()) / "kiln-bench")
    raw = root / "FashionMNIST" / "raw"
    for name in FILES:
        if (raw / name).exists():
            continue
        gz = raw / f"{name}.gz"
        if not gz.exists():
            source = next((s / gz.name for s in SHARED if (s / gz.name).exists()), None)
            if source is None:
                sys.exit(f"{gz.name} is neither in {raw} nor in {SHARED[-1]}; pass --data-root")
            raw.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, gz)
        with gzip.open(gz, "rb") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def fashion_mnist(root: Path, transform=None):
    from torchvision.datasets import FashionMNIST

    return FashionMNIST(str(root), train=True, transform=transform, download=False)


def tutorial_loader(root: Path, n: int):
    """The tutorial's input pipeline: ToTensor() per sample, DataLoader(batch 64, shuffle)."""
    from torch.utils.data import DataLoader, Subset
    from torchvision.transforms import ToTensor

    dataset = Subset(fashion_mnist(root, ToTensor()), range(n))
    return DataLoader(dataset, batch_size=BATCH, shuffle=True)


# The methods: each returns training samples per second over all epochs ------------------
def plain_loop(root: Path, n: int, epochs: int) -> float:
    """The PyTorch tutorial: DataLoader + ToTensor per sample, the usual five lines per step."""
    torch.manual_seed(0)
    loader = tutorial_loader(root, n)
    model, loss_fn = make_model(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return n * epochs / (time.perf_counter() - start)


def lightning_loop(root: Path, n: int, epochs: int) -> float:
    """The same model and DataLoader under Lightning's Trainer; only training epochs are timed."""
    import lightning as L

    for name in ("lightning.pytorch", "lightning.fabric"):  # set on import: quiet them after
        logging.getLogger(name).setLevel(logging.ERROR)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.loss_fn = make_model(), nn.CrossEntropyLoss()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.loss_fn(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

    class EpochTimer(L.Callback):
        def __init__(self):
            self.seconds = 0.0

        def on_train_epoch_start(self, trainer, module):
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds += time.perf_counter() - self.started

    torch.manual_seed(0)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(Module(), tutorial_loader(root, n))
    return n * epochs / timer.seconds


def compute_bound(root: Path, n: int, epochs: int, fused: bool = False,
                  flush_denormal: bool = False) -> float:  # fmt: skip
    """The same model stepping over a normalized float tensor already in memory: no loading."""
    torch.set_flush_denormal(flush_denormal)  # first: torch's threads keep the mode they start in
    data = fashion_mnist(root)
    x = data.data[:n].unsqueeze(1).float().div_(255)
    x = x.sub_(x.mean()).div_(x.std())  # normalized with these images' statistics, as Kiln does
    y = data.targets[:n]
    torch.manual_seed(0)
    model, loss_fn = make_model(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=fused)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n)
        for begin in range(0, n, BATCH):
            idx = order[begin : begin + BATCH]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return n * epochs / (time.perf_counter() - start)


def compute_bound_fused(root: Path, n: int, epochs: int) -> float:
    """The compute bound with the optimizer Kiln builds: Adam(fused=True), one kernel per step."""
    return compute_bound(root, n, epochs, fused=True)


def compute_bound_flushed(root: Path, n: int, epochs: int) -> float:
    """The fused-Adam compute bound with denormals computed as zero, as Kiln trains on the CPU
    (train.flush_denormal): what is left of Kiln's lead once the bound does the same."""
    return compute_bound(root, n, epochs, fused=True, flush_denormal=True)


def kiln_train(root: Path, n: int, epochs: int) -> float:
    """`kiln train` with the matched settings, as a person runs it (its own process, so
    train.flush_denormal=auto is on); its per-epoch samples/s in metrics.csv excludes
    validation."""
    runs = Path(tempfile.mkdtemp(prefix="kiln-bench-runs-"))
    try:
        cmd = [
            sys.executable, "-m", "kiln", "train", "data.name=fashion-mnist", f"data.root={root}",
            f"data.batch_size={BATCH}", f"data.val_fraction={VAL_FRACTION}", f"data.subset={n}",
            "model.name=mlp", "model.hidden=[512,512]", "optim.name=adam", f"optim.lr={LR}",
            "sched.name=none", f"train.epochs={epochs}", "train.label_smoothing=0",
            "train.device=cpu", "run.report=false", f"run.dir={runs}", "name=bench", "-q",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        trained = json.loads((runs / "bench" / "info.json").read_text())["samples"]["train"]
        with open(runs / "bench" / "metrics.csv", newline="") as f:
            rates = [float(row["samples_per_s"]) for row in csv.DictReader(f)]
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    if trained != n:
        sys.exit(f"Kiln trained on {trained:,} samples per epoch, the others on {n:,}")
    seconds = sum(n / rate for rate in rates)  # training epochs only
    return n * epochs / seconds


METHODS = {
    "plain loop": plain_loop,
    "lightning": lightning_loop,
    "compute bound": compute_bound,
    "compute bound, fused Adam": compute_bound_fused,
    "compute bound, fused Adam, denormals flushed": compute_bound_flushed,
    "kiln": kiln_train,
}


# Reporting ---------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"torch.get_num_threads() = {torch.get_num_threads()}, Python {platform.python_version()}"
    )


def kiln_source() -> str:
    """Which Kiln was measured: its git commit (and whether src/ had local changes), or its path."""
    import subprocess

    import kiln

    src = Path(kiln.__file__).resolve().parent
    git = ["git", "-C", str(src)]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=True
        ).stdout.strip()
        return f"kiln at commit {commit}" + (
            " with uncommitted changes in src/kiln" if dirty else ""
        )
    return f"kiln from {src}"


def load_average() -> str:
    with contextlib.suppress(OSError, AttributeError):
        return "load average %.2f %.2f %.2f" % os.getloadavg()  # noqa: UP031
    return "load average unknown"


def table(rates: dict[str, float], n: int) -> str:
    plain, bound = rates["plain loop"], rates["compute bound"]
    lines = [
        "| method | samples/s | s/epoch | vs plain loop | time vs compute bound |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, rate in rates.items():
        lines.append(
            f"| {name} | {rate:,.0f} | {n / rate:.2f} | {rate / plain:.2f}x | {bound / rate:.2f}x |"
        )
    kiln, fused = rates["kiln"], rates["compute bound, fused Adam"]
    lines += [
        "",
        f"Kiln / plain loop: **{kiln / plain:.2f}x**; Kiln / Lightning: "
        f"**{kiln / rates['lightning']:.2f}x**; Kiln's time / compute bound's time: "
        f"**{bound / kiln:.2f}x** (/ the fused-Adam compute bound's: **{fused / kiln:.2f}x**; "
        f"/ that bound's with denormals flushed as Kiln does: "
        f"**{rates['compute bound, fused Adam, denormals flushed'] / kiln:.2f}x**).",
    ]
    return "\n".join(lines)


def time_to_accuracy(quick: bool, repeats: int, readme: bool) -> None:
    """The time-to-accuracy table: each fast recipe end to end in its own process."""
    runs = [(["mnist-fast", "fashion-mnist-fast"], repeats)]
    if not quick:
        runs.append((["cifar10-fast"], 1))  # 15 minutes a run
    for recipes, n in runs:
        cmd = [sys.executable, str(Path(__file__).with_name("recipes.py")), "--repeats", str(n)]
        cmd += ["--only", *recipes] + (["--write-readme"] if readme else [])
        subprocess.run(cmd, check=True)


def in_own_process(name: str, root: Path, quick: bool) -> float:
    """One method's samples/s, measured in a fresh Python process, as a person runs one
    training: nothing the methods before it left in this process (torch's worker threads, their
    floating-point mode, the allocator's caches) carries over to it."""
    cmd = [sys.executable, __file__, "--one", name, "--data-root", str(root)]
    done = subprocess.run(cmd + (["--quick"] if quick else []), check=True, capture_output=True,
                          text=True)  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on 10,000 images")
    parser.add_argument("--repeats", type=int, default=None, help="runs per method (median)")
    parser.add_argument("--data-root", default=None, help="folder holding FashionMNIST/raw")
    parser.add_argument("--write-readme", action="store_true", help="update benchmarks/README.md")
    parser.add_argument("--only", nargs="+", choices=list(METHODS), help="run only these")
    parser.add_argument(
        "--recipes",
        action="store_true",
        help="then time Kiln's fast recipes to accuracy (benchmarks/recipes.py)",
    )
    parser.add_argument("--one", choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Lightning's advice on DataLoader workers, mostly
    os.environ["KILN_OFFLINE"] = "1"  # Kiln must find the files, never fetch them
    n, epochs = QUICK if args.quick else FULL
    if args.one:  # one method in this fresh process: print its rate for the parent
        print(json.dumps(METHODS[args.one](data_root(args.data_root), n, epochs)))
        return

    repeats = args.repeats or (1 if args.quick else 3)
    root = data_root(args.data_root)
    load_before = load_average()
    print(f"FashionMNIST, MLP 784-512-512-10, Adam {LR}, batch {BATCH}, {epochs} epochs x {n:,}")
    print(f"machine: {machine()}; {load_before}", flush=True)
    print(f"measuring {kiln_source()}", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in args.only or METHODS}
    for repeat in range(repeats):
        for name, values in rates.items():
            values.append(in_own_process(name, root, args.quick))
            print(
                f"  [{repeat + 1}/{repeats}] {name:<26} {values[-1]:>9,.0f} samples/s", flush=True
            )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    if args.recipes:
        time_to_accuracy(args.quick, repeats, args.write_readme)
    if set(medians) != set(METHODS):
        return
    text = table(medians, n)
    print("\n" + text)
    if args.write_readme:
        command = shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]])
        write_block(
            "throughput",
            f"Measured {date.today()} with `{command}` (median of {repeats} run"
            f"{'s' if repeats > 1 else ''} per method), {epochs} epoch{'s' if epochs > 1 else ''}"
            f" x {n:,} FashionMNIST training images, {kiln_source()}, on: {machine()}.\n"
            f"Machine load at the start: {load_before}; at the end: {load_average()}.\n\n{text}",
        )


if __name__ == "__main__":
    main()
