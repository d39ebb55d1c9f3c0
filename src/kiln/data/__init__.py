"""Datasets: `build(cfg.data)` turns a config section into train/val/test splits and a DataInfo."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kiln.config import DataConfig
from kiln.data import builtin, folder  # noqa: F401  (registers the datasets)
from kiln.data.files import FileSplit, WorkerLoader
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
from kiln.data.stats import channel_stats, file_stats

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataInfo",
    "FileSplit",
    "MemoryLoader",
    "Normalize",
    "RawDataset",
    "Split",
    "WorkerLoader",
    "build",
    "channel_stats",
    "make_loader",
    "register_dataset",
    "resolve_root",
]

SPLIT_SEED = 0  # the validation split never changes with train.seed: runs stay comparable
MEMORY_FRACTION = 0.25  # data.memory=auto: hold a dataset in RAM when it takes at most this much


def resolve_root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_root()


def stratified_split(train, fraction: float):
    """A fixed, stratified split of a training set into (rest, held out)."""
    from sklearn.model_selection import train_test_split

    index = torch.arange(len(train)).numpy()
    labels = train.labels.numpy()
    try:
        rest, held = train_test_split(
            index, test_size=fraction, stratify=labels, random_state=SPLIT_SEED
        )
    except ValueError:  # a class too small to stratify: fall back to a plain random split
        rest, held = train_test_split(index, test_size=fraction, random_state=SPLIT_SEED)
    return train.take(torch.from_numpy(rest)), train.take(torch.from_numpy(held))


def available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**31


def keep_in_memory(cfg: DataConfig, splits: list[FileSplit]) -> bool:
    if isinstance(cfg.memory, bool):
        return cfg.memory
    needed = sum(len(s) * s.channels * s.height * s.width for s in splits)
    return needed <= MEMORY_FRACTION * available_memory()


def build(cfg: DataConfig) -> DataBundle:
    from kiln.data.folder import default_workers

    entry = get_dataset(cfg.name)
    raw: RawDataset = entry.loader(cfg, resolve_root(cfg))
    if raw.val is not None:
        train, val = raw.train, raw.val
    else:
        train, val = stratified_split(raw.train, cfg.val_fraction)
    test = raw.test
    if cfg.subset is not None and cfg.subset < len(train):
        train = train.take(torch.arange(cfg.subset))
    workers = default_workers(cfg.workers)
    files = [s for s in (train, val, test) if isinstance(s, FileSplit)]
    if files and keep_in_memory(cfg, files):  # decode once, then the fast in-memory path
        train, val, test = (
            s.load(workers) if isinstance(s, FileSplit) else s for s in (train, val, test)
        )
    channels = train.channels if isinstance(train, FileSplit) else train.images.shape[1]
    if not cfg.normalize:
        mean, std = [0.0] * channels, [1.0] * channels
    elif isinstance(train, FileSplit):
        mean, std = file_stats(train, workers)
    else:
        mean, std = channel_stats(train.images)
    height, width = (
        (train.height, train.width) if isinstance(train, FileSplit) else train.images.shape[2:]
    )
    info = DataInfo(cfg.name, list(raw.classes), channels, int(height), int(width), mean, std)
    sizes = raw.sizes or {f"{height}x{width}": len(raw.train) + len(raw.test)}
    modes = raw.modes or {("L" if channels == 1 else "RGB"): len(raw.train) + len(raw.test)}
    return DataBundle(train, val, test, info, raw.skipped, sizes, modes)


def make_loader(
    split,
    batch_size: int,
    normalize: Normalize,
    device: torch.device | str = "cpu",
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: torch.nn.Module | None = None,
    weights: torch.Tensor | None = None,
    workers: int = 0,
):
    """The in-memory fast path when it applies (images in memory, no per-sample augmentation),
    else a DataLoader with workers."""
    if isinstance(split, Split) and augment is None:
        return MemoryLoader(split, batch_size, normalize, device, shuffle, generator, weights)
    return WorkerLoader(
        split, batch_size, normalize, device, shuffle, generator, workers, augment, weights
    )
