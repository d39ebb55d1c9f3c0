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
from kiln.tasks.registry import register_task

LOSSES = {"mse": nn.MSELoss, "l1": nn.L1Loss, "huber": nn.HuberLoss}


@register_task("regress", "numbers per image (data.targets): MSE/L1/Huber loss, RMSE, MAE, R2")
class RegressTask:
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

    @staticmethod
    def finish(mean_squared_error: float) -> float:
        return mean_squared_error**0.5

    @staticmethod
    def predictions(outputs: torch.Tensor, info, top_k: int = 5) -> list[dict]:
        """What `kiln predict` and `kiln serve` answer: each target's value, in its units."""
        values = in_units(outputs.float(), info).tolist()
        return [
            {"values": {name: round(v, 6) for name, v in zip(info.classes, row, strict=True)}}
            for row in values
        ]

    @staticmethod
    def after_fit(run, model, bundle, device) -> dict[str, str]:
        """Curves, predicted-vs-true and residual plots, and the report (run.report)."""
        if run.load_config().run.report:
            return {"Report": str(RegressTask.report(run, model, bundle, device))}
        return {"Plots": ", ".join(str(p) for p in RegressTask.plots(run, model, bundle, device))}

    @staticmethod
    def plots(run, model, bundle, device) -> list[Path]:
        from kiln.evaluate import write_regress_plots
        from kiln.evaluate.plots import write_curves

        return [*write_curves(run).values(), *write_regress_plots(run, model, bundle, device)]

    @staticmethod
    def report(run, model, bundle, device) -> Path:
        """The plots, then RUN/report.html (what `kiln report` calls for a regression run)."""
        from kiln.evaluate.report import write_report

        RegressTask.plots(run, model, bundle, device)
        return write_report(run.path, model=model)

    @staticmethod
    def evaluate(outputs: torch.Tensor, targets: torch.Tensor, info) -> dict[str, Any]:
        """RMSE, MAE and R2 over all targets and per target, in the targets' units."""
        return regression_metrics(in_units(outputs, info), targets.float(), info.classes)


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


def write_plots(pred: torch.Tensor, true: torch.Tensor, names: list[str], folder: Path) -> list:
    """plots/predicted_vs_true.png and plots/residuals.png, one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    n = len(names)
    for kind in ("predicted_vs_true", "residuals"):
        fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
        for i, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
            t, p = true[:, i].numpy(), pred[:, i].numpy()
            if kind == "predicted_vs_true":
                lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
                ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="perfect")
                ax.scatter(t, p, s=4, alpha=0.4)
                ax.set(xlabel=f"true {name}", ylabel=f"predicted {name}")
            else:
                ax.axhline(0, color="grey", lw=1)
                ax.scatter(t, p - t, s=4, alpha=0.4)
                ax.set(xlabel=f"true {name}", ylabel="predicted - true")
            ax.set_title(name)
        fig.tight_layout()
        path = folder / f"{kind}.png"
        from kiln.evaluate.plots import literal_text

        literal_text(fig)  # target names are text, not math
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
