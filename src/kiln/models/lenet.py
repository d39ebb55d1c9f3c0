"""LeNet-5 (LeCun et al., 1998): two 5x5 convolutions with pooling, then three linear layers."""

from __future__ import annotations

from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model


class LeNet5(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, padding: int, flat_size: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * flat_size * flat_size, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("lenet", "LeNet-5: 28x28 inputs are padded by 2 as in the paper; 32x32 used as is")
def lenet(info: DataInfo) -> nn.Module:
    if info.height != info.width:
        raise ValueError(f"lenet needs square images, got {info.height}x{info.width}")
    padding = 2 if info.height < 32 else 0
    size = ((info.height + 2 * padding - 4) // 2 - 4) // 2
    if size < 1:
        raise ValueError(
            f"lenet needs images of at least 28x28, got {info.height}x{info.width}; use mlp or cnn"
        )
    return LeNet5(info.channels, info.num_outputs, padding, size)
