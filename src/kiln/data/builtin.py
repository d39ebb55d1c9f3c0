"""The built-in datasets: digits (bundled with scikit-learn), MNIST, FashionMNIST and CIFAR-10.

MNIST-style sets come through torchvision's classes. Official files already on disk are checked
against torchvision's MD5s and used offline; missing ones are downloaded when the network allows,
and otherwise the error lists each missing file and the folder it belongs in.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kiln.data.registry import RawDataset, Split, register_dataset
from kiln.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@register_dataset(
    "digits", "scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)"
)
def load_digits(cfg, root: Path) -> RawDataset:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    # Pixel values are 0..16; scale to the 0..255 range every other image uses.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    # digits has no official test split: hold out a fixed, stratified 20%.
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0
    )
    return RawDataset(
        train=Split(torch.from_numpy(tr_x), torch.from_numpy(tr_y)),
        test=Split(torch.from_numpy(te_x), torch.from_numpy(te_y)),
        classes=[str(c) for c in bunch.target_names],
    )


def _try_download(dataset_cls, folder: Path, missing: list[str]) -> None:
    """Download with torchvision when the network allows it; otherwise say exactly what to fetch."""
    listing = "\n".join(f"  - {name}" for name in missing)
    hint = (
        f"{dataset_cls.__name__} files are missing from {folder}:\n{listing}\n"
        f"Copy the official files into {folder} (or point data.root / $KILN_DATA at a folder "
        f"holding {folder.parent.name}/{folder.name}/), or connect to the network to download them."
    )
    if os.environ.get("KILN_OFFLINE"):
        raise DataError(hint + " (KILN_OFFLINE is set: no download attempted)")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        dataset_cls(str(folder.parent.parent), train=True, download=True)
    except Exception as exc:  # any network failure means: tell the user what to fetch
        raise DataError(f"{hint}\nDownload failed: {exc}") from None
    finally:
        socket.setdefaulttimeout(previous)


def _load_mnist_like(dataset_cls, root: Path) -> RawDataset:
    from torchvision.datasets.utils import check_integrity

    folder = root / dataset_cls.__name__ / "raw"
    missing, unpacked = [], True
    for gz_name, md5 in dataset_cls.resources:
        gz = folder / gz_name
        raw = folder / gz_name.removesuffix(".gz")
        if gz.exists() and not check_integrity(str(gz), md5):
            raise DataError(
                f"{gz} is corrupt (MD5 differs from the official {md5}); "
                "delete it and fetch it again"
            )
        if not raw.exists():
            unpacked = False
            if not gz.exists():
                missing.append(gz_name)
    if missing:
        _try_download(dataset_cls, folder, missing)
    elif not unpacked:
        if not os.access(folder, os.W_OK):
            raise DataError(
                f"{folder} holds the .gz files but is read-only, so they cannot be unpacked; "
                f"copy the {dataset_cls.__name__}/ folder to a writable data.root"
            )
        # Files present and verified: torchvision only unpacks them, no network is used.
        dataset_cls(str(root), train=True, download=True)
    train = dataset_cls(str(root), train=True)
    test = dataset_cls(str(root), train=False)
    return RawDataset(
        train=Split(train.data[:, None].contiguous(), train.targets.long()),
        test=Split(test.data[:, None].contiguous(), test.targets.long()),
        classes=list(train.classes),
    )


@register_dataset("mnist", "MNIST handwritten digits, 28x28 grayscale, 60k train / 10k test")
def load_mnist(cfg, root: Path) -> RawDataset:
    from torchvision.datasets import MNIST

    return _load_mnist_like(MNIST, root)


@register_dataset("fashion-mnist", "Fashion-MNIST clothing, 28x28 grayscale, 60k train / 10k test")
def load_fashion_mnist(cfg, root: Path) -> RawDataset:
    from torchvision.datasets import FashionMNIST

    return _load_mnist_like(FashionMNIST, root)


CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _decode_folder(folder: Path, classes: list[str]) -> Split:
    files: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise DataError(f"CIFAR-10 folder {folder} has no class folder '{name}'")
        files += [
            (p, index) for p in sorted(class_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
        ]

    def decode(item: tuple[Path, int]) -> np.ndarray:
        try:
            with Image.open(item[0]) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise DataError(f"cannot read image {item[0]}: {exc}") from None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(pool.map(decode, files, chunksize=256))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return Split(images, labels)


@register_dataset(
    "cifar10", "CIFAR-10, 32x32 RGB, 50k train / 10k test (torchvision or PNG folders)"
)
def load_cifar10(cfg, root: Path) -> RawDataset:
    from torchvision.datasets import CIFAR10

    if (root / CIFAR10.base_folder).is_dir() or (root / CIFAR10.filename).exists():
        train, test = CIFAR10(str(root), train=True, download=True), CIFAR10(str(root), train=False)

        def to_split(ds) -> Split:
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            return Split(images, torch.tensor(ds.targets, dtype=torch.long))

        return RawDataset(to_split(train), to_split(test), list(train.classes))
    # The same images as PNG folders: <root>/cifar10/{train,test}/<class>/*.png,
    # or <root>/{train,test}/<class>/*.png.
    for base in (root / "cifar10", root):
        if (base / "train").is_dir() and (base / "test").is_dir():
            return RawDataset(
                _decode_folder(base / "train", CIFAR10_CLASSES),
                _decode_folder(base / "test", CIFAR10_CLASSES),
                list(CIFAR10_CLASSES),
            )
    _try_download(CIFAR10, root / "cifar10" / "x", [CIFAR10.filename])  # pragma: no cover
    return load_cifar10(cfg, root)  # pragma: no cover
