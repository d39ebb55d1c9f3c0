"""What a regression run shows: predicted-vs-true and residual plots, its report (RMSE, MAE and
R2 overall and per target, in the targets' units) and `kiln eval`'s table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kiln.data import Normalize, make_loader
from kiln.evaluate.plots import literal_text, write_curves
from kiln.evaluate.report import no_test_section, section_intro, table, write_run_report
from kiln.tasks.common import read_eval
from kiln.tasks.regress.task import collect_outputs, in_units

TRAINING = [("curves", "Loss, rmse and learning rate per epoch; the dashed line marks the best "
                       "epoch.")]  # fmt: skip
FIGURES = (
    ("predicted_vs_true", "Predicted against true value on the test split, one panel per target;"
     " the diagonal is a perfect answer."),
    ("residuals", "Residual (predicted - true) against the predicted value on the test split."),
)  # fmt: skip


def write_plots(run, model, bundle, device) -> list[Path]:
    """plots/curves.png, predicted_vs_true.png and residuals.png (the test split)."""
    info = run.data_info()
    normalize = Normalize(info.mean, info.std, device)
    loader = make_loader(bundle.test, run.load_config().data.eval_batch_size, normalize, device)
    outputs, targets = collect_outputs(model.to(device), loader)
    written = draw(in_units(outputs, info), targets.float(), info.classes, run.path / "plots")
    return [*write_curves(run, "rmse").values(), *written]


def write_report(run, model, bundle, device, checkpoint: str = "best") -> Path:
    from kiln.evaluate.report import figure

    paths = write_plots(run, model, bundle, device)
    plots = {p.stem: p for p in paths}
    test = read_eval(run)
    overview = []
    if test is not None and "rmse" in test:
        overview.append(("Test RMSE, R2", f"{test['rmse']:.4g}, {test['r2']:.4f} "
                         f"({test['samples']:,} samples)"))  # fmt: skip
    figures = "".join(figure(plots.get(name), caption) for name, caption in FIGURES)
    return write_run_report(
        run, model, plots, test_section=test_section(test), checkpoint=checkpoint,
        overview=overview, training=TRAINING, sections=["<h2>Test predictions</h2>", figures],
    )  # fmt: skip


def test_section(test: dict[str, Any] | None) -> str:
    """RMSE, MAE and R2 overall and per target, in the targets' units."""
    if test is None:
        return no_test_section()
    what = f"{test['samples']:,} test samples"
    intro = section_intro(test, what, "; errors in the targets' own units")
    overall = table(["metric", "value"], ([k, f"{test[k]:.4g}"] for k in ("rmse", "mae", "r2")))
    per_target = table(
        ["target", "RMSE", "MAE", "R2"],
        ([t["target"], f"{t['rmse']:.4g}", f"{t['mae']:.4g}", f"{t['r2']:.4f}"]
         for t in test.get("per_target", [])),
    )  # fmt: skip
    return f"<h2>Test</h2>\n{intro}\n{overall}\n<h3>Per target</h3>\n{per_target}"


def print_eval(result: dict, console) -> None:
    from rich.table import Table

    from kiln.tasks.common import eval_title

    console.print(eval_title(result, "samples"))
    table = Table("target", "rmse", "mae", "r2")
    for row in [{"target": "all", **result}, *result["per_target"]]:
        table.add_row(row["target"], f"{row['rmse']:.4f}", f"{row['mae']:.4f}", f"{row['r2']:.4f}")
    console.print(table)


def draw(pred: torch.Tensor, true: torch.Tensor, names: list[str], folder: Path) -> list:
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
        literal_text(fig)  # target names are text, not math
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
