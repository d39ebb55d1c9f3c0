"""A convolutional variational autoencoder (Kingma & Welling, 2014) for small images.

The encoder halves the image with strided 4x4 convolutions down to a few pixels (28 -> 14 -> 7,
32 -> 16 -> 8 -> 4, 8 -> 4) and a linear layer gives the mean and log-variance of q(z|x); the
decoder mirrors it with transposed convolutions and outputs one logit per pixel (a Bernoulli
decoder: the training task scores it with binary cross-entropy against pixels in [0, 1]).
`model.beta` weighs the KL term (beta-VAE; 1 is the plain ELBO); the task reads it from the config.
"""

from __future__ import annotations

import torch
from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.latent import LatentGenerator
from kiln.models.registry import register_model

MIN_SIZE = 4  # stop halving before the feature map gets smaller than this


def halvings(height: int, width: int) -> int:
    """How many times a stride-2 layer can halve the image exactly, staying >= MIN_SIZE pixels:
    2 for 28x28 (-> 7x7), 3 for 32x32 (-> 4x4), 1 for 8x8 (-> 4x4)."""
    k = 0
    while all(s % 2 ** (k + 1) == 0 and s // 2 ** (k + 1) >= MIN_SIZE for s in (height, width)):
        k += 1
    return k


def stage_widths(width: int, stages: int) -> list[int]:
    """Channels after each halving: width, 2 x width, 4 x width, ..."""
    return [width * 2**i for i in range(stages)]


class VAEBase(LatentGenerator):
    """What task=vae asks of a VAE, given `encode(x) -> (mean, logvar)`, `decode(z) -> pixel
    logits` and `self.latent`: shared by the convolutional VAE and the dense one."""

    latent: int

    @staticmethod
    def reparameterize(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mean + sigma * eps: a sample of q(z|x) that gradients flow through."""
        return mean + torch.randn_like(mean) * (0.5 * logvar).exp()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixel logits of a reconstruction from a sampled z, mean, log-variance)."""
        mean, logvar = self.encode(x)
        return self.decode(self.reparameterize(mean, logvar)), mean, logvar

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] decoded from latent vectors z (N, latent): what an export computes."""
        return self.decode(z).sigmoid()


class VAE(VAEBase):
    def __init__(
        self, channels: int, height: int, width: int, latent: int = 16, base: int = 32,
        beta: float = 1.0,
    ):  # fmt: skip
        super().__init__()
        self.latent, self.beta = latent, beta
        k = halvings(height, width)
        widths = stage_widths(base, k)
        self.start = (widths[-1] if widths else channels, height // 2**k, width // 2**k)
        flat = self.start[0] * self.start[1] * self.start[2]

        down: list[nn.Module] = []
        c = channels
        for out in widths:
            down += [nn.Conv2d(c, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        self.encoder = nn.Sequential(*down, nn.Flatten())
        self.to_stats = nn.Linear(flat, 2 * latent)  # mean and log-variance of q(z|x)

        relu = [nn.ReLU()] if k else []  # without convolutions the linear layer gives the logits
        self.from_latent = nn.Sequential(nn.Linear(latent, flat), *relu)
        up: list[nn.Module] = []
        for i in reversed(range(k)):
            out = widths[i - 1] if i > 0 else channels
            up.append(nn.ConvTranspose2d(widths[i], out, 4, 2, 1, bias=i == 0))
            if i > 0:
                up += [nn.BatchNorm2d(out), nn.ReLU()]
        self.decoder = nn.Sequential(*up)  # pixel logits

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (N, latent)."""
        mean, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits (N, C, H, W); sigmoid gives the image in [0, 1]."""
        return self.decoder(self.from_latent(z).view(-1, *self.start))


@register_model("vae", "Convolutional VAE (task=vae): latent size, width, KL weight beta")
def vae(info: DataInfo, latent: int = 16, width: int = 32, beta: float = 1.0) -> nn.Module:
    for key, value in (("latent", latent), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or beta < 0:
        raise ValueError(f"model.beta must be a number >= 0, got {beta!r}")
    return VAE(info.channels, info.height, info.width, latent, width, float(beta))
