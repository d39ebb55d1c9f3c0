"""DCGAN (Radford, Metz & Chintala, 2016): a generator and a discriminator for small images.

The generator projects a noise vector to a few pixels with one transposed convolution, then doubles
the size with 4x4 stride-2 transposed convolutions (BatchNorm, ReLU) up to the image, ending in
tanh (images in [-1, 1]). The discriminator mirrors it: strided 4x4 convolutions with LeakyReLU(0.2)
(BatchNorm on all but the first), and a last convolution over the remaining map gives one logit.
Weights start as the paper's N(0, 0.02). 28x28 runs 7 -> 14 -> 28, 32x32 runs 4 -> 8 -> 16 -> 32.

One module holds both networks, so the run's state_dict (best.pt, last.pt) has both. `forward`
scores images (the discriminator), like every Kiln model it takes a batch of the dataset's images;
`generate(z)` and `sample(n)` make new ones. Training (two optimizers, the losses) is task=gan.
"""

from __future__ import annotations

import torch
from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.latent import LatentGenerator
from kiln.models.registry import register_model
from kiln.models.vae import halvings, stage_widths


class Generator(nn.Module):
    def __init__(self, latent: int, channels: int, height: int, width: int, base: int):
        super().__init__()
        k = halvings(height, width)
        widths = stage_widths(base, k)
        start = (height // 2**k, width // 2**k)
        top = widths[-1] if widths else channels
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent, top, start, 1, 0, bias=not k)]
        if k:
            layers += [nn.BatchNorm2d(top), nn.ReLU()]
        for i in reversed(range(k)):
            out = widths[i - 1] if i > 0 else channels
            layers.append(nn.ConvTranspose2d(widths[i], out, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers += [nn.BatchNorm2d(out), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent) noise -> (N, C, H, W) images in [-1, 1]."""
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, channels: int, height: int, width: int, base: int):
        super().__init__()
        k = halvings(height, width)
        layers: list[nn.Module] = []
        c = channels
        for i, out in enumerate(stage_widths(base, k)):
            layers.append(nn.Conv2d(c, out, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2))
            c = out
        end = (height // 2**k, width // 2**k)
        self.net = nn.Sequential(*layers, nn.Conv2d(c, 1, end, 1, 0), nn.Flatten(0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images in [-1, 1] -> (N,) logits: real > 0 > fake."""
        return self.net(images)


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: convolutions N(0, 0.02), BatchNorm scale N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class GANPair(LatentGenerator):
    """A generator and a discriminator trained by task=gan: what the task and exports call.
    Subclasses set `latent`, `generator` (noise -> images in [-1, 1]) and `discriminator`."""

    latent: int
    generator: nn.Module
    discriminator: nn.Module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits for images scaled to [-1, 1]."""
        return self.discriminator(images)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from noise z (N, latent)."""
        return self.generator(z)

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from noise z (N, latent): what an export computes."""
        return (self.generate(z) + 1) / 2


class DCGAN(GANPair):
    def __init__(self, channels: int, height: int, width: int, latent: int = 100, base: int = 64):
        super().__init__()
        self.latent = latent
        self.generator = Generator(latent, channels, height, width, base)
        self.discriminator = Discriminator(channels, height, width, base)
        self.apply(dcgan_init)


@register_model("dcgan", "DCGAN generator + discriminator (task=gan): latent size, width")
def dcgan(info: DataInfo, latent: int = 100, width: int = 64) -> nn.Module:
    for key, value in (("latent", latent), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
    return DCGAN(info.channels, info.height, info.width, latent, width)
