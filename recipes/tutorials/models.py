"""The tutorials' own model classes, as they wrote them, registered for the recipes beside this
file (`imports: [recipes.tutorials.models]`: run `kiln train` from the repository's root).

Kiln trains them unchanged: `MnistExampleNet` keeps its `x.view(-1, 320)` (Kiln sees that it
fails on channels-last inputs and trains it in the default layout, saying so in one line) and
its `log_softmax` output (Kiln trains it on the NLL, as the example's `F.nll_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kiln.models


class MnistExampleNet(nn.Module):
    """pytorch/examples mnist/main.py as it stood for years (2017-2019): two 5x5 convolutions,
    Dropout2d, 320-50-10, log_softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class ExampleVAE(nn.Module):
    """pytorch/examples vae/main.py: 784-400-20 (mean and log-variance), 20-400-784. The example
    returns sigmoid(fc4(...)) and takes the BCE of it; Kiln's task=vae takes the pixel logits
    (the same loss, computed stably), and asks for `encode`, `decode`, `pixels` and `sample`."""

    def __init__(self, latent: int = 20):
        super().__init__()
        self.latent = latent
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, latent)
        self.fc22 = nn.Linear(400, latent)
        self.fc3 = nn.Linear(latent, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return self.fc4(h3).view(-1, 1, 28, 28)  # logits; the example applies sigmoid here

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar

    def pixels(self, z):
        return self.decode(z).sigmoid()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None):
        device = next(self.parameters()).device
        return self.pixels(torch.randn(n, self.latent, generator=generator).to(device))


@kiln.models.register("tutorial-mnist-net", "pytorch/examples' MNIST Net (log_softmax)")
def tutorial_mnist_net(info) -> nn.Module:
    if info.input_shape != (1, 28, 28) or info.num_classes != 10:
        raise ValueError(f"the example's Net takes 1x28x28 digits; got {info.input_shape}")
    return MnistExampleNet()


@kiln.models.register("tutorial-vae", "pytorch/examples' VAE: 784-400-20-400-784 (task=vae)")
def tutorial_vae(info, latent: int = 20) -> nn.Module:
    if info.input_shape != (1, 28, 28):
        raise ValueError(f"the example's VAE takes 1x28x28 images; got {info.input_shape}")
    return ExampleVAE(latent)
