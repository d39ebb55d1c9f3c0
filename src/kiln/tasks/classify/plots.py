"""Plots of a finished classification run, written to RUN/plots/ for people and for the report:
the confusion matrix, per-class scores, sample predictions and the highest-loss mistakes.

Predictions come from the model on the validation split, capped at MAX_SAMPLES images so a huge
dataset cannot stall the end of training. Images are drawn from the split's own uint8 pixels, not
the normalized tensors the model saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kiln import data as kdata
from kiln.data import Normalize, make_loader
from kiln.evaluate.plots import save, write_curves
from kiln.models.tta import infer
from kiln.rundir import RunDir

MAX_SAMPLES = 10_000  # validation images predicted for the plots, at most
GRID_ROWS, GRID_COLS = 4, 8  # samples.png and mistakes.png
CELL_TEXT_LIMIT = 20  # confusion matrices with more classes get no numbers in the cells
WRONG = "#c62828"
PLOTS = ("curves", "confusion", "per_class", "samples", "mistakes")


@dataclass
class Predictions:
    """The model's outputs on (part of) the validation split; `index` points into the split."""

    index: torch.Tensor  # (n,)
    labels: torch.Tensor  # (n,)
    logits: torch.Tensor  # (n, classes)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def losses(self) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.logits, self.labels, reduction="none")


@torch.inference_mode()
def collect_logits(model: torch.nn.Module, loader, tta: str = "none"):
    """(logits, labels) over a loader, on the CPU."""
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        outs.append(infer(model, x, tta).float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


def predict_split(
    model: torch.nn.Module,
    split,
    info: kdata.DataInfo,
    device,
    batch: int,
    workers: int,
    tta: str = "none",
) -> Predictions:
    """Logits for the split, or for a fixed random MAX_SAMPLES of it when it is larger."""
    index = torch.arange(len(split))
    if len(split) > MAX_SAMPLES:
        pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
        index = pick[:MAX_SAMPLES].sort().values
        split = split.take(index)
    normalize = Normalize(info.mean, info.std, device)
    loader = make_loader(split, batch, normalize, device, workers=workers)
    logits, labels = collect_logits(model.to(device), loader, tta)
    return Predictions(index, labels, logits)


def write_plots(
    run_dir: str | Path,
    model: torch.nn.Module | None = None,
    bundle: kdata.DataBundle | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str = "best",
) -> dict[str, Path]:
    """Write RUN/plots/*.png from the model's answers on the validation split."""
    run = RunDir.open(run_dir)
    cfg, info = run.load_config(), run.data_info()
    out = run.path / "plots"
    written = write_curves(run, "acc", "accuracy", percent=True)
    if len(bundle.val) == 0:
        return written
    from kiln.data.workers import default_workers

    workers = default_workers(cfg.data.workers)
    pred = predict_split(
        model, bundle.val, info, device, cfg.data.eval_batch_size, workers, cfg.model.tta
    )
    counts = confusion_counts(pred, info.num_classes)
    classes = info.classes
    written["confusion"] = save(confusion_figure(counts, classes), out / "confusion.png")
    written["per_class"] = save(per_class_figure(counts, classes), out / "per_class.png")
    written["samples"] = save(samples_figure(pred, bundle.val, classes), out / "samples.png")
    written["mistakes"] = save(mistakes_figure(pred, bundle.val, classes), out / "mistakes.png")
    return written


# Confusion and per-class scores ----------------------------------------------------------------
def confusion_counts(pred: Predictions, k: int) -> torch.Tensor:
    """(true, predicted) counts, k x k."""
    flat = pred.labels * k + pred.preds
    return torch.bincount(flat, minlength=k * k).view(k, k)


def class_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class precision, recall and F1 from a confusion matrix (0 where undefined)."""
    c = counts.double()
    tp = c.diagonal()
    precision = tp / c.sum(dim=0).clamp(min=1)
    recall = tp / c.sum(dim=1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"precision": precision, "recall": recall, "F1": f1}


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
    ax.set_title(f"Confusion matrix, validation split ({int(counts.sum()):,} images)")
    if k <= CELL_TEXT_LIMIT:
        for i in range(k):
            for j in range(k):
                value = float(norm[i, j])
                color = "white" if value > 0.5 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=color, fontsize=7)
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
    ax.set_title("Per-class precision, recall and F1, validation split")
    ax.legend(loc="upper right", ncols=3, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


# Image grids ---------------------------------------------------------------------------------
def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def show_image(ax: Axes, image: torch.Tensor) -> None:
    """A uint8 (C, H, W) image as stored: grayscale with a gray colormap, RGB as is."""
    array = image.permute(1, 2, 0).cpu().numpy()
    if array.shape[2] == 3:
        ax.imshow(array, interpolation="nearest")
    else:  # one channel (or an unusual count: show the first)
        ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(items: list[tuple[torch.Tensor, str, bool]], title: str) -> Figure:
    """(image, caption, wrong) per cell; wrong ones get a red caption and a red border."""
    cols = min(GRID_COLS, max(len(items), 1))
    rows = max(1, -(-len(items) // cols))
    aspect = items[0][0].shape[-2] / items[0][0].shape[-1] if items else 1.0  # wide images: less
    height = rows * (1.6 * min(aspect, 1.0) + 0.3) + 0.4
    fig = Figure(figsize=(cols * 1.6, height))  # fixed spacing: constrained layout is slow here
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / height, hspace=0.45)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes:
        ax.set_axis_off()
    for ax, (image, caption, wrong) in zip(axes, items, strict=False):
        ax.set_axis_on()
        show_image(ax, image)
        ax.set_title(caption, fontsize=7, color=WRONG if wrong else "black")
        for spine in ax.spines.values():
            spine.set_visible(wrong)
            spine.set_color(WRONG)
            spine.set_linewidth(2.5)
    fig.suptitle(title, fontsize=10)
    return fig


def samples_figure(pred: Predictions, split, classes: list[str]) -> Figure:
    probs, preds = pred.probs, pred.preds
    items = []
    for row in range(min(GRID_ROWS * GRID_COLS, len(pred.labels))):
        p, y = int(preds[row]), int(pred.labels[row])
        caption = f"{_short(classes[p])} {float(probs[row, p]):.0%}"
        if p != y:
            caption += f"\ntrue: {_short(classes[y])}"
        items.append((split.image(int(pred.index[row])), caption, p != y))
    wrong = int((preds != pred.labels).sum())
    title = f"Validation predictions ({wrong:,} of {len(pred.labels):,} wrong, marked red)"
    return image_grid(items, title)


def mistakes_figure(pred: Predictions, split, classes: list[str]) -> Figure:
    probs, preds, losses = pred.probs, pred.preds, pred.losses
    n = min(GRID_ROWS * GRID_COLS, len(losses))
    items = []
    for row in losses.topk(n).indices.tolist():
        p, y = int(preds[row]), int(pred.labels[row])
        caption = (
            f"pred {_short(classes[p])} {float(probs[row, p]):.0%}\n"
            f"true {_short(classes[y])} {float(probs[row, y]):.0%}"
        )
        items.append((split.image(int(pred.index[row])), caption, p != y))
    return image_grid(items, f"The {n} highest-loss validation images (wrong ones red)")
