"""Test-time augmentation (`model.tta`): a model's answer for an image and its mirror image,
averaged. It costs one more forward pass and usually buys a few tenths of a percent of accuracy
on natural images (CIFAR-10); it is wrong for images whose mirror means something else (digits).
"""

from __future__ import annotations

import torch
from torch import nn

TTA = ("none", "flip")


def infer(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Logits for a batch, averaged over the test-time augmentations `tta` names. Dense outputs
    (a score per pixel, e.g. task=segment) of the mirror image are mirrored back first."""
    logits = model(x)
    if tta == "flip":
        mirrored = model(x.flip(-1))
        dense = mirrored.dim() == x.dim()  # (N, K, H, W) for (N, C, H, W): same layout
        logits = (logits + (mirrored.flip(-1) if dense else mirrored)) / 2
    return logits
