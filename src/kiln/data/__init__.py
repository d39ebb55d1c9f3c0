"""Datasets: `build(cfg.data)` turns a config section into train/val/test splits and a DataInfo."""

from __future__ import annotations

from pathlib import Path

import torch

from kiln.config import DataConfig, NormalizeValues
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
    default_root,
    get_dataset,
    register_dataset,
)
from kiln.data.splits import SPLIT_SEED, hold_out, sample, stratified_split
from kiln.data.stats import channel_stats, file_stats
from kiln.errors import ConfigError

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
    "SPLIT_SEED",
    "stratified_split",
]


def resolve_root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_root()


def build(cfg: DataConfig, device: torch.device | str = "cpu") -> DataBundle:
    """The splits, normalization and DataInfo, with the images decoded into memory when
    data.memory allows it for training on `device` (see kiln.data.placement)."""
    from kiln.data.workers import default_workers

    entry = get_dataset(cfg.name)
    raw: RawDataset = entry.loader(cfg, resolve_root(cfg))
    notes = list(raw.notes)
    if raw.val is not None and len(raw.val) > 0:
        train, val = raw.train, raw.val
    else:  # none given (or a split column without validation rows): carved from training
        train, val, note = hold_out(raw.train, cfg.val_fraction, "validation", "data.val_fraction")
        notes += [note] if note else []
    train = sample(train, cfg.subset)
    val, test = sample(val, cfg.subset_eval), sample(raw.test, cfg.subset_eval)
    workers = default_workers(cfg.workers)
    placement = place(cfg.memory, (train, val, test), torch.device(device))
    if placement.in_memory:  # decode once, then the fast in-memory path
        train, val, test = (
            s.load(workers) if isinstance(s, FileSplit) else s for s in (train, val, test)
        )
    channels = train.channels if isinstance(train, FileSplit) else train.images.shape[1]
    if isinstance(cfg.normalize, NormalizeValues):
        mean, std = fixed_normalization(cfg.normalize, channels)
    elif not cfg.normalize:
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
    info.resize = cfg.resize
    if not isinstance(train, FileSplit) and train.images.dim() == 5:  # volumes (N, C, D, H, W)
        info.depth = int(train.images.shape[2])
    if train.labels.is_floating_point():  # numeric targets: the task trains on them standardized
        info.target_mean = train.labels.mean(dim=0).tolist()
        info.target_std = train.labels.std(dim=0).clamp_min(1e-8).tolist()
    sizes = raw.sizes or {f"{height}x{width}": len(raw.train) + len(raw.test)}
    modes = raw.modes or {("L" if channels == 1 else "RGB"): len(raw.train) + len(raw.test)}
    return DataBundle(train, val, test, info, raw.skipped, sizes, modes, placement, raw.note,
                      notes)  # fmt: skip


def fixed_normalization(values: NormalizeValues, channels: int) -> tuple[list[float], list[float]]:
    """data.normalize={mean, std}: one value for every channel, or one per channel."""
    out = []
    for key, given in (("mean", values.mean), ("std", values.std)):
        if len(given) not in (1, channels):
            raise ConfigError(
                f"data.normalize.{key} has {len(given)} values and the images have {channels} "
                f"channel(s): give 1 value or {channels}"
            )
        out.append([float(v) for v in given] * (channels if len(given) == 1 else 1))
    return out[0], out[1]


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
    drop_last: bool = False,
):
    """The in-memory path when the split is in memory and every augmentation step (resolved
    data.augment) runs on whole batches; else a DataLoader whose workers decode and augment.
    `shard` = (rank, world size): this process's share of the split (several processes);
    `drop_last`: no last batch smaller than the others (data.drop_last)."""
    steps = augment or []
    in_memory = isinstance(split, Split) and (placement is None or placement.in_memory)
    if in_memory and not per_sample_only(steps):
        store = placement.store if placement is not None else device
        batch_augment = BatchAugment(steps) if steps else None
        return MemoryLoader(
            split, batch_size, normalize, device, shuffle, generator, weights, batch_augment, store,
            shard=shard, drop_last=drop_last,
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
        shard=shard, drop_last=drop_last,
    )  # fmt: skip


def describe_path(loader, placement: Placement | None, steps: list[dict[str, dict]]) -> str:
    """The one log line: which path the training data takes, and why."""
    names = [name for step in steps for name in step]
    if isinstance(loader, MemoryLoader):
        why = placement.reason if placement is not None else "already in memory"
        line = f"Data: in memory on {loader.images.device}, batched by index ({why})"
        if loader.normalized:
            line += "; normalized once, up front"
        if names:
            line += f"; augmentation on whole batches ({', '.join(names)})"
        return line
    workers = loader.loader.num_workers
    if placement is not None and not placement.in_memory:
        why = placement.reason
    else:
        why = f"augmentation step(s) {', '.join(per_sample_only(steps))} run per sample"
    return f"Data: DataLoader with {workers} worker(s), decoded per sample ({why})"
