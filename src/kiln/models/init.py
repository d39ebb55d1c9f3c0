"""Weight initialisation schemes (`model.init`), applied to convolutions and linear layers."""

from __future__ import annotations

from torch import nn

SCHEMES = ("default", "kaiming", "xavier", "orthogonal")


def init_weights(model: nn.Module, scheme: str) -> None:
    """`default` keeps PyTorch's own; the others redraw weights and zero the biases.

    kaiming suits ReLU networks (He et al.), xavier tanh/sigmoid ones (Glorot and Bengio), and
    orthogonal keeps deep stacks well conditioned (Saxe et al.)."""
    if scheme == "default":
        return
    if scheme not in SCHEMES:
        raise ValueError(f"model.init: unknown scheme '{scheme}'; choose one of {SCHEMES}")
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        if scheme == "kaiming":
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif scheme == "xavier":
            nn.init.xavier_uniform_(module.weight)
        else:
            nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
