"""What the generative tasks (task=vae, task=gan) share: pixels back from normalized batches, the
model check, fixed noise, sampling, export (z in, images out) and the report after training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.errors import ConfigError, KilnError
from kiln.tasks.base import Task

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


def fixed_noise(latent: int, seed: int, n: int = SAMPLES_PER_GRID) -> torch.Tensor:
    """The same n latent vectors every epoch (drawn from their own generator, on the CPU), so
    grids show one set of samples changing as training goes on."""
    return torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))


def users_model(name: str) -> bool:
    """A model registered from the user's own module (`imports:`), e.g. a tutorial's VAE class:
    trusted to be the generator it is named for; Kiln's zoo classifiers are refused."""
    from kiln.models.registry import MODELS

    entry = MODELS.get(name)
    return entry is not None and not entry.builder.__module__.startswith("kiln.")


class GenerativeTask(Task):
    """What task=vae and task=gan share: the model they train, noise in, images out, and their
    plots and report. `models` are the models the task trains (`models[0]` the default)."""

    generates = True
    CURVES: tuple = ()  # (panel title, [logged keys]) of curves.png
    TEST_KEYS: tuple[str, ...] = ()  # kiln eval's and the report's numbers, in order

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.model.name not in (*cls.models, "custom") and not users_model(cfg.model.name):
            made = " or ".join(f"model={m}" for m in cls.models)
            raise ConfigError(
                f"task={cls.name} trains {made}, not model={cfg.model.name}: add "
                f"model={cls.models[0]} (options: `kiln list models`)"
            )
        if cfg.train.loss != "auto":
            raise ConfigError(
                f"train.loss={cfg.train.loss} is for task=regress, not task={cls.name}"
            )
        super().check_config(cfg)

    # Prediction and export --------------------------------------------------------------------
    @classmethod
    def sample(cls, forward, n: int, seed: int, latent: int | None) -> torch.Tensor:
        """n images from the same draws as `kiln sample --seed SEED` (z ~ N(0, I))."""
        from kiln.evaluate.images import to_uint8

        return to_uint8(forward(fixed_noise(latent, seed, n)))

    @classmethod
    def read_input(cls, item, info) -> torch.Tensor:
        raise KilnError(
            f"this run generates images (task={cls.name}): it answers no images; draw new ones "
            "with `kiln sample RUN` (or GET /sample from kiln serve)"
        )

    @classmethod
    def export_module(cls, model: nn.Module, tta: str) -> nn.Module:
        return Generates(model)

    @classmethod
    def export_inputs(cls, run, n: int, spec) -> tuple[torch.Tensor, Any, str]:
        """n latent vectors z ~ N(0, I), seed 0: what `kiln sample --seed 0` decodes."""
        return fixed_noise(spec.latent, 0, n), None, "latent vectors z ~ N(0, I), seed 0"

    @classmethod
    def calibration_inputs(cls, run, n: int, spec) -> tuple[torch.Tensor, str]:
        """Latent vectors drawn as sampling draws them (seed 1: not the parity check's)."""
        return fixed_noise(spec.latent, 1, n), "latent vectors z ~ N(0, I), seed 1"

    @classmethod
    def export_spec(cls, cfg, info) -> dict[str, Any]:
        return {"latent": cfg.model.kwargs().get("latent"),
                "output": {"name": "images", "shape": ["batch", *info.input_shape],
                           "range": [0, 1]}}  # fmt: skip

    # Evaluation and report --------------------------------------------------------------------
    @classmethod
    def print_eval(cls, result: dict[str, Any], console) -> None:
        from kiln.tasks.generate.report import print_eval

        print_eval(cls, result, console)

    def report(self, run, model, bundle, device, checkpoint: str = "best") -> Path:
        """The plots, then RUN/report.html (what `kiln report RUN` calls)."""
        from kiln.tasks.generate.report import make_generate_report

        return make_generate_report(self, run, model.eval(), bundle, device, checkpoint)

    def extra_plots(self, run, model, bundle, device, out: Path) -> dict[str, Path]:
        """Plots of this task's own, beside curves and samples ({name: path})."""
        return {}

    def report_parts(self, run, plots: dict[str, Path]) -> dict[str, Any]:
        """The task's pieces of the report: overview rows, training figures, sections."""
        return {"overview": [], "training": [], "sections": [], "test_note": ""}


class Generates(nn.Module):
    """The part of a VAE or GAN that makes images: z (N, latent) -> pixels in [0, 1]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.pixels(z)


class EvalMode:
    """`with EvalMode(model):` evaluation mode inside, the previous mode restored after."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        return self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)
