"""The Keras tutorials' dense GAN: fully connected generator and discriminator for small images.

Generator: noise (latent, 100) -> 256 -> 512 -> 1024 -> the image's pixels (28 x 28 = 784 for
MNIST), LeakyReLU(0.2) then BatchNorm (Keras' momentum 0.8, PyTorch's 0.2) after each hidden layer
and tanh at the end (images in [-1, 1]); `batchnorm=False` leaves the BatchNorm out.
Discriminator: the pixels -> 512 -> 256 -> 1 logit, LeakyReLU(0.2) between the layers (the
tutorial's final sigmoid is inside task=gan's BCEWithLogits loss).

It has the same parts as model=dcgan (models/gan.py), so task=gan trains it the same way: one
module holding `.generator` and `.discriminator`, `.latent`, `generate(z)` (images in [-1, 1]),
`pixels(z)` (in [0, 1]) and `sample(n)`; `forward` scores images like any Kiln model.
"""

from __future__ import annotations

from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.gan import GANPair
from kiln.models.registry import register_model

SLOPE = 0.2  # LeakyReLU's negative slope, as in the tutorial


def dense_stack(sizes: list[int], batchnorm: bool = False) -> list[nn.Module]:
    """Linear layers through `sizes`, LeakyReLU(0.2) (and BatchNorm) after each but the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(SLOPE))
            if batchnorm:  # Keras' BatchNormalization(momentum=0.8): eps 1e-3
                layers.append(nn.BatchNorm1d(n_out, eps=1e-3, momentum=0.2))
    return layers


class DenseGAN(GANPair):
    def __init__(self, shape: tuple[int, int, int], latent: int = 100,
                 generator: tuple[int, ...] = (256, 512, 1024),
                 discriminator: tuple[int, ...] = (512, 256), batchnorm: bool = True):  # fmt: skip
        super().__init__()
        self.latent, self.shape = latent, tuple(shape)
        pixels = shape[0] * shape[1] * shape[2]
        self.generator = nn.Sequential(
            *dense_stack([latent, *generator, pixels], batchnorm),
            nn.Tanh(),
            nn.Unflatten(1, self.shape),
        )
        self.discriminator = nn.Sequential(
            nn.Flatten(), *dense_stack([pixels, *discriminator, 1]), nn.Flatten(0)
        )


@register_model("densegan", "the Keras tutorial's dense GAN (task=gan): 100-256-512-1024-pixels")
def densegan(
    info: DataInfo,
    latent: int = 100,
    generator: list[int] = (256, 512, 1024),
    discriminator: list[int] = (512, 256),
    batchnorm: bool = True,
) -> nn.Module:
    sizes = {"latent": [latent], "generator": list(generator),
             "discriminator": list(discriminator)}  # fmt: skip
    for key, values in sizes.items():
        if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1
                             for v in values):  # fmt: skip
            raise ValueError(f"model.{key} must be positive integers, got {values!r}")
    return DenseGAN(info.input_shape, latent, tuple(generator), tuple(discriminator), batchnorm)
