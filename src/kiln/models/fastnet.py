"""FastNet: the shape of network the CIFAR-10 speed runs use, for time to accuracy.

A 2x2 stem convolution, then stages of: a 3x3 convolution that changes the width, a 2x2
max-pool, batch norm and GELU, a second 3x3 convolution at the pooled size, batch norm and GELU.
Pooling right after the first convolution makes the second one four times cheaper than in a
conv-conv-pool stage. A global max-pool and one linear layer, scaled down, make the head.
`widths` sets the cost: [64, 256, 256] is the speed runs' GPU net, [32, 64, 128] suits a CPU.
`whiten=True` replaces the trained stem by a frozen patch-whitening layer (kiln/models/whitening.py)
followed by GELU, as the speed runs do: fewer epochs to the same accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model
from kiln.models.whitening import PatchWhitening


class ConvBN(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )


class Stage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, pool: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.act = nn.GELU()
        self.conv2 = ConvBN(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.conv2(x)


class FastNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        size: int,
        widths: list[int],
        stem: int = 24,
        scale: float = 1 / 9,
        whiten: bool = False,
    ):
        super().__init__()
        if whiten:
            whitening = PatchWhitening(in_channels, kernel_size=2)
            self.stem = nn.Sequential(whitening, nn.GELU())
            stem = whitening.out_channels
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem, kernel_size=2, bias=False),
                nn.BatchNorm2d(stem),
                nn.GELU(),
            )
        stages, channels, size = [], stem, size - 1
        for width in widths:
            stages.append(Stage(channels, width, pool=size >= 2))
            channels, size = width, size // 2 if size >= 2 else size
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(channels, num_classes, bias=False)
        self.scale = scale  # small logits at the start train faster with label smoothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.head(x) * self.scale


@register_model("fastnet", "Speed-run CNN: 2x2 stem, stages of conv-pool-BN-GELU, conv-BN-GELU")
def fastnet(
    info: DataInfo,
    widths: list[int] | None = None,
    stem: int = 24,
    scale: float = 1 / 9,
    whiten: bool = False,
) -> nn.Module:
    widths = [32, 64, 128] if widths is None else widths
    ok = isinstance(widths, list) and widths
    if not ok or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"model.widths must be a list of positive integers, got {widths!r}")
    if not isinstance(stem, int) or stem < 1:
        raise ValueError(f"model.stem must be a positive integer, got {stem!r}")
    if not isinstance(whiten, bool):
        raise ValueError(f"model.whiten must be true or false, got {whiten!r}")
    if whiten and stem != 24:
        raise ValueError(
            f"model.stem={stem} sets the width of a trained stem; with model.whiten=true the "
            f"stem has 2 x channels x 4 = {8 * info.channels} fixed filters: drop model.stem"
        )
    size = min(info.height, info.width)
    return FastNet(info.channels, info.num_outputs, size, widths, stem, scale, whiten)
