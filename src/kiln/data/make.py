"""`kiln data make NAME`: datasets built from others, for the tasks beyond classification.

mnist-rotation: MNIST digits each rotated by a known random angle, saved as PNG files with a CSV
(file, angle, digit, split), so `task=regress` learns to read the angle back (recipe:
recipes/mnist-rotation.yaml).

mnist-pairs: two MNIST digits side by side (28x56), labelled with the set of digits shown, e.g.
`3;7` (a CSV: file, labels, left, right, split), so `task=multilabel` learns several labels per
image (recipe: recipes/mnist-pairs.yaml).

mnist-seg and shapes3d: segmentation sets in the seg-folder layout (images and masks), 2-D
canvases of MNIST digits and 3-D volumes of spheres and cubes (recipes/mnist-seg.yaml,
recipes/shapes3d.yaml).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from kiln.errors import ConfigError
from kiln.io import write_text_atomic

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
    table = io.StringIO()
    csv.writer(table).writerows([["file", "angle", "digit", "split"], *rows])
    write_text_atomic(out / "labels.csv", table.getvalue())  # last: its presence means complete
    return out / "labels.csv"


@maker("mnist-pairs")
def mnist_pairs(
    root: Path, out: Path, train: int = 12_000, test: int = 2_000, seed: int = 0
) -> Path:
    """`train` and `test` images of two MNIST digits side by side (28 x 56 pixels), drawn at
    random from MNIST's training and test digits; the labels are the set of digits shown (one
    label when both are the same digit, about one image in ten)."""
    from kiln.data.builtin import load_mnist

    raw = load_mnist(None, root)
    rng = np.random.default_rng(seed)
    rows = []
    for split, source, n in (("train", raw.train, train), ("test", raw.test, test)):
        if not 0 < n <= 1_000_000:
            raise ConfigError(f"--{split} must be between 1 and 1,000,000, got {n}")
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        digits, labels = source.images[:, 0].numpy(), source.labels.numpy()
        for i in range(n):
            left, right = rng.integers(len(digits), size=2)
            name = f"images/{split}/{i:05d}.png"
            Image.fromarray(np.hstack([digits[left], digits[right]])).save(out / name)
            shown = sorted({int(labels[left]), int(labels[right])})
            rows.append((name, ";".join(map(str, shown)), labels[left], labels[right], split))
    table = io.StringIO()
    csv.writer(table).writerows([["file", "labels", "left", "right", "split"], *rows])
    write_text_atomic(out / "labels.csv", table.getvalue())  # last: its presence means complete
    return out / "labels.csv"


ON = 128  # an MNIST pixel at least this bright is part of its digit in the mask


@maker("mnist-seg")
def mnist_seg(
    root: Path, out: Path, train: int = 10_000, test: int = 1_000, size: int = 64, seed: int = 0
) -> Path:
    """Canvases of size x size pixels with 2 to 4 MNIST digits pasted where they do not overlap;
    the mask is the digit's class + 1 where its pixel is on (>= 128), 0 (background) elsewhere:
    11 classes. Training canvases use MNIST training digits, test canvases its test digits.
    Layout: OUT/{train,test}/{images,masks}/NNNNN.png and OUT/classes.txt (data.name=seg-folder)."""
    from kiln.data.builtin import load_mnist

    if size < 28:
        raise ConfigError(f"--size must be at least 28 (one MNIST digit), got {size}")
    raw = load_mnist(None, root)
    rng = np.random.default_rng(seed)
    for split, source, n in (("train", raw.train, train), ("test", raw.test, test)):
        if not 0 < n <= 1_000_000:
            raise ConfigError(f"--{split} must be between 1 and 1,000,000, got {n}")
        digits, labels = source.images[:, 0].numpy(), source.labels.numpy()
        folders = [out / split / sub for sub in ("images", "masks")]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            canvas, mask = paste_digits(digits, labels, size, rng)
            Image.fromarray(canvas).save(folders[0] / f"{i:05d}.png")
            Image.fromarray(mask).save(folders[1] / f"{i:05d}.png")
    names = ["background", *(str(d) for d in range(10))]
    return write_classes(out, names)  # written last: its presence means complete


def paste_digits(digits: np.ndarray, labels: np.ndarray, size: int, rng) -> tuple:
    """One canvas (uint8 image, uint8 mask) with 2 to 4 digits whose boxes do not overlap."""
    canvas = np.zeros((size, size), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    taken = np.zeros((size, size), bool)
    for _ in range(rng.integers(2, 5)):
        index = rng.integers(len(digits))
        digit = digits[index]
        rows, cols = np.nonzero(digit)
        digit = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]  # its tight box
        h, w = digit.shape
        for _attempt in range(20):
            y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            if not taken[y : y + h, x : x + w].any():
                break
        else:
            continue  # no free place for this one
        taken[max(0, y - 1) : y + h + 1, max(0, x - 1) : x + w + 1] = True  # a pixel apart
        canvas[y : y + h, x : x + w] = digit
        mask[y : y + h, x : x + w][digit >= ON] = labels[index] + 1
    return canvas, mask


@maker("shapes3d")
def shapes3d(
    root: Path, out: Path, train: int = 400, test: int = 100, size: int = 32, seed: int = 0
) -> Path:
    """Volumes of size^3 voxels (float32, one channel) holding 2 to 4 spheres (class 1) and
    axis-aligned cubes (class 2) of random size and brightness, apart from each other, with
    Gaussian noise: only the shape tells the classes apart. Layout:
    OUT/{train,test}/{images,masks}/NNNNN.npy and OUT/classes.txt (data.name=seg-folder)."""
    if size < 12:
        raise ConfigError(f"--size must be at least 12 voxels, got {size}")
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        if not 0 < n <= 100_000:
            raise ConfigError(f"--{split} must be between 1 and 100,000, got {n}")
        folders = [out / split / sub for sub in ("images", "masks")]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            volume, mask = random_shapes(size, rng)
            np.save(folders[0] / f"{i:05d}.npy", volume)
            np.save(folders[1] / f"{i:05d}.npy", mask)
    return write_classes(out, ["background", "sphere", "cube"])


def random_shapes(size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """One (1, D, H, W) float32 volume and its (D, H, W) uint8 mask."""
    volume = np.zeros((size, size, size), np.float32)
    mask = np.zeros((size, size, size), np.uint8)
    taken = np.zeros((size, size, size), bool)
    z, y, x = np.ogrid[:size, :size, :size]
    for _ in range(rng.integers(2, 5)):
        shape = int(rng.integers(1, 3))  # 1: sphere, 2: cube
        radius = rng.uniform(3.0, size / 5)  # a cube's half side, a sphere's radius
        centre = rng.uniform(radius + 1, size - radius - 1, size=3)
        cz, cy, cx = centre
        if shape == 1:
            inside = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
        else:
            inside = (abs(z - cz) <= radius) & (abs(y - cy) <= radius) & (abs(x - cx) <= radius)
        lo = np.floor(centre - radius - 1).astype(int).clip(0)
        hi = np.ceil(centre + radius + 2).astype(int)
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        if taken[box].any():
            continue  # it would touch another shape: leave it out
        taken[box] = True
        volume[inside] = rng.uniform(0.5, 1.0)
        mask[inside] = shape
    volume += rng.normal(0.0, 0.15, volume.shape).astype(np.float32)
    return volume[None], mask


def write_classes(out: Path, names: list[str]) -> Path:
    write_text_atomic(out / "classes.txt", "\n".join(names) + "\n")
    return out
