"""Kiln's image preprocessing as a PyTorch module, so that an exported graph can carry it.

`ImagePreprocess` takes raw uint8 images (N, H, W, 3), RGB as any decoder gives them, of any
height and width, and does what `kiln.data.images.decode` and `normalize` do with Pillow:

    channels   RGB -> L with Pillow's integer weights: (19595 R + 38470 G + 7471 B + 2^15) >> 16
    resize     Pillow's bilinear filter (its support widens when shrinking, which antialiases),
               with its 22-bit integer weights and rounding to 8 bits after each pass
    crop       `cover` (Kiln's decode): scale to cover the model's size, then center-crop;
               `stretch`: scale each side to the model's size
    scale      / 255, then (x - mean) / std per channel, in float32

The resize is two matrix products per image (width, then height) whose weights are computed in the
graph from the input's size, in float64 so that the integer arithmetic is exact: the result is
Pillow's, pixel for pixel (Kiln's decode runs Pillow's horizontal pass first with every Pillow
version: `kiln.data.images.resize`).
"""

from __future__ import annotations

import torch
from torch import nn

RESIZE_MODES = ("cover", "stretch")
L_WEIGHTS = (19595.0, 38470.0, 7471.0)  # Pillow's RGB -> L, in 1/65536


def pillow_weights(n_in: torch.Tensor, n_resized: torch.Tensor, first: torch.Tensor,
                   n_out: int, size_in: int) -> torch.Tensor:  # fmt: skip
    """(n_out, size_in) integer weights (in 1/2^22) of Pillow's bilinear resize of n_in pixels to
    n_resized, for the outputs first .. first + n_out - 1 (a crop). float64 0-d tensors in."""
    scale = n_in / n_resized
    filterscale = torch.clamp(scale, min=1.0)  # shrinking widens the filter: antialiasing
    inverse = 1.0 / filterscale
    center = (torch.arange(n_out, dtype=torch.float64) + first + 0.5) * scale
    source = torch.arange(size_in, dtype=torch.float64)
    # The triangle filter; Pillow's window [xmin, xmax) holds every point where it is not zero.
    w = torch.clamp(1.0 - torch.abs((source[None, :] - center[:, None] + 0.5) * inverse), min=0.0)
    total = torch.cumsum(w, dim=1)[:, -1:]  # summed left to right, as Pillow does
    w = torch.where(total != 0.0, w / total, w)
    return torch.floor(w * 4194304.0 + 0.5)  # 2^22: Pillow's PRECISION_BITS = 32 - 8 - 2


def resample(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One pass along the last axis: integer sums (exact in float64), rounded to 8 bits."""
    sums = torch.matmul(x, weights.transpose(0, 1))
    return torch.clamp(torch.floor((sums + 2097152.0) / 4194304.0), 0.0, 255.0)


class ImagePreprocess(nn.Module):
    """uint8 (N, H, W, 3) RGB at any size -> the model's normalized float (N, C, height, width)."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        mean: list[float],
        std: list[float],
        resize: str = "cover",
    ):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.channels, self.height, self.width, self.resize = channels, height, width, resize
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("gray", torch.tensor(L_WEIGHTS, dtype=torch.float64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float64).permute(0, 3, 1, 2)  # (N, 3, H, W), integer values
        if self.channels == 1:  # before resizing, as Kiln converts the image first
            x = torch.floor((x * self.gray.view(1, 3, 1, 1)).sum(1, keepdim=True) / 65536.0 + 0.5)
        x = self.fit(x)
        return (x.to(torch.float32) / 255.0 - self.mean) / self.std

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """Resize (and crop) to (height, width) as `kiln.data.images.fit_size` does."""
        size_h, size_w = x.shape[2], x.shape[3]
        # The input's size as float64 tensors (the graph's sizes are symbolic).
        h = torch.ones(size_h, dtype=torch.float64).sum()
        w = torch.ones(size_w, dtype=torch.float64).sum()
        height, width = float(self.height), float(self.width)
        if self.resize == "cover":
            scale = torch.maximum(width / w, height / h)
            resized_w = torch.clamp(torch.round(w * scale), min=width)  # round half to even,
            resized_h = torch.clamp(torch.round(h * scale), min=height)  # as Python's round()
        else:
            resized_w, resized_h = w * 0.0 + width, h * 0.0 + height
        left = torch.floor((resized_w - width) / 2.0)
        top = torch.floor((resized_h - height) / 2.0)
        across = pillow_weights(w, resized_w, left, self.width, size_w)
        down = pillow_weights(h, resized_h, top, self.height, size_h)
        x = resample(x, across)  # the horizontal pass first, as kiln.data.images.resize
        return resample(x.transpose(2, 3), down).transpose(2, 3)
