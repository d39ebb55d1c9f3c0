"""ResNet-18/34/50 from torchvision, with a stem suited to small images when they are small."""

from __future__ import annotations

from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model
from kiln.models.torchvision_models import build_torchvision

STEM = "small images get a 3x3 stride-1 stem and no max-pool"


@register_model("resnet18", f"torchvision ResNet-18 (11M parameters); {STEM}")
def resnet18(
    info: DataInfo, small_stem: bool | None = None, pretrained: bool | str = False
) -> nn.Module:
    return build_torchvision("resnet18", info, small_stem, pretrained)


@register_model("resnet34", f"torchvision ResNet-34 (21M parameters); {STEM}")
def resnet34(
    info: DataInfo, small_stem: bool | None = None, pretrained: bool | str = False
) -> nn.Module:
    return build_torchvision("resnet34", info, small_stem, pretrained)


@register_model("resnet50", f"torchvision ResNet-50, bottleneck blocks (24M parameters); {STEM}")
def resnet50(
    info: DataInfo, small_stem: bool | None = None, pretrained: bool | str = False
) -> nn.Module:
    return build_torchvision("resnet50", info, small_stem, pretrained)
