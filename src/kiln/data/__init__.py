"""Datasets: `build(cfg.data)` turns a config section into train/val/test splits and a DataInfo."""

from __future__ import annotations

from pathlib import Path

import torch

from kiln.config import DataConfig
from kiln.data import builtin  # noqa: F401  (registers the built-in datasets)
from kiln.data.memory import MemoryLoader, Normalize
from kiln.data.registry import (
    DATASETS,
    DataBundle,
    DataInfo,
    RawDataset,
    Split,
    default_root,
    get_dataset,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataInfo",
    "MemoryLoader",
    "Normalize",
    "RawDataset",
    "Split",
    "build",
    "channel_stats",
    "register_dataset",
    "resolve_root",
]

SPLIT_SEED = 0  # the validation split never changes with train.seed: runs stay comparable


def resolve_root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_root()


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in chunks to bound memory."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for begin in range(0, len(images), chunk):
        x = images[begin : begin + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.pow_(2).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def split_validation(train: Split, fraction: float) -> tuple[Split, Split]:
    """A fixed, stratified split of the official training set into train and validation."""
    from sklearn.model_selection import train_test_split

    index = torch.arange(len(train))
    labels = train.labels.numpy()
    try:
        tr, va = train_test_split(
            index.numpy(), test_size=fraction, stratify=labels, random_state=SPLIT_SEED
        )
    except ValueError:  # a class too small to stratify: fall back to a plain random split
        tr, va = train_test_split(index.numpy(), test_size=fraction, random_state=SPLIT_SEED)
    return train.take(torch.from_numpy(tr)), train.take(torch.from_numpy(va))


def build(cfg: DataConfig) -> DataBundle:
    entry = get_dataset(cfg.name)
    raw: RawDataset = entry.loader(resolve_root(cfg))
    train, val = split_validation(raw.train, cfg.val_fraction)
    if cfg.subset is not None and cfg.subset < len(train):
        train = train.take(torch.arange(cfg.subset))
    if cfg.normalize:
        mean, std = channel_stats(train.images)
    else:
        channels = train.images.shape[1]
        mean, std = [0.0] * channels, [1.0] * channels
    _, channels, height, width = train.images.shape
    info = DataInfo(cfg.name, list(raw.classes), channels, height, width, mean, std)
    return DataBundle(train=train, val=val, test=raw.test, info=info)
