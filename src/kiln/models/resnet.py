"""ResNet-18 from torchvision, with a stem suited to small images when they are small."""

from __future__ import annotations

import torchvision
from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model


@register_model(
    "resnet18", "torchvision ResNet-18; small images get a 3x3 stride-1 stem, no max-pool"
)
def resnet18(info: DataInfo, small_stem: bool | None = None) -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=info.num_classes)
    if small_stem is None:  # the ImageNet stem shrinks 32x32 to 8x8 before the first block
        small_stem = max(info.height, info.width) <= 64
    if small_stem:
        model.conv1 = nn.Conv2d(info.channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif info.channels != 3:
        model.conv1 = nn.Conv2d(info.channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
