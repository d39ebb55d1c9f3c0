"""Regression: predict one or several numbers per image (CSV columns named by data.targets).

The model's outputs are the targets standardized with the training split's mean and std (kept
in info.json), so a target in degrees and one in millimetres weigh the same in the loss;
metrics are reported in the targets' own units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.errors import ConfigError
from kiln.models.tta import infer
from kiln.tasks.base import StepContext, Task
from kiln.tasks.registry import register_task

LOSSES = {"mse": nn.MSELoss, "l1": nn.L1Loss, "huber": nn.HuberLoss}


@register_task("regress", "numbers per image (data.targets): MSE/L1/Huber loss, RMSE, MAE, R2")
class RegressTask(Task):
    metric = "rmse"
    higher_is_better = False

    def __init__(self, loss: str, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean.view(1, -1), std.view(1, -1)
        self.criterion = LOSSES[loss]()
        self.criterion_sum = LOSSES[loss](reduction="none")

    @classmethod
    def build(cls, cfg, data, device) -> RegressTask:
        info = data.info
        if info.target_mean is None or not data.train.labels.is_floating_point():
            raise ConfigError(
                "task=regress needs numeric targets: data.name=csv with data.csv=FILE and "
                "data.targets=[COLUMN, ...] naming the number columns"
            )
        loss = "mse" if cfg.train.loss == "auto" else cfg.train.loss
        mean = torch.tensor(info.target_mean, device=device)
        std = torch.tensor(info.target_std, device=device)
        return cls(loss, mean, std)

    def standardize(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets - self.mean) / self.std

    def unstandardize(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs * self.std + self.mean

    def train_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(outputs, self.standardize(targets))

    def eval_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion_sum(outputs, self.standardize(targets)).mean(dim=1).sum()

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of each sample's mean squared error, in the targets' units."""
        return ((self.unstandardize(outputs.float()) - targets) ** 2).mean(dim=1).sum()

    def finish(self, mean_squared_error: float) -> float:
        return mean_squared_error**0.5

    # Evaluation and report --------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, ctx: StepContext, loader, info) -> dict[str, Any]:
        """RMSE, MAE and R2 over all targets and per target, in the targets' units."""
        outputs, targets = collect_outputs(ctx.net, loader, ctx.tta)
        return regression_metrics(in_units(outputs, info), targets.float(), info.classes)

    @classmethod
    def headline(cls, result: dict[str, Any]) -> str:
        return f"rmse {result['rmse']:.4g}, r2 {result['r2']:.4f}" if "rmse" in result else ""

    @classmethod
    def print_eval(cls, result: dict[str, Any], console) -> None:
        from kiln.tasks.regress.report import print_eval

        print_eval(result, console)

    def after_fit(self, run, model, bundle, device) -> dict[str, str]:
        """Curves, predicted-vs-true and residual plots, and the report (run.report)."""
        if run.load_config().run.report:
            return {"Report": str(self.report(run, model, bundle, device))}
        from kiln.tasks.regress.report import write_plots

        return {"Plots": ", ".join(str(p) for p in write_plots(run, model, bundle, device))}

    def report(self, run, model, bundle, device, checkpoint: str = "best") -> Path:
        from kiln.tasks.regress.report import write_report

        return write_report(run, model, bundle, device, checkpoint)

    # Prediction and export --------------------------------------------------------------------
    @staticmethod
    def predictions(outputs: torch.Tensor, info, top_k: int = 5) -> list[dict]:
        """Each target's value, in its units."""
        values = in_units(outputs.float(), info).tolist()
        return [
            {"values": {name: round(v, 6) for name, v in zip(info.classes, row, strict=True)}}
            for row in values
        ]

    @classmethod
    def show_answer(cls, answer: dict[str, Any]) -> str:
        shown = "  ".join(f"{name} {value:.4g}" for name, value in answer["values"].items())
        shown = f"line {answer['line']}: {shown}" if "line" in answer else shown
        return f"{answer.get('file', '-')}: {shown}"

    @classmethod
    def export_spec(cls, cfg, info) -> dict[str, Any]:
        return {"output": {"name": "standardized_targets", "shape": ["batch", len(info.classes)],
                           "to_units": "output * target_std + target_mean"}}  # fmt: skip


@torch.inference_mode()
def collect_outputs(model: nn.Module, loader, tta: str = "none"):
    """(outputs, targets) over a loader, on the CPU."""
    model.eval()
    outs, targets = [], []
    for x, y in loader:
        outs.append(infer(model, x, tta).float().cpu())
        targets.append(y.cpu())
    return torch.cat(outs), torch.cat(targets)


def in_units(outputs: torch.Tensor, info) -> torch.Tensor:
    """The model's standardized outputs in the targets' own units (info.json's mean and std)."""
    return outputs.float() * torch.tensor(info.target_std) + torch.tensor(info.target_mean)


def regression_metrics(pred: torch.Tensor, true: torch.Tensor, names: list[str]) -> dict:
    err = pred - true
    total = ((true - true.mean(dim=0)) ** 2).sum(dim=0)
    r2 = 1 - (err**2).sum(dim=0) / total.clamp_min(1e-12)
    per_target = [
        {
            "target": name,
            "rmse": err[:, i].pow(2).mean().sqrt().item(),
            "mae": err[:, i].abs().mean().item(),
            "r2": r2[i].item(),
        }
        for i, name in enumerate(names)
    ]
    return {
        "samples": len(true),
        "rmse": err.pow(2).mean().sqrt().item(),
        "mae": err.abs().mean().item(),
        "r2": r2.mean().item(),
        "per_target": per_target,
    }
