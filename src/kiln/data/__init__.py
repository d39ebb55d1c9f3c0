"""Datasets: `build(cfg.data)` turns a config section into train/val/test splits and a DataInfo."""

from __future__ import annotations

from pathlib import Path

import torch

from kiln.config import DataConfig
from kiln.data import builtin, folder, masks, tabular  # noqa: F401  (registers the datasets)
from kiln.data.batch_augment import BatchAugment, per_sample_only
from kiln.data.files import FileSplit, WorkerLoader
from kiln.data.memory import MemoryLoader, Normalize
from kiln.data.placement import Placement, place
from kiln.data.registry import (
    DATASETS,
    DataBundle,
    DataInfo,
    RawDataset,
    Split,
    are_masks,
    default_root,
    get_dataset,
    is_multi_hot,
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
    "describe_path",
    "channel_stats",
    "make_loader",
    "register_dataset",
    "resolve_root",
]

SPLIT_SEED = 0  # the validation split never changes with train.seed: runs stay comparable


def resolve_root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_root()


def stratified_split(train, fraction: float):
    """A fixed, stratified split of a training set into (rest, held out): round(N x fraction)
    images held out, shared among the classes in proportion to their size (largest remainders),
    each class's drawn at random with a fixed seed."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    labels = train.labels
    if is_multi_hot(labels):  # several labels per image: stratified by each image's set of labels
        labels = torch.unique(labels, dim=0, return_inverse=True)[1]
    # numeric targets (task=regress) or masks (task=segment): a plain random split
    if labels.is_floating_point() or are_masks(labels):
        held_index = torch.randperm(len(labels), generator=g)[: round(len(labels) * fraction)]
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[held_index] = False
        return train.take(keep.nonzero().flatten()), train.take(held_index.sort().values)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * fraction
    quota = exact.floor().long()
    extra = round(len(labels) * fraction) - int(quota.sum())
    quota[torch.argsort(exact - quota, descending=True, stable=True)[:extra]] += 1
    held = []
    for c, n in zip(classes.tolist(), quota.tolist(), strict=True):
        members = (labels == c).nonzero().flatten()
        held.append(members[torch.randperm(len(members), generator=g)[:n]])
    held_index = torch.cat(held).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[held_index] = False
    return train.take(keep.nonzero().flatten()), train.take(held_index)


def build(cfg: DataConfig, device: torch.device | str = "cpu") -> DataBundle:
    """The splits, normalization and DataInfo, with the images decoded into memory when
    data.memory allows it for training on `device` (see kiln.data.placement)."""
    from kiln.data.workers import default_workers

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
    placement = place(cfg.memory, (train, val, test), torch.device(device))
    if placement.in_memory:  # decode once, then the fast in-memory path
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
        (train.height, train.width) if isinstance(train, FileSplit) else train.images.shape[-2:]
    )
    info = DataInfo(cfg.name, list(raw.classes), channels, int(height), int(width), mean, std)
    info.features = raw.features
    if not isinstance(train, FileSplit) and train.images.dim() == 5:  # volumes (N, C, D, H, W)
        info.depth = int(train.images.shape[2])
    if train.labels.is_floating_point():  # numeric targets: the task trains on them standardized
        info.target_mean = train.labels.mean(dim=0).tolist()
        info.target_std = train.labels.std(dim=0).clamp_min(1e-8).tolist()
    sizes = raw.sizes or {f"{height}x{width}": len(raw.train) + len(raw.test)}
    modes = raw.modes or {("L" if channels == 1 else "RGB"): len(raw.train) + len(raw.test)}
    return DataBundle(train, val, test, info, raw.skipped, sizes, modes, placement)


def make_loader(
    split,
    batch_size: int,
    normalize: Normalize,
    device: torch.device | str = "cpu",
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: list[dict[str, dict]] | None = None,
    weights: torch.Tensor | None = None,
    workers: int = 0,
    placement: Placement | None = None,
    shard: tuple[int, int] = (0, 1),
):
    """The in-memory path when the split is in memory and every augmentation step (resolved
    data.augment) runs on whole batches; else a DataLoader whose workers decode and augment.
    `shard` = (rank, world size): this process's share of the split (several processes)."""
    steps = augment or []
    in_memory = isinstance(split, Split) and (placement is None or placement.in_memory)
    if in_memory and not per_sample_only(steps):
        store = placement.store if placement is not None else device
        batch_augment = BatchAugment(steps) if steps else None
        return MemoryLoader(
            split, batch_size, normalize, device, shuffle, generator, weights, batch_augment, store,
            shard=shard,
        )  # fmt: skip
    per_sample = None
    if steps:
        from kiln.data.transforms import build_augment

        if isinstance(split, Split):
            size, channels = tuple(split.images.shape[2:]), split.images.shape[1]
        else:
            size, channels = (split.height, split.width), split.channels
        per_sample = build_augment(steps, size, channels)
    return WorkerLoader(
        split, batch_size, normalize, device, shuffle, generator, workers, per_sample, weights,
        shard=shard,
    )  # fmt: skip


def describe_path(loader, placement: Placement | None, steps: list[dict[str, dict]]) -> str:
    """The one log line: which path the training data takes, and why."""
    names = [name for step in steps for name in step]
    if isinstance(loader, MemoryLoader):
        why = placement.reason if placement is not None else "already in memory"
        line = f"Data: in memory on {loader.images.device}, batched by index ({why})"
        if names:
            line += f"; augmentation on whole batches ({', '.join(names)})"
        return line
    workers = loader.loader.num_workers
    if placement is not None and not placement.in_memory:
        why = placement.reason
    else:
        why = f"augmentation step(s) {', '.join(per_sample_only(steps))} run per sample"
    return f"Data: DataLoader with {workers} worker(s), decoded per sample ({why})"
