"""Image classification: cross-entropy on logits, accuracy as the headline metric."""

from __future__ import annotations

import torch
from torch import nn


class ClassifyTask:
    name = "classify"
    metric = "acc"  # the name shown next to loss in logs and metrics.csv

    def __init__(self, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None):
        # class_weights (data.balance=weights) weigh the training loss only: evaluation stays honest
        self.train_loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss(reduction="sum")

    @staticmethod
    def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Number of right answers in a batch, as a tensor (no device sync)."""
        return (logits.argmax(dim=1) == labels).sum()
