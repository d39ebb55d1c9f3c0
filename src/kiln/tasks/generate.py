"""What the generative tasks (task=vae, task=gan) share: pixels back from normalized batches, the
model check, fixed noise, and the report after training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kiln.errors import ConfigError

SAMPLES_PER_GRID = 64  # fixed-noise grids (TensorBoard, plots) and the report's sample grid


class Pixels:
    """Normalized batches back to pixels in [0, 1]: x * std + mean, the inverse of kiln's
    Normalize. The models read normalized inputs like any Kiln model; losses and samples are in
    pixel units, so data.normalize may be on or off."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.std + self.mean).clamp_(0.0, 1.0)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> what the model reads."""
        return (pixels - self.mean) / self.std


def require_model(cfg, task: str, model: str) -> None:
    """task=vae trains model=vae and task=gan model=dcgan (or a model passed in Python)."""
    if cfg.model.name not in (model, "custom"):
        raise ConfigError(
            f"task={task} trains model={model}, not model={cfg.model.name}: add model={model} "
            f"(options: `kiln list models`)"
        )
    if cfg.train.loss != "auto":
        raise ConfigError(f"train.loss={cfg.train.loss} is for task=regress, not task={task}")


def fixed_noise(latent: int, seed: int, n: int = SAMPLES_PER_GRID) -> torch.Tensor:
    """The same n latent vectors every epoch (drawn from their own generator, on the CPU), so
    grids show one set of samples changing as training goes on."""
    return torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))


class GenerativeTask:
    """What task=vae and task=gan share after training: their plots and report."""

    def after_fit(self, run, model, bundle, device) -> dict[str, str]:
        if not run.load_config().run.report:
            return {}
        return {"Report": str(self.report(run, model, bundle, device))}

    @staticmethod
    def report(run, model, bundle, device):
        """The plots, then RUN/report.html (what `kiln report RUN` calls)."""
        from kiln.evaluate.generate_report import make_generate_report

        return make_generate_report(run, model.eval(), bundle, device)


class EvalMode:
    """`with EvalMode(model):` evaluation mode inside, the previous mode restored after."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)
