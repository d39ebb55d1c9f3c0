"""Kiln's streaming image pipeline on the CIFAR-10 PNG folder: decode throughput and memory.

1. images/s of one pass over N training PNGs with 0, 1 and 2 DataLoader workers: Kiln's streaming
   loader (decode + uint8 collate in workers, normalize per batch) against torchvision's
   ImageFolder + ToTensor, the tutorial's way, with the same workers and batch size.
2. Peak RSS (the process and its workers) of one streaming pass over 5,000 and over 50,000 images,
   each in a fresh process: memory must not grow with the number of images.

    python benchmarks/pipeline.py [--images 10000] [--cifar DIR] [--write-readme]

Reads ../shared/datasets/cifar10 (or --cifar) in place: nothing is written there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from readme_block import write_block

HERE = Path(__file__).resolve().parent
BATCH = 256


def find_cifar(arg: str | None) -> Path:
    for candidate in [arg] if arg else [p / "shared/datasets/cifar10" for p in HERE.parents[:2]]:
        if candidate and (Path(candidate) / "train").is_dir():
            return Path(candidate)
    sys.exit("CIFAR-10 PNG folder not found; pass --cifar DIR (with train/<class>/*.png)")


def write_csv(cifar: Path, n: int, folder: Path) -> Path:
    """The first n training images, round-robin over the classes, as a Kiln CSV dataset."""
    classes = sorted(p.name for p in (cifar / "train").iterdir() if p.is_dir())
    files = {c: sorted((cifar / "train" / c).glob("*.png")) for c in classes}
    rows = [(f"train/{c}/{files[c][i].name}", c) for i in range(n // len(classes)) for c in classes]
    path = folder / f"cifar-{n}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return path


def kiln_loader(cifar: Path, csv_path: Path, workers: int):
    from kiln.config import DataConfig
    from kiln.data import build, make_loader
    from kiln.data.memory import Normalize

    cfg = DataConfig(
        name="csv",
        root=str(cifar),
        csv=str(csv_path),
        memory=False,
        cache="off",  # decode the PNGs every pass: what this measures (not the decoded cache)
        workers=workers,
        val_fraction=0.01,
        test_fraction=0.01,
        batch_size=BATCH,
    )
    bundle = build(cfg)
    normalize = Normalize(bundle.info.mean, bundle.info.std, "cpu")
    return make_loader(bundle.train, BATCH, normalize, shuffle=True, workers=workers), bundle


def kiln_pass(cifar: Path, csv_path: Path, workers: int) -> tuple[float, int]:
    import torch

    loader, _ = kiln_loader(cifar, csv_path, workers)
    next(iter(loader))  # workers started, as they are after the first epoch
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
    assert x.dtype == torch.float32
    return seen / (time.perf_counter() - start), seen


def torchvision_pass(cifar: Path, csv_path: Path, workers: int) -> tuple[float, int]:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})

    class Files(Dataset):  # ImageFolder's __getitem__, over the same files
        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.25] * 3)]
        )

        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            image = Image.open(cifar / rows[i]["file"]).convert("RGB")
            return self.transform(image), classes.index(rows[i]["label"])

    loader = DataLoader(
        Files(),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    next(iter(loader))
    start, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
    return seen / (time.perf_counter() - start), seen


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024  # kilobytes on Linux


def rss_child(cifar: Path, csv_path: Path) -> None:
    """Run in a fresh process: one streaming pass with 2 workers, then print the peak RSS."""
    loader, bundle = kiln_loader(cifar, csv_path, workers=2)
    seen = sum(len(x) for x, _ in loader)
    print(json.dumps({"images": seen, "train": len(bundle.train), "peak_rss_mb": peak_rss_mb()}))


def rss_of(cifar: Path, csv_path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(csv_path), "--cifar", str(cifar)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--cifar")
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cifar = find_cifar(args.cifar)
    if args.rss_child:
        rss_child(cifar, Path(args.rss_child))
        return
    os.environ.setdefault("KILN_CACHE", tempfile.mkdtemp(prefix="kiln-cache-"))
    tmp = Path(tempfile.mkdtemp(prefix="kiln-pipeline-"))
    csv_path = write_csv(cifar, args.images, tmp)
    lines = [
        f"CIFAR-10 PNGs, {args.images:,} training images, batch {BATCH}, one pass after warm-up; "
        f"{os.cpu_count()} cores",
        "",
        "| workers | Kiln streaming (images/s) | ImageFolder + ToTensor (images/s) | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for workers in (0, 1, 2):
        kiln, n = kiln_pass(cifar, csv_path, workers)
        tv, _ = torchvision_pass(cifar, csv_path, workers)
        print(f"workers={workers}: kiln {kiln:,.0f} images/s, torchvision {tv:,.0f} ({n:,} images)")
        lines.append(f"| {workers} | {kiln:,.0f} | {tv:,.0f} | {kiln / tv:.2f}x |")
    small, large = (rss_of(cifar, write_csv(cifar, n, tmp)) for n in (5_000, 50_000))
    growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
    print(f"peak RSS: {small} vs {large}: {growth:+.1%}")
    lines += [
        "",
        "Peak RSS of one streaming pass (`data.memory=false`, 2 workers, fresh process each): "
        f"{small['train']:,} images {small['peak_rss_mb']:,.0f} MB, {large['train']:,} images "
        f"{large['peak_rss_mb']:,.0f} MB (**{growth:+.1%}**).",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write_readme:
        write_block("pipeline", table)


if __name__ == "__main__":
    main()
