"""`kiln data make NAME`: datasets built from others, for the tasks beyond classification.

mnist-rotation: MNIST digits each rotated by a known random angle, saved as PNG files with a CSV
(file, angle, digit, split), so `task=regress` learns to read the angle back (recipe:
recipes/mnist-rotation.yaml).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from kiln.errors import ConfigError

MAKERS: dict[str, Callable[..., Path]] = {}


def maker(name: str):
    def wrap(fn: Callable[..., Path]) -> Callable[..., Path]:
        MAKERS[name] = fn
        return fn

    return wrap


@maker("mnist-rotation")
def mnist_rotation(
    root: Path, out: Path, train: int = 12_000, test: int = 2_000, max_angle: float = 45.0,
    seed: int = 0,
) -> Path:  # fmt: skip
    """The first `train` training and `test` test digits, each rotated by an angle drawn
    uniformly from [-max_angle, max_angle] degrees (counter-clockwise positive)."""
    from kiln.data.builtin import load_mnist

    if not 0 < max_angle <= 180:
        raise ConfigError(f"--max-angle must be in (0, 180], got {max_angle}")
    raw = load_mnist(None, root)
    rng = np.random.default_rng(seed)
    rows = []
    for split, images, labels, n in (
        ("train", raw.train.images, raw.train.labels, train),
        ("test", raw.test.images, raw.test.labels, test),
    ):
        if not 0 < n <= len(images):
            raise ConfigError(f"--{split} must be between 1 and {len(images)}, got {n}")
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        angles = rng.uniform(-max_angle, max_angle, size=n)
        for i in range(n):
            image = Image.fromarray(images[i, 0].numpy())
            rotated = image.rotate(float(angles[i]), resample=Image.Resampling.BILINEAR)
            name = f"images/{split}/{i:05d}.png"
            rotated.save(out / name)
            rows.append((name, f"{angles[i]:.3f}", int(labels[i]), split))
    tmp = out / f".labels.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "angle", "digit", "split"])
        writer.writerows(rows)
    os.replace(tmp, out / "labels.csv")  # the CSV appears last: its presence means complete
    return out / "labels.csv"
