"""Small helpers the tasks share: evaluation files and titles, the export's model wrapper and
its validation inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from kiln.errors import ConfigError, KilnError, RunError
from kiln.models.tta import infer

if TYPE_CHECKING:
    from kiln.rundir import RunDir


class WithTTA(nn.Module):
    """The model plus its test-time augmentation, as one graph that calls the model once."""

    def __init__(self, model: nn.Module, tta: str):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return infer(self.model, x, self.tta, one_pass=True)


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) between class scores (dim 1) softened by the temperature, averaged
    over everything else (images, and pixels for masks), times T squared so that its gradients
    keep their size whatever T is (Hinton, Vinyals and Dean, 2015)."""
    t = temperature
    log_student = F.log_softmax(student.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher.float() / t, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
    return kl.mean() * t * t


def distilled(student, teacher, loss, distill) -> torch.Tensor:
    """(1 - alpha) x the labels' loss + alpha x the softened KL to the teacher."""
    if teacher.shape != student.shape:
        raise ConfigError(
            f"distill.teacher gives outputs of shape {tuple(teacher.shape)} and the model "
            f"{tuple(student.shape)}: a teacher must score the same classes at the same places"
        )
    return (1 - distill.alpha) * loss + distill.alpha * soft_kl(
        student, teacher, distill.temperature
    )


def check_same_outputs(name: str, teacher_cfg, teacher_info, info, where: str) -> None:
    """A teacher of the same task, whose inputs and classes are the data's."""
    if teacher_cfg.task != name:
        raise ConfigError(
            f"distill.teacher={where} is a task={teacher_cfg.task} run: a task={name} model "
            f"learns only from a task={name} teacher"
        )
    if info is None:
        return
    if list(teacher_info.classes) != list(info.classes):
        theirs, ours = ", ".join(teacher_info.classes), ", ".join(info.classes)
        raise ConfigError(
            f"distill.teacher={where} predicts other classes ({_short(theirs)}) than this "
            f"run's data ({_short(ours)}): choose a teacher trained on the same classes"
        )
    if tuple(teacher_info.input_shape) != tuple(info.input_shape):
        raise ConfigError(
            f"distill.teacher={where} takes inputs of shape {tuple(teacher_info.input_shape)}, "
            f"this run's data are {tuple(info.input_shape)}: choose a teacher trained on the same "
            "image size and channels"
        )


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def training_inputs(run: RunDir, n: int, spec) -> tuple[torch.Tensor, str]:
    """n training images drawn at random (seed 0), normalized as the run trained: what a static
    int8 export is calibrated on. The run's data must be there: calibrating on noise would set
    the int8 ranges wrong."""
    from kiln import data as kdata

    cfg = run.load_config()
    try:
        train = kdata.build(cfg.data).train
    except KilnError as exc:
        first = str(exc).splitlines()[0]
        raise RunError(f"calibration needs the run's training images: {first}") from None
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    part = train.take(pick.sort().values)
    images = normalized(part.head(len(part)), spec.input.mean, spec.input.std)
    return images, f"training images of {cfg.data.name}"


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


class ClassScores:
    """Export hooks of a task whose outputs are scores per class along dim 1 (classify, and
    segment per pixel): an export with its preprocessing answers softmax probabilities, and
    exports agree when they pick the same class."""

    @classmethod
    def export_head(cls) -> tuple[nn.Module, str]:
        return nn.Softmax(dim=1), "probabilities"

    @classmethod
    def from_export_head(cls, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.clamp_min(1e-30).log()  # softmax(log p) = p

    @classmethod
    def agreement(cls, reference: torch.Tensor, exported: torch.Tensor) -> float:
        return (exported.argmax(1) == reference.argmax(1)).float().mean().item()
