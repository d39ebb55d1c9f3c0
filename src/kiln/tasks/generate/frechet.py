"""The Fréchet distance between real and generated images, in the features of a Kiln classifier.

FID (Heusel et al., 2017) compares the mean and covariance of Inception-v3 features of real and
generated images. Kiln does the same in the penultimate layer (the input of the last linear layer)
of a classifier run trained on the same dataset (`gan.frechet_classifier: RUN_DIR`, or one Kiln
trains itself when that is unset: gan.py), so the number needs no download and fits 28x28 digits;
it is *not* FID and is not comparable with published FIDs or across classifiers, only between
runs scored by the same classifier. Lower is better; 0 means
the two feature distributions have the same mean and covariance.

    d^2 = |mu_r - mu_g|^2 + tr(C_r + C_g - 2 (C_r^1/2 C_g C_r^1/2)^1/2)

Statistics are summed batch by batch (`feature_sums`: the sum of features and of their outer
products), so a split of any size is scored in one pass and sums from batches simply add up.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kiln.errors import ConfigError, KilnError


def stats_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (the covariance is a difference of large sums)."""
    return torch.float32 if device.type == "mps" else torch.float64


def feature_sums(features: torch.Tensor) -> torch.Tensor:
    """(N, d) features -> one flat vector [sum over N (d), sum of outer products (d x d)]."""
    f = features.to(stats_dtype(features.device))
    return torch.cat([f.sum(dim=0), (f.T @ f).flatten()])


def mean_cov(sums: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (d,) and the unbiased covariance (d, d) of n samples from `feature_sums`."""
    d = int((-1 + (1 + 4 * len(sums)) ** 0.5) / 2)  # len = d + d^2
    total, outer = sums[:d].double().cpu(), sums[d:].double().cpu().view(d, d)
    mean = total / n
    cov = (outer - n * torch.outer(mean, mean)) / max(n - 1, 1)
    return mean, (cov + cov.T) / 2


def sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(
    mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """The squared Fréchet distance between N(mean1, cov1) and N(mean2, cov2). The trace of
    (cov1 cov2)^1/2 is the sum of the square roots of the eigenvalues of the symmetric
    cov1^1/2 cov2 cov1^1/2, which avoids the complex round-off of a general matrix square root."""
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    if not all(torch.isfinite(t).all() for t in (mean1, cov1, mean2, cov2)):
        return float("nan")  # a diverged generator: say so rather than fail in eigh
    root1 = sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross
    return max(float(value), 0.0)


def distance_from_sums(real: torch.Tensor, fake: torch.Tensor, n: int) -> float:
    """The Fréchet distance between n real and n generated samples' summed statistics."""
    return frechet_distance(*mean_cov(real, n), *mean_cov(fake, n))


class ClassifierFeatures(nn.Module):
    """Penultimate-layer features of a trained classifier for images in [0, 1] (N, C, H, W),
    normalized the way that classifier was trained. The features are what enters its last
    nn.Linear layer (captured with a forward pre-hook), so any Kiln classifier works."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], source: str):
        super().__init__()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(
                f"gan.frechet_classifier: the model of {source} has no linear layer whose input "
                "could serve as features; train a classifier such as model=convnet"
            )
        self.model = model.eval().requires_grad_(False)
        self.dim = linears[-1].in_features
        self.source = source
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self._captured: torch.Tensor | None = None
        linears[-1].register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._captured = inputs[0]

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.model((pixels.float() - self.mean) / self.std)
        features, self._captured = self._captured, None
        return features.flatten(1).float()


def load_classifier(
    run_dir: str | Path, shape: tuple[int, int, int], dataset: str, device
) -> ClassifierFeatures:
    """The feature extractor of classifier run `run_dir`, checked against the data it scores."""
    from kiln.rundir import RunDir, load_model

    key = "gan.frechet_classifier"
    if not Path(run_dir).is_dir():
        raise ConfigError(
            f"{key}: no classifier run at {run_dir}: the Fréchet distance is measured in the "
            f"features of a Kiln classifier trained on the same dataset. `kiln train` of a GAN "
            f"trains one first when {key} is not set; or train one, e.g.\n"
            f"  kiln train data={dataset} model=convnet epochs=2 name={dataset}-classifier\n"
            f"and pass {key}=runs/{dataset}-classifier"
        )
    try:
        run = RunDir.open(run_dir)
        cfg, info = run.load_config(), run.data_info()
        if cfg.task != "classify":
            raise ConfigError(f"{run_dir} is a task={cfg.task} run, not a classifier")
        if tuple(info.input_shape) != tuple(shape) or info.name != dataset:
            got = "x".join(map(str, info.input_shape))
            raise ConfigError(
                f"{run_dir} classifies {info.name} images of {got}, but this run generates "
                f"{dataset} images of {'x'.join(map(str, shape))}: use a classifier trained on "
                "the same dataset"
            )
        model, _ = load_model(run, "best", device)
    except KilnError as exc:
        raise ConfigError(f"{key}={run_dir}: {exc}") from None
    return ClassifierFeatures(model, info.mean, info.std, str(run_dir)).to(device)
