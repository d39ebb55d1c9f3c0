"""Plots of a finished classification run, written to RUN/plots/ for people and for the report:
the confusion matrix, per-class scores, sample predictions and the highest-loss mistakes, all on
the test split, next to its numbers.

At the end of training they are drawn from the outputs the test evaluation has just computed (no
second pass over the split); `kiln report` predicts the test split once, capped at MAX_SAMPLES
images so that a huge split cannot stall it. Images are drawn from the split's own uint8 pixels,
not the normalized tensors the model saw; the image grids with Pillow (kiln/evaluate/grid.py),
the charts with matplotlib, imported only here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kiln import data as kdata
from kiln.evaluate.grid import Cell, save_grid
from kiln.evaluate.plots import save, write_curves
from kiln.rundir import RunDir
from kiln.tasks.classify.metrics import class_scores, confusion_counts
from kiln.tasks.classify.predictions import Predictions, predict_split

GRID_ROWS, GRID_COLS = 4, 8  # samples.png and mistakes.png
CELL_TEXT_LIMIT = 20  # confusion matrices with more classes get no numbers in the cells
PLOTS = ("curves", "confusion", "per_class", "samples", "mistakes", "explained")


def write_plots(
    run_dir: str | Path,
    model: torch.nn.Module | None = None,
    bundle: kdata.DataBundle | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str = "best",
    predictions: Predictions | None = None,
) -> dict[str, Path]:
    """Write RUN/plots/*.png: the curves, and the figures of the model's answers on the test
    split (`predictions`, else predicted here)."""
    run = RunDir.open(run_dir)
    cfg, info = run.load_config(), run.data_info()
    out = run.path / "plots"
    written = write_curves(run, "acc", "accuracy", percent=True)
    split = bundle.test
    if len(split) == 0:
        return written
    if predictions is None:
        from kiln.data.workers import default_workers

        workers = default_workers(cfg.data.workers)
        predictions = predict_split(model, split, info, device, cfg.data.eval_batch_size,
                                    workers, cfg.model.tta)  # fmt: skip
    counts = confusion_counts(predictions.preds, predictions.labels, info.num_classes)
    classes = info.classes
    written["confusion"] = save(confusion_figure(counts, classes), out / "confusion.png")
    written["per_class"] = save(per_class_figure(counts, classes), out / "per_class.png")
    written["samples"] = samples_grid(predictions, split, classes, out / "samples.png")
    written["mistakes"] = mistakes_grid(predictions, split, classes, out / "mistakes.png")
    if model is not None:
        from kiln.tasks.classify.explained import explained_grid

        explained = explained_grid(model, predictions, split, info, device, out / "explained.png")
        if explained is not None:
            written["explained"] = explained
    return written


# Confusion and per-class scores ----------------------------------------------------------------
def label_classes(ax: Axes, classes: list[str], y: bool = False) -> None:
    """Class names on the x axis (and y), slanted only when they would not fit upright."""
    k = len(classes)
    size = max(3.0, min(9.0, 300 / max(k, 1)))
    slant = k * max(map(len, classes), default=0) > 40
    ax.set_xticks(range(k), labels=classes, fontsize=size, rotation=45 if slant else 0,
                  ha="right" if slant else "center")  # fmt: skip
    if y:
        ax.set_yticks(range(k), labels=classes, fontsize=size)


def confusion_figure(counts: torch.Tensor, classes: list[str]) -> Figure:
    k = len(classes)
    side = min(max(4.5, 0.45 * k + 2.5), 24)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    norm = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    image = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    label_classes(ax, classes, y=True)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix, test split ({int(counts.sum()):,} images)")
    if k <= CELL_TEXT_LIMIT:  # inside their cells: the layout need not measure them
        for i in range(k):
            for j in range(k):
                value = float(norm[i, j])
                color = "white" if value > 0.5 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=color, fontsize=7,
                        in_layout=False)  # fmt: skip
    return fig


def per_class_figure(counts: torch.Tensor, classes: list[str]) -> Figure:
    k = len(classes)
    fig = Figure(figsize=(min(max(6.0, 0.6 * k + 2), 30), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.27
    for n, (name, values) in enumerate(class_scores(counts).items()):
        ax.bar([i + (n - 1) * width for i in range(k)], values.numpy(), width, label=name)
    label_classes(ax, classes)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("score")
    ax.set_title("Per-class precision, recall and F1, test split")
    ax.legend(loc="upper right", ncols=3, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


# Image grids ---------------------------------------------------------------------------------
def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def samples_grid(pred: Predictions, split, classes: list[str], path: Path) -> Path:
    """The first images with the predicted class and its probability; wrong ones in red."""
    probs, preds = pred.probs, pred.preds
    cells = []
    for row in range(min(GRID_ROWS * GRID_COLS, len(pred.labels))):
        p, y = int(preds[row]), int(pred.labels[row])
        caption = f"{_short(classes[p])} {float(probs[row, p]):.0%}"
        if p != y:
            caption += f"\ntrue: {_short(classes[y])}"
        cells.append(Cell(split.image(int(pred.index[row])), caption, p != y))
    wrong = int((preds != pred.labels).sum())
    title = f"Test predictions ({wrong:,} of {len(pred.labels):,} wrong, marked red)"
    return save_grid(cells, title, path, GRID_COLS)


def mistakes_grid(pred: Predictions, split, classes: list[str], path: Path) -> Path:
    """The highest-loss images: predicted and true class with their probabilities."""
    probs, preds, losses = pred.probs, pred.preds, pred.losses
    n = min(GRID_ROWS * GRID_COLS, len(losses))
    cells = []
    for row in losses.topk(n).indices.tolist():
        p, y = int(preds[row]), int(pred.labels[row])
        caption = (
            f"pred {_short(classes[p])} {float(probs[row, p]):.0%}\n"
            f"true {_short(classes[y])} {float(probs[row, y]):.0%}"
        )
        cells.append(Cell(split.image(int(pred.index[row])), caption, p != y))
    title = f"The {n} highest-loss test images (wrong ones red)"
    return save_grid(cells, title, path, GRID_COLS)
