"""Training throughput, side by side on matched work: the tutorial loop, Lightning, the compute
bound and Kiln. Same data (FashionMNIST), model (MLP 784-512-512-10), optimizer (Adam 1e-3),
batch size (64), epochs and number of training samples for all four, run one after another in one
process. Prints medians over repeats and the ratios; --write-readme updates benchmarks/README.md.

    python benchmarks/run.py [--quick] [--repeats N] [--data-root DIR] [--write-readme]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "datasets"
BATCH, LR = 64, 1e-3


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


def data_root(arg: str | None) -> Path:
    """A writable root holding FashionMNIST/raw/*.gz; copied from ../shared/datasets if needed."""
    root = Path(arg or os.environ.get("KILN_DATA") or Path(tempfile.gettempdir()) / "kiln-bench")
    raw = root / "FashionMNIST" / "raw"
    if not any(raw.glob("*ubyte*")):
        source = SHARED / "FashionMNIST" / "raw"
        if not source.is_dir():
            sys.exit(f"FashionMNIST not in {raw} or {source}; pass --data-root")
        raw.mkdir(parents=True, exist_ok=True)
        for gz in source.glob("*.gz"):
            shutil.copy(gz, raw / gz.name)
    return root


def tutorial_dataset(root: Path, n: int):
    from torch.utils.data import Subset
    from torchvision.datasets import FashionMNIST
    from torchvision.transforms import ToTensor

    # download=True with the files present only unpacks them, as the tutorial's code does.
    dataset = FashionMNIST(str(root), train=True, transform=ToTensor(), download=True)
    return Subset(dataset, range(n))


def plain_loop(root: Path, n: int, epochs: int) -> float:
    """The PyTorch tutorial: DataLoader + ToTensor per sample, the usual five lines per step."""
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    loader = DataLoader(tutorial_dataset(root, n), batch_size=BATCH, shuffle=True)
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
    from torch.utils.data import DataLoader

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
        seconds = 0.0

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
    loader = DataLoader(tutorial_dataset(root, n), batch_size=BATCH, shuffle=True)
    trainer.fit(Module(), loader)
    return n * epochs / timer.seconds


def compute_bound(root: Path, n: int, epochs: int) -> float:
    """The same model stepping over a normalized float tensor already in memory: no loading."""
    from torchvision.datasets import FashionMNIST

    data = FashionMNIST(str(root), train=True, download=True)  # files present: unpacks only
    x = (data.data[:n].float().div(255).sub(0.286).div(0.353)).unsqueeze(1)
    y = data.targets[:n]
    torch.manual_seed(0)
    model, loss_fn = make_model(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n)
        for begin in range(0, n, BATCH):
            idx = order[begin : begin + BATCH]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return n * epochs / (time.perf_counter() - start)


def kiln_train(root: Path, n: int, epochs: int) -> float:
    """Kiln with the matched settings; its progress output is captured, as on a pipe."""
    import kiln

    config = {
        "data": {"name": "fashion-mnist", "root": str(root), "batch_size": BATCH, "subset": n},
        "model": {"name": "mlp", "hidden": [512, 512]},
        "optim": {"name": "adam", "lr": LR},
        "sched": {"name": "none"},
        "train": {"epochs": epochs, "label_smoothing": 0.0, "device": "cpu"},
        "run": {"dir": tempfile.mkdtemp(prefix="kiln-bench-runs-")},
    }
    with contextlib.redirect_stdout(io.StringIO()):
        run = kiln.train(config)
    shutil.rmtree(config["run"]["dir"], ignore_errors=True)
    seconds = sum(n / row["samples_per_s"] for row in run.history)  # training time, no validation
    return n * epochs / seconds


METHODS = {
    "plain loop": plain_loop,
    "lightning": lightning_loop,
    "compute bound": compute_bound,
    "kiln": kiln_train,
}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def table(rates: dict[str, float]) -> str:
    plain, bound = rates["plain loop"], rates["compute bound"]
    lines = [
        "| method | samples/s | vs plain loop | time vs compute bound |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, rate in rates.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / plain:.2f}x | {bound / rate:.2f}x |")
    kiln = rates["kiln"]
    lines += [
        "",
        f"Kiln / plain loop: **{kiln / plain:.2f}x**; Kiln / Lightning: "
        f"**{kiln / rates['lightning']:.2f}x**; Kiln's time / compute bound's: "
        f"**{bound / kiln:.2f}x**.",
    ]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = HERE / "README.md"
    content = readme.read_text()
    start, end = "<!-- throughput:start -->", "<!-- throughput:end -->"
    before, rest = content.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{text}\n{end}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on 10,000 images")
    parser.add_argument("--repeats", type=int, default=None, help="runs per method (median)")
    parser.add_argument("--data-root", default=None, help="folder holding FashionMNIST/raw")
    parser.add_argument("--write-readme", action="store_true", help="update benchmarks/README.md")
    parser.add_argument("--only", nargs="*", choices=list(METHODS), help="run only these")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    n, epochs = (10_000, 1) if args.quick else (54_000, 5)  # Kiln trains on 90% of 60,000
    repeats = args.repeats or (1 if args.quick else 3)
    root = data_root(args.data_root)
    print(f"FashionMNIST, MLP 784-512-512-10, Adam {LR}, batch {BATCH}, {epochs} epochs x {n:,}")
    print(f"machine: {machine()}")
    rates: dict[str, list[float]] = {name: [] for name in args.only or METHODS}
    for repeat in range(repeats):
        for name in rates:
            rate = METHODS[name](root, n, epochs)
            rates[name].append(rate)
            print(f"  [{repeat + 1}/{repeats}] {name:<14} {rate:>10,.0f} samples/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    if set(medians) != set(METHODS):
        return
    text = table(medians)
    print("\n" + text)
    if args.write_readme:
        command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
        command += f" --repeats {repeats}" if args.repeats else ""
        write_readme(
            f"Measured {date.today()} with `{command}` (median of {repeats}) on: {machine()}.\n"
            f"{epochs} epochs x {n:,} FashionMNIST images.\n\n{text}"
        )


if __name__ == "__main__":
    main()
