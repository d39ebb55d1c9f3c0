"""A whitened, frozen first layer (`model.whiten=true` for FastNet), the CIFAR-10 speed runs' stem.

Its filters are the principal components of the training images' k x k patches, each divided by
the square root of its variance, plus their negatives: what comes out is the patches in
decorrelated, equal-variance directions (PCA whitening), with both signs kept so that the GELU
after it loses nothing. Nothing in it is learned but a bias per filter, so the network starts from
inputs it does not have to learn to decorrelate, and trains faster per epoch.

The filters come from the data, which a model builder does not see: the layer fits them on the
first batch it is trained on (a few hundred images give hundreds of thousands of patches, plenty
for a 12 x 12 covariance) and keeps them, with a flag saying so, in its state dict, so that
checkpoints, resumed runs and exports carry them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 5e-4  # added to each component's variance: the faintest directions are not blown up


class PatchWhitening(nn.Module):
    """A k x k convolution with 2 x channels x k x k fixed filters (see the module docstring)."""

    def __init__(self, in_channels: int, kernel_size: int = 2, eps: float = EPS):
        super().__init__()
        n = in_channels * kernel_size**2
        self.kernel_size, self.eps = kernel_size, eps
        self.out_channels = 2 * n
        self.register_buffer("weight", torch.zeros(2 * n, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(2 * n))
        self.register_buffer("fitted", torch.tensor(False))
        self._known_fitted = False  # saves reading the flag (a device sync) on every step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self._known_fitted:
            if not bool(self.fitted):
                self.fit(x)
            self._known_fitted = True
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """The filters from a batch of (normalized) images."""
        k, channels = self.kernel_size, x.shape[1]
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H', W', k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * k * k)
        covariance = patches.T @ patches / len(patches)
        variances, components = torch.linalg.eigh(covariance)  # components are the columns
        filters = components.T / (variances.clamp_min(0) + self.eps).sqrt()[:, None]
        filters = filters.reshape(-1, channels, k, k)
        self.weight.copy_(torch.cat([filters, -filters]))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.weight, src=0)  # every process: rank 0's filters
        self.fitted.fill_(True)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_fitted = False  # read the loaded flag again on the next training step
