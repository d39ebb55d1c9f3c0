"""Multi-layer perceptron: the FashionMNIST tutorial's network, with a few useful switches."""

from __future__ import annotations

from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leakyrelu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: list[int],
        act: str = "relu",
        dropout: float = 0.0,
        batchnorm: bool = False,
        final_activation: str | None = None,
    ):
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batchnorm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        if final_activation:  # only to reproduce the tutorial's trailing ReLU
            layers.append(activation(final_activation))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(self.flatten(x))


@register_model("mlp", "Fully connected network (the FashionMNIST tutorial's is hidden=[512, 512])")
def mlp(
    info: DataInfo,
    hidden: list[int] = (512, 512),
    activation: str = "relu",
    dropout: float = 0.0,
    batchnorm: bool = False,
    final_activation: str | None = None,
) -> nn.Module:
    if isinstance(hidden, int):
        hidden = [hidden]
    if not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"model.hidden must be a list of positive integers, got {hidden!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    c, h, w = info.input_shape
    return MLP(
        c * h * w, info.num_outputs, list(hidden), activation, dropout, batchnorm, final_activation
    )
