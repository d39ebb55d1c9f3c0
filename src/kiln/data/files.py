"""Images that stay on disk: a split of file paths, decoded on demand in DataLoader workers.

`FileSplit` behaves like the in-memory `Split` where the trainer cares (length, labels, one image,
the first few images); `WorkerLoader` batches either kind through a DataLoader with workers and
per-sample augmentation, with the same `order()` / `batches()` interface as `MemoryLoader`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from kiln.data.images import decode
from kiln.data.memory import Normalize, batch_count, shard_length, shard_positions
from kiln.data.registry import Split


@dataclass
class FileSplit:
    """Images named by path, decoded when asked for; or, from the decoded cache, rows of one
    memory-mapped uint8 array (`decoded[rows[i]]` is image i, already in the run's shape)."""

    paths: list[Path]
    labels: torch.Tensor
    channels: int
    height: int
    width: int
    decoded: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    resize: str = "cover"  # data.resize

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> torch.Tensor:
        if self.decoded is not None:  # a copy: augmentation must never write into the cache
            return self.decoded[int(self.rows[index])].clone()
        return decode(self.paths[index], self.channels, self.height, self.width, self.resize)

    def take(self, index: torch.Tensor) -> FileSplit:
        paths = [self.paths[i] for i in index.tolist()]
        rows = None if self.rows is None else self.rows[index]
        shape = (self.channels, self.height, self.width)
        return FileSplit(paths, self.labels[index], *shape, self.decoded, rows, self.resize)

    def head(self, n: int) -> torch.Tensor:
        return torch.stack([self.image(i) for i in range(min(n, len(self)))])

    def load(self, workers: int | None = None) -> Split:
        """Every image in one uint8 tensor: a copy of the cached rows, or decoded in DataLoader
        worker processes (small images cost more in PIL's Python than in decoding, so threads
        would mostly wait for the GIL)."""
        if self.decoded is not None:
            return Split(self.decoded[self.rows], self.labels.clone())
        workers = (os.cpu_count() or 1) if workers is None else workers
        images = torch.empty((len(self), self.channels, self.height, self.width), dtype=torch.uint8)
        source = ImageSource(self, None)
        batches = [
            [(i, 0) for i in range(b, min(b + 256, len(self)))] for b in range(0, len(self), 256)
        ]
        loader = DataLoader(source, batch_sampler=batches, num_workers=min(workers, len(batches)))
        start = 0
        for batch, _ in loader:
            images[start : start + len(batch)] = batch
            start += len(batch)
        return Split(images, self.labels.clone())


class ImageSource(Dataset):
    """(index, seed) -> (uint8 image, label). The seed fixes the sample's augmentation, so the
    same image gets the same augmentation whichever worker decodes it, and a resumed run replays
    it exactly."""

    def __init__(self, split: Split | FileSplit, augment: torch.nn.Module | None):
        self.split, self.augment = split, augment

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        image = self.split.image(index)
        if self.augment is not None:
            torch.default_generator.manual_seed(seed)  # CPU only: 100x cheaper than manual_seed
            image = self.augment(image)
        return image, self.split.labels[index]


class _Plan:
    """The batch sampler: replaced before each pass, read by persistent workers' DataLoader."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class WorkerLoader:
    """Batches through a DataLoader whose workers decode and augment each sample, then moves the
    uint8 batch to the device and normalizes it there, like MemoryLoader (`shard` too)."""

    def __init__(
        self,
        split: Split | FileSplit,
        batch_size: int,
        normalize: Normalize,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        workers: int = 0,
        augment: torch.nn.Module | None = None,
        weights: torch.Tensor | None = None,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
    ):
        self.batch_size, self.normalize, self.drop_last = batch_size, normalize, drop_last
        self.rank, self.world = shard
        self.device = torch.device(device)
        self.shuffle, self.generator = shuffle, generator
        self.weights = weights  # per-sample weights: draw with replacement (data.balance=sampler)
        self.epoch_seed = 0
        self.plan = _Plan()
        self.loader = DataLoader(
            ImageSource(split, augment),
            batch_sampler=self.plan,
            num_workers=workers,
            persistent_workers=workers > 0,  # no new worker processes every epoch
            pin_memory=self.device.type == "cuda",
            # Its own generator: starting a pass must not draw from the global RNG that dropout
            # uses, or a resumed run would diverge. Augmentation is seeded per sample instead.
            generator=torch.Generator(),
        )

    def __len__(self) -> int:
        n = shard_length(self.num_samples, self.rank, self.world, pad=self.shuffle)
        return batch_count(n, self.batch_size, self.drop_last)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)

    def order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        g = self.generator
        self.epoch_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        return torch.randperm(self.num_samples, generator=g)

    def batches(
        self, order: torch.Tensor | None = None, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (normalized images, labels) from batch number `start` on."""
        for _, x, y in self.indexed_batches(order, start):
            yield x, y

    def indexed_batches(
        self, order: torch.Tensor | None = None, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (the samples' positions in the split, normalized images, labels), as
        MemoryLoader.indexed_batches does."""
        index = order if order is not None else torch.arange(self.num_samples)
        index = shard_positions(index, self.rank, self.world, pad=self.shuffle).tolist()
        index = index[: len(self) * self.batch_size] if self.drop_last else index
        self.plan.batches = [
            [(i, self.epoch_seed + i) for i in index[b : b + self.batch_size]]
            for b in range(start * self.batch_size, len(index), self.batch_size)
        ]
        for planned, (x, y) in zip(self.plan.batches, self.loader, strict=True):
            positions = torch.tensor([i for i, _ in planned], device=self.device)
            x = x.to(self.device, non_blocking=True)
            yield positions, self.normalize(x), y.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.order())
