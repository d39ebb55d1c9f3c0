"""The in-memory fast path: a uint8 tensor batched by index, normalized a whole batch at a time.

No DataLoader, no workers, no per-sample Python: for datasets that fit in memory this is as close to
the compute bound as a training loop gets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from kiln.data.registry import Split


class Normalize:
    """uint8 (N, C, H, W) -> float32 ((x / 255) - mean) / std, as one multiply and one subtract."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = mean_t / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32).mul_(self.scale).sub_(self.shift)


class MemoryLoader:
    """Iterates a Split in batches. `order()` draws an epoch's permutation from `generator`, so the
    trainer can checkpoint the generator and replay an epoch exactly when resuming mid-way."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalize: Normalize,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        weights: torch.Tensor | None = None,
    ):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.normalize = normalize
        self.shuffle = shuffle
        self.generator = generator
        self.weights = weights  # per-sample weights: draw with replacement (data.balance=sampler)

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
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
        for begin in range(start * self.batch_size, self.num_samples, self.batch_size):
            end = begin + self.batch_size
            if order is None:
                x, y = self.images[begin:end], self.labels[begin:end]
            else:
                idx = order[begin:end]
                x, y = self.images[idx], self.labels[idx]
            yield self.normalize(x), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.order())
