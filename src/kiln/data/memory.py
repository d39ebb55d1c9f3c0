"""The in-memory fast path: a uint8 tensor batched by index, normalized a whole batch at a time.

No DataLoader, no workers, no per-sample Python: for datasets that fit in memory this is as close to
the compute bound as a training loop gets. Without augmentation, a split whose float copy is small
(placement.fits_normalized) is normalized once, up front: each batch is then a single index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from kiln.data.batch_augment import BatchAugment
from kiln.data.placement import fits_normalized
from kiln.data.registry import Split, are_masks


class Normalize:
    """uint8 (N, C, H, W) -> float32 ((x / 255) - mean) / std, as one multiply and one subtract.
    Float input (rows of a table) is in its own units: (x - mean) / std, never in place."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        channels_last: bool = False,
    ):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.float_scale = 1.0 / std_t
        self.shift = mean_t / std_t
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 5:  # volumes (N, C, D, H, W): D and H x W as one axis, same numbers
            return self(images.flatten(3)).reshape(images.shape)
        if images.is_floating_point():  # a table's rows: a new tensor, the data stays untouched
            return (images.float() * self.float_scale).sub_(self.shift)
        x = images.to(torch.float32, memory_format=self.format)
        return x.mul_(self.scale).sub_(self.shift)


def shard_positions(order: torch.Tensor, rank: int, world: int, pad: bool = False) -> torch.Tensor:
    """This process's share of one pass over `order` (the same on every process): positions
    rank, rank + world, ... Batch b of every process together is then batch b of one process.
    `pad` (training) repeats the first positions up to a multiple of `world`, as
    DistributedSampler does, so every process runs the same number of steps."""
    if world == 1:
        return order
    if pad:
        order = torch.cat([order, order[: -len(order) % world]])
    return order[rank::world]


def batch_count(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches in a pass over n samples (without the last, smaller one with `drop_last`)."""
    return n // batch_size if drop_last else (n + batch_size - 1) // batch_size


def shard_length(n: int, rank: int, world: int, pad: bool = False) -> int:
    """len(shard_positions(...)) for an order of n positions."""
    return -(-n // world) if pad else len(range(rank, n, world))


class MemoryLoader:
    """Iterates a Split in batches. `order()` draws an epoch's permutation and augmentation seed
    from `generator`, so the trainer can checkpoint the generator and replay an epoch exactly when
    resuming mid-way: batch b of an epoch is augmented with seed (epoch seed + b), on the device.
    `shard` = (rank, world size): with several processes each takes its share of every pass."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalize: Normalize,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        weights: torch.Tensor | None = None,
        augment: BatchAugment | None = None,
        store: torch.device | str | None = None,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
    ):
        # `store`: where the images stay (default: the training device); batches move to `device`
        self.device = torch.device(device)
        self.images = split.images.to(store if store is not None else device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.normalize = normalize
        self.shuffle = shuffle
        self.generator = generator
        self.weights = weights  # per-sample weights: draw with replacement (data.balance=sampler)
        self.augment = augment
        self.epoch_seed = 0
        self.rank, self.world = shard
        self.drop_last = drop_last
        # the same numbers as normalizing each batch (the same elementwise ops), done once
        self.normalized = (
            augment is None and self.images.device == self.device and fits_normalized(self.images)
        )
        if self.normalized:
            self.images = normalize(self.images)

    def __len__(self) -> int:
        n = shard_length(len(self.labels), self.rank, self.world, pad=self.shuffle)
        return batch_count(n, self.batch_size, self.drop_last)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        if self.augment is not None:  # drawn only when used: unaugmented runs keep their order
            self.epoch_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        if self.weights is not None:
            order = torch.multinomial(
                self.weights, self.num_samples, replacement=True, generator=self.generator
            )
        else:
            order = torch.randperm(self.num_samples, generator=self.generator)
        return order.to(self.images.device)

    def batches(
        self, order: torch.Tensor | None = None, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (normalized images, labels) from batch number `start` on."""
        for _, x, y in self.indexed_batches(order, start):
            yield x, y

    def indexed_batches(
        self, order: torch.Tensor | None = None, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (the samples' positions in the split, normalized images, labels): what is
        computed once per sample (a teacher's outputs) is looked up by these positions."""
        device, copy = self.device, self.images.device != self.device
        if self.world > 1:
            if order is None:
                order = torch.arange(self.num_samples, device=self.images.device)
            order = shard_positions(order, self.rank, self.world, pad=self.shuffle)
        n = self.num_samples if order is None else len(order)
        n = len(self) * self.batch_size if self.drop_last else n
        for batch, begin in enumerate(range(start * self.batch_size, n, self.batch_size), start):
            end = begin + self.batch_size
            if order is None:
                idx = torch.arange(begin, min(end, n), device=device)
                x, y = self.images[begin:end], self.labels[begin:end]
            else:
                positions = order[begin:end]
                idx = positions.to(device)
                x, y = self.images[positions], self.labels[idx]
            if copy:
                x = x.to(device, non_blocking=True)
            if self.augment is not None:
                seed = self.epoch_seed + batch + (self.rank << 32)  # rank 0: as one process
                g = torch.Generator(device=device).manual_seed(seed)
                if are_masks(y):  # segmentation masks move with their images
                    x, y = self.augment(x, g, masks=y)
                else:
                    x = self.augment(x, g)
            yield idx, (x if self.normalized else self.normalize(x)), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.order())
