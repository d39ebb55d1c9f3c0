"""A fully connected variational autoencoder: pytorch/examples' VAE (784-400-20-400-784) with the
hidden layers as an option.

On a CPU it is several times cheaper per image than the convolutional model=vae, so a few
epochs of it reach a better ELBO than the example's ten in less time (recipes/mnist-vae-fast.yaml).
The encoder flattens the image through `hidden` (ReLU after each) to the mean and log-variance
of q(z|x); the decoder mirrors it back to one logit per pixel (task=vae scores them with binary
cross-entropy). `model.beta` weighs the KL term, as for model=vae.
"""

from __future__ import annotations

import torch
from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model
from kiln.models.vae import VAEBase


def relu_stack(sizes: list[int]) -> nn.Sequential:
    """Linear layers through `sizes`, each followed by a ReLU."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class DenseVAE(VAEBase):
    def __init__(self, shape: tuple[int, int, int], latent: int = 20,
                 hidden: tuple[int, ...] = (400,), beta: float = 1.0):  # fmt: skip
        super().__init__()
        self.latent, self.beta, self.shape = latent, beta, tuple(shape)
        pixels = shape[0] * shape[1] * shape[2]
        self.encoder = nn.Sequential(nn.Flatten(), relu_stack([pixels, *hidden]))
        self.to_stats = nn.Linear(hidden[-1], 2 * latent)  # mean and log-variance of q(z|x)
        self.decoder = nn.Sequential(
            relu_stack([latent, *reversed(hidden)]),
            nn.Linear(hidden[0], pixels),
            nn.Unflatten(1, self.shape),
        )  # pixel logits

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (N, latent)."""
        mean, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits (N, C, H, W); sigmoid gives the image in [0, 1]."""
        return self.decoder(z)


@register_model(
    "densevae", "fully connected VAE (task=vae): pixels-400-20 as pytorch/examples', hidden sizes"
)
def densevae(
    info: DataInfo, latent: int = 20, hidden: list[int] = (400,), beta: float = 1.0
) -> nn.Module:
    if isinstance(hidden, int):
        hidden = [hidden]
    for key, values in (("latent", [latent]), ("hidden", list(hidden))):
        if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1
                             for v in values):  # fmt: skip
            raise ValueError(f"model.{key} must be positive integers, got {values!r}")
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or beta < 0:
        raise ValueError(f"model.beta must be a number >= 0, got {beta!r}")
    return DenseVAE(info.input_shape, latent, tuple(hidden), float(beta))
