"""Dataset registry: a dataset is one function with one decorator.

A registered loader returns the official train and test splits as uint8 tensors (N, C, H, W) plus
the class names; `kiln.data.build` carves the validation split and computes the normalization, so
every dataset gets the same treatment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kiln.errors import ConfigError


@dataclass
class Split:
    """Images as uint8 (N, C, H, W) and integer labels (N,), all in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass
class RawDataset:
    """What a loader returns: the official splits, before Kiln carves validation."""

    train: Split
    test: Split
    classes: list[str]


@dataclass
class DataInfo:
    """Everything downstream needs to rebuild preprocessing without the data: saved in info.json."""

    name: str
    classes: list[str]
    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataInfo:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split
    info: DataInfo


Loader = Callable[[Path], RawDataset]


@dataclass
class DatasetEntry:
    name: str
    loader: Loader
    description: str


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, description: str = "") -> Callable[[Loader], Loader]:
    """Make `loader(root) -> RawDataset` available as `data.name=<name>`."""

    def wrap(fn: Loader) -> Loader:
        DATASETS[name] = DatasetEntry(name, fn, description or (fn.__doc__ or "").strip())
        return fn

    return wrap


def get_dataset(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise ConfigError(
            f"data.name: unknown dataset '{name}'; available: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]


def default_root() -> Path:
    """`$KILN_DATA`, else a per-user cache folder."""
    if os.environ.get("KILN_DATA"):
        return Path(os.environ["KILN_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "kiln" / "data"
