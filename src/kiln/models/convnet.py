"""ConvNet: a small, fast CNN for small images, and the knobs that matter (depth, width, ...).

Each stage is `convs` 3x3 convolutions (with batch norm and ReLU), then a 2x2 max-pool; the
width doubles from stage to stage. A global pool and one linear layer make the head, so any image
size works.
"""

from __future__ import annotations

from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model


def conv_block(in_channels: int, out_channels: int, batchnorm: bool) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batchnorm),
        *([nn.BatchNorm2d(out_channels)] if batchnorm else []),
        nn.ReLU(inplace=True),
    ]


class ConvNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        size: int,
        depth: int = 3,
        width: int = 32,
        convs: int = 1,
        batchnorm: bool = True,
        dropout: float = 0.0,
        pool: str = "max",
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(depth):
            out = width * 2**stage
            for _ in range(convs):
                layers += conv_block(channels, out, batchnorm)
                channels = out
            if size >= 2:  # tiny images (digits are 8x8) stop shrinking at 1x1
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


@register_model("convnet", "Fast small-image CNN: stages of 3x3 conv-BN-ReLU + max-pool")
def convnet(
    info: DataInfo,
    depth: int = 3,
    width: int = 32,
    convs: int = 1,
    batchnorm: bool = True,
    dropout: float = 0.0,
    pool: str = "max",
) -> nn.Module:
    for key, value in (("depth", depth), ("width", width), ("convs", convs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    if pool not in ("max", "avg"):
        raise ValueError(f"model.pool must be 'max' or 'avg', got {pool!r}")
    return ConvNet(
        info.channels,
        info.num_outputs,
        min(info.height, info.width),
        depth,
        width,
        convs,
        batchnorm,
        dropout,
        pool,
    )
