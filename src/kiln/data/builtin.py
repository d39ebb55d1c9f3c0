"""The built-in datasets: digits (bundled with scikit-learn), MNIST, FashionMNIST and CIFAR-10.

MNIST-style sets are read from the official files (IDX, gzipped or not), checked against the MD5s
torchvision lists, with no network and no unpacking (a read-only folder works); missing ones are
downloaded through torchvision when the network allows, and otherwise the error lists each missing
file and the folder it belongs in.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kiln.data.images import IMAGE_SUFFIXES
from kiln.data.registry import RawDataset, Split, register_dataset
from kiln.errors import DataError

DIGITS_SPLIT = Path(__file__).with_name("digits_split.npy")
DIGITS_TEST = 360  # 20% of 1,797, rounded up as scikit-learn does


@register_dataset(
    "digits", "scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)"
)
def load_digits(cfg, root: Path) -> RawDataset:
    """The 1,797 digits and the fixed, stratified 20% test split that scikit-learn's
    `train_test_split(test_size=0.2, stratify=labels, random_state=0)` draws, read without
    importing scikit-learn (over a second at every start, SciPy included): the images from the
    CSV file scikit-learn bundles, the split from digits_split.npy (the training indices in that
    function's order, then the test ones; tests/test_data.py checks they are still its)."""
    pixels, labels = _digits_table()
    # Pixel values are 0..16; scale to the 0..255 range every other image uses.
    images = np.rint(pixels.reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    order = np.load(DIGITS_SPLIT, allow_pickle=False).astype(np.int64)
    train, test = order[:-DIGITS_TEST], order[-DIGITS_TEST:]
    return RawDataset(
        train=Split(torch.from_numpy(images[train]), torch.from_numpy(labels[train])),
        test=Split(torch.from_numpy(images[test]), torch.from_numpy(labels[test])),
        classes=[str(c) for c in range(10)],
    )


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """(pixels (1797, 64) as floats 0..16, labels) from scikit-learn's digits.csv.gz, found
    through the package's location alone; scikit-learn's own loader if the file has moved."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = (spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.data, bunch.target.astype(np.int64)


# The official files and their MD5s (as torchvision lists them), and the class names torchvision
# gives them. Kept here so that reading files already on disk needs no torchvision import, which
# costs seconds at every start; torchvision is imported only to download.
MNIST_LIKE = {
    "MNIST": (
        [
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ],
        ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four"]
        + ["5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"],
    ),
    "FashionMNIST": (
        [
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ],
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
        + ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    ),
}


def _try_download(name: str, folder: Path, missing: list[str]) -> None:
    """Download with torchvision when the network allows it; otherwise say exactly what to fetch."""
    listing = "\n".join(f"  - {file}" for file in missing)
    hint = (
        f"{name} files are missing from {folder}:\n{listing}\n"
        f"Copy the official files into {folder} (or point data.root / $KILN_DATA at a folder "
        f"holding {folder.parent.name}/{folder.name}/), or connect to the network to download them."
    )
    if os.environ.get("KILN_OFFLINE"):
        raise DataError(hint + " (KILN_OFFLINE is set: no download attempted)")
    import torchvision.datasets

    dataset_cls = getattr(torchvision.datasets, name)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        dataset_cls(str(folder.parent.parent), train=True, download=True)
    except Exception as exc:  # any network failure means: tell the user what to fetch
        raise DataError(f"{hint}\nDownload failed: {exc}") from None
    finally:
        socket.setdefaulttimeout(previous)


def read_idx(data: bytes, where: Path) -> np.ndarray:
    """An IDX array (the MNIST file format: a 4-byte magic number giving the type and the number
    of dimensions, one big-endian uint32 per dimension, then the values)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{where} is not an IDX file of unsigned bytes; fetch it again")
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, ">u4", count=ndim, offset=4))
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise DataError(f"{where} is truncated ({values.size} of {np.prod(shape)} values)")
    return values.reshape(shape)


def _read(folder: Path, gz_name: str, md5: str) -> np.ndarray:
    """The unpacked file when there is one, else the .gz (verified against its MD5)."""
    raw = folder / gz_name.removesuffix(".gz")
    if raw.exists():
        return read_idx(raw.read_bytes(), raw)
    gz = folder / gz_name
    packed = gz.read_bytes()
    if hashlib.md5(packed, usedforsecurity=False).hexdigest() != md5:
        raise DataError(
            f"{gz} is corrupt (MD5 differs from the official {md5}); delete it and fetch it again"
        )
    return read_idx(gzip.decompress(packed), gz)


def _load_mnist_like(name: str, root: Path) -> RawDataset:
    files, classes = MNIST_LIKE[name]
    folder = root / name / "raw"
    missing = [
        gz
        for gz, _ in files
        if not (folder / gz).exists() and not (folder / gz.removesuffix(".gz")).exists()
    ]
    if missing:
        _try_download(name, folder, missing)
    train_x, train_y, test_x, test_y = (
        torch.from_numpy(_read(folder, gz, md5).copy()) for gz, md5 in files
    )
    return RawDataset(
        train=Split(train_x[:, None].contiguous(), train_y.long()),
        test=Split(test_x[:, None].contiguous(), test_y.long()),
        classes=list(classes),
    )


@register_dataset("mnist", "MNIST handwritten digits, 28x28 grayscale, 60k train / 10k test")
def load_mnist(cfg, root: Path) -> RawDataset:
    return _load_mnist_like("MNIST", root)


@register_dataset("fashion-mnist", "Fashion-MNIST clothing, 28x28 grayscale, 60k train / 10k test")
def load_fashion_mnist(cfg, root: Path) -> RawDataset:
    return _load_mnist_like("FashionMNIST", root)


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
    _try_download("CIFAR10", root / "cifar10" / "x", [CIFAR10.filename])  # pragma: no cover
    return load_cifar10(cfg, root)  # pragma: no cover
