"""What every model that makes images from a latent vector shares (task=vae's VAEs, task=gan's
generator-discriminator pairs): drawing new images from z ~ N(0, I)."""

from __future__ import annotations

import torch
from torch import nn


class LatentGenerator(nn.Module):
    """Subclasses set `latent` (the size of z) and define `pixels(z)` -> images in [0, 1]."""

    latent: int

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n new images in [0, 1] from z ~ N(0, I) (drawn on the CPU with `generator`)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent, generator=generator).to(device)
        return self.pixels(z)
