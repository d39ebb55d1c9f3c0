"""Dataset registry: a dataset is one function with one decorator.

A registered loader returns the official train and test splits as uint8 tensors (N, C, H, W) plus
the class names; `kiln.data.build` carves the validation split and computes the normalization, so
every dataset gets the same treatment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kiln.config import did_you_mean
from kiln.errors import ConfigError


@dataclass
class Split:
    """Images as uint8 (N, C, H, W) (volumes: (N, C, D, H, W)) and labels (N,), all in memory;
    labels may also be numbers (N, T) for task=regress, masks (N, [D,] H, W) for task=segment,
    or multi-hot rows (N, K) of bools for task=multilabel (True: the image has that label)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]

    def head(self, n: int) -> torch.Tensor:
        return self.images[:n]


def are_masks(labels: torch.Tensor) -> bool:
    """Segmentation masks (N, [D,] H, W) of class indices: not class labels (N,), not numeric
    targets (N, T), which are floats, and not multi-hot label sets (N, K), which are bools."""
    return labels.dim() > 1 and not labels.is_floating_point() and not is_multi_hot(labels)


def is_multi_hot(labels: torch.Tensor) -> bool:
    """Several labels per image (data.label_sep): (N, K) bools, True where the image has it."""
    return labels.dtype == torch.bool and labels.dim() == 2


@dataclass
class RawDataset:
    """What a loader returns: the given splits, before Kiln carves validation (when `val` is None).

    Splits are `Split` (in memory) or `kiln.data.files.FileSplit` (decoded on demand)."""

    train: Any
    test: Any
    classes: list[str]
    val: Any = None
    skipped: list[str] = field(default_factory=list)  # problems skipped with data.on_bad=skip
    sizes: dict[str, int] = field(default_factory=dict)  # "HxW" -> images, before resizing
    modes: dict[str, int] = field(default_factory=dict)  # PIL mode -> images
    features: list[str] | None = None  # tables: the input columns, in order
    note: str = ""  # one line on how the data was read (the decoded cache: opened, or written)
    notes: list[str] = field(default_factory=list)  # splits the loader made or changed, said once


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
    # task=regress: `classes` are the target names; targets are standardized with these
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    depth: int | None = None  # volumes (C, D, H, W), e.g. task=segment on .npy files
    features: list[str] | None = None  # tables: the input columns (kiln predict reads them)
    resize: str = "cover"  # data.resize: how images of another size were brought to this one
    # The model's output size when it is not one per class (task=binary: one logit)
    outputs: int | None = None
    # task=binary|multilabel: the decision threshold per output, chosen after training
    thresholds: list[float] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_outputs(self) -> int:
        """What a model's head gives: one score per class unless the task says otherwise."""
        return self.outputs if self.outputs is not None else len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) for images, (C, D, H, W) for volumes."""
        if self.depth is not None:
            return (self.channels, self.depth, self.height, self.width)
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataInfo:
        # absent from older runs
        optional = ("target_mean", "target_std", "depth", "features", "outputs", "thresholds")
        info = cls(**{k: d[k] if k not in optional else d.get(k)
                      for k in cls.__dataclass_fields__ if k != "resize"})  # fmt: skip
        info.resize = d.get("resize", "cover")
        return info


@dataclass
class DataBundle:
    train: Any  # Split or FileSplit
    val: Any
    test: Any
    info: DataInfo
    skipped: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)
    placement: Any = None  # kiln.data.placement.Placement: in memory or not, and why
    note: str = ""  # RawDataset.note: said when training starts, after the "Data:" line
    notes: list[str] = field(default_factory=list)  # splits made or changed: said when training


Loader = Callable[[Any, Path], RawDataset]  # (DataConfig, root) -> RawDataset


@dataclass
class DatasetEntry:
    name: str
    loader: Loader
    description: str


DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, description: str = "") -> Callable[[Loader], Loader]:
    """Make `loader(cfg, root) -> RawDataset` available as `data.name=<name>`."""

    def wrap(fn: Loader) -> Loader:
        DATASETS[name] = DatasetEntry(name, fn, description or (fn.__doc__ or "").strip())
        return fn

    return wrap


def get_dataset(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise ConfigError(
            f"data.name: unknown dataset '{name}'{did_you_mean(name, DATASETS)}; "
            f"available: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]


def default_root() -> Path:
    """`$KILN_DATA`, else a per-user cache folder."""
    if os.environ.get("KILN_DATA"):
        return Path(os.environ["KILN_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "kiln" / "data"


def cache_root() -> Path:
    """Where Kiln keeps what it computes from data (normalization stats, decoded images):
    `$KILN_CACHE`, else the folder that holds the default data root (~/.cache/kiln)."""
    if os.environ.get("KILN_CACHE"):
        return Path(os.environ["KILN_CACHE"]).expanduser()
    return default_root().parent
