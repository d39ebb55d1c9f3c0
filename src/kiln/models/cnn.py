"""The PyTorch MNIST example's CNN: two convolutions, Dropout2d, two linear layers."""

from __future__ import annotations

from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model


class TutorialCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, height: int, width: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout2d(0.25),
        )
        flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("cnn", "The PyTorch MNIST example's CNN (2 convs, Dropout2d, 2 linear layers)")
def cnn(info: DataInfo) -> nn.Module:
    if info.height < 6 or info.width < 6:
        raise ValueError(f"cnn needs images of at least 6x6, got {info.height}x{info.width}")
    return TutorialCNN(info.channels, info.num_outputs, info.height, info.width)
