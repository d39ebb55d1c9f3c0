"""Small helpers the tasks share: evaluation files and titles, the export's model wrapper and
its validation inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kiln.errors import KilnError, RunError
from kiln.models.tta import infer

if TYPE_CHECKING:
    from kiln.rundir import RunDir


class WithTTA(nn.Module):
    """The model plus its test-time augmentation, as one graph."""

    def __init__(self, model: nn.Module, tta: str):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return infer(self.model, x, self.tta)


def is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def eval_title(result: dict[str, Any], unit: str) -> str:
    return (
        f"[bold]{result['run']}[/] {result['split']} split, {result['checkpoint']} checkpoint "
        f"(epoch {result['epoch']}), {result['samples']:,} {unit}"
    )


def eval_file(result: dict[str, Any]) -> Path:
    return Path(result["run"]) / f"eval-{result['split']}.json"


def read_eval(run: RunDir, split: str = "test") -> dict[str, Any] | None:
    """RUN/eval-<split>.json, or None when the run has not been evaluated."""
    path = run.path / f"eval-{split}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(
            f"{path} is damaged ({exc}); rewrite it with `kiln eval {run.path}`"
        ) from None


def normalized(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 images (N, C, ...) -> the model's input, per channel."""
    shape = (-1,) + (1,) * (images.dim() - 2)
    m, s = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)
    return (images.float() / 255.0 - m) / s


def validation_inputs(run: RunDir, n: int, spec) -> tuple[torch.Tensor, Any, str]:
    """The first n validation images of the run's data, normalized, with their labels; random
    pixels when the data is gone (an export can still be checked against the eager model)."""
    from kiln import data as kdata

    cfg = run.load_config()
    mean, std = spec.input.mean, spec.input.std
    try:
        bundle = kdata.build(cfg.data)
    except KilnError as exc:
        first = str(exc).splitlines()[0]
        shape = (n, *run.data_info().input_shape)
        images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0))
        source = f"random images (the run's data is unavailable: {first})"
        return normalized(images.to(torch.uint8), mean, std), None, source
    val, what = (bundle.val, "validation") if len(bundle.val) else (bundle.test, "test")
    part = val.take(torch.arange(min(n, len(val))))  # no validation split: test images
    source = f"{what} images of {cfg.data.name}"
    return normalized(part.head(len(part)), mean, std), part.labels.clone(), source
