"""Plot helpers every task uses: metrics.csv read back, the best epoch, the training curves
(loss, the task's metric, the learning rate) and an atomic PNG writer. Figures are plain `Figure`
objects: no pyplot global state."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kiln.errors import RunError
from kiln.io import atomic_open
from kiln.rundir import RunDir

DPI = 100


def read_metrics(run: RunDir) -> list[dict[str, float]]:
    """metrics.csv as numbers, one dict per epoch; empty when no epoch finished."""
    if not run.metrics_path.is_file():
        return []
    try:
        with run.metrics_path.open(newline="") as f:
            return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
    except (ValueError, csv.Error) as exc:
        raise RunError(f"{run.metrics_path} is damaged ({exc}); train the run again") from None


def best_row(rows: list[dict[str, float]], monitor: str, mode: str) -> dict[str, float] | None:
    """The epoch best.pt was saved at: the first best value of the monitored metric."""
    rows = [r for r in rows if monitor in r]
    if not rows:
        return None
    pick = min if mode == "min" else max
    return pick(rows, key=lambda r: r[monitor])


def write_curves(
    run: RunDir, metric: str, title: str | None = None, percent: bool = False
) -> dict[str, Path]:
    """RUN/plots/curves.png from metrics.csv: loss, the task's metric (panel `title`, shown as
    a percentage when `percent`) and the learning rate."""
    out = run.path / "plots"
    out.mkdir(exist_ok=True)
    rows = read_metrics(run)
    if not rows:
        return {}
    best = best_row(rows, *run.monitored())
    figure = curves_figure(rows, best, metric, title, percent)
    return {"curves": save(figure, out / "curves.png")}


def save(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write through a temporary file, so a reader never sees half a PNG."""
    literal_text(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format="png")
    return path


# Training curves ----------------------------------------------------------------------------------
def plot_splits(
    ax: Axes, rows: list[dict[str, float]], key: str, named: bool = False, markersize: int = 3
) -> None:
    """train_<key> and val_<key> per epoch (each where every row has it), labelled by split
    (`named`: "train <key>", for panels with several keys)."""
    epochs = [r["epoch"] for r in rows]
    for split, style in (("train", "-o"), ("val", "-s")):
        column = f"{split}_{key}"
        if all(column in r for r in rows):
            label = f"{split} {key}" if named else split
            values = [r[column] for r in rows]
            ax.plot(epochs, values, style, markersize=markersize, label=label)


def literal_text(fig) -> None:
    """Show every label as written: class names such as '$5' or 'x_1' are not math to parse
    (matplotlib would fail on an unbalanced '$')."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)


def curves_figure(
    rows: list[dict[str, float]],
    best: dict[str, float] | None,
    metric: str,
    title: str | None = None,
    percent: bool = False,
) -> Figure:
    """Loss, the task's metric and the learning rate per epoch."""
    # fixed margins: the labels here are Kiln's own, so constrained layout's measuring of every
    # text (a tenth of a second, a tenth of the report) buys nothing
    fig = Figure(figsize=(13, 3.6))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.9, wspace=0.22)
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    epochs = [r["epoch"] for r in rows]
    named = title or metric
    for ax, name, heading in ((loss_ax, "loss", "loss"), (acc_ax, metric, named)):
        plot_splits(ax, rows, name)
        ax.set_title(heading)
    if all("lr" in r for r in rows):
        lr_ax.plot(epochs, [r["lr"] for r in rows], "-o", markersize=3, color="tab:green")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_ax.set_title("learning rate (end of epoch)")
    if best is not None:
        epoch = best["epoch"]
        for ax in (loss_ax, acc_ax, lr_ax):
            ax.axvline(epoch, color="gray", linestyle="--", linewidth=1)
        shown = "{:.2%}" if percent else "{:.4g}"
        for ax, key, fmt in ((loss_ax, "val_loss", "{:.4f}"), (acc_ax, f"val_{metric}", shown)):
            if key in best:
                label = f"best: epoch {epoch:.0f}, val {fmt.format(best[key])}"
                ax.plot([epoch], [best[key]], "*", color="tab:red", markersize=12, label=label)
    if percent:  # decimals follow the axis' range: no two ticks read the same
        from matplotlib.ticker import PercentFormatter

        acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    for ax in (loss_ax, acc_ax):
        if ax.lines:
            ax.legend(fontsize=8)
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(epochs) <= 15:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    return fig
