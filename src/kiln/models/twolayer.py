"""The tutorial's TwoLayerNet: linear, ReLU (written as clamp), linear."""

from __future__ import annotations

from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model


class TwoLayerNet(nn.Module):
    def __init__(self, in_features: int, hidden: int, num_classes: int):
        super().__init__()
        self.linear1 = nn.Linear(in_features, hidden)
        self.linear2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        h_relu = self.linear1(x.flatten(1)).clamp(min=0)
        return self.linear2(h_relu)


@register_model("twolayer", "The PyTorch tutorial's TwoLayerNet: linear, ReLU, linear (hidden=100)")
def twolayer(info: DataInfo, hidden: int = 100) -> nn.Module:
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"model.hidden must be a positive integer, got {hidden!r}")
    c, h, w = info.input_shape
    return TwoLayerNet(c * h * w, hidden, info.num_outputs)
