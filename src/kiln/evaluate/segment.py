"""Segmentation results: metrics from a confusion matrix of pixels, colour overlays, the samples
plot of a run (image | true mask | predicted mask) and `kiln eval`'s printout.

Every metric comes from one confusion matrix C (rows: true class, columns: predicted) summed
over all pixels of a split; pixels marked IGNORE (255) are left out. For class k, with TP = C[k,k],
FP = column sum - TP and FN = row sum - TP:

    IoU  = TP / (TP + FP + FN)          (intersection over union, Jaccard)
    Dice = 2 TP / (2 TP + FP + FN)      (F1 of the class's pixels)

Mean IoU and mean Dice average the classes that occur in the truth or the prediction (a class
absent from both has no IoU: null in JSON); pixel accuracy is trace(C) / sum(C).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.data.batch_augment import IGNORE


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) pixel counts, rows true and columns predicted, IGNORE pixels left out (float64,
    so sums over millions of pixels stay exact; float32 on MPS, which lacks float64)."""
    target = target.long()
    valid = target != IGNORE
    index = torch.where(valid, target * num_classes + pred.long(), num_classes**2)
    counts = torch.bincount(index.flatten(), minlength=num_classes**2 + 1)[:-1]
    dtype = torch.float32 if counts.device.type == "mps" else torch.float64
    return counts.to(dtype).view(num_classes, num_classes)


def scores(confusion: torch.Tensor) -> dict[str, Any]:
    """Per-class IoU, Dice, precision, recall and support, their means and pixel accuracy."""
    c = confusion.double().cpu()
    tp = c.diag()
    fp, fn = c.sum(dim=0) - tp, c.sum(dim=1) - tp
    present = (tp + fp + fn) > 0
    iou = torch.where(present, tp / (tp + fp + fn).clamp_min(1), torch.nan)
    dice = torch.where(present, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.nan)
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.nan)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), torch.nan)
    total = c.sum()
    return {
        "miou": nan_mean(iou),
        "mean_dice": nan_mean(dice),
        "pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
        "iou": iou.tolist(),
        "dice": dice.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "support": c.sum(dim=1).long().tolist(),  # true pixels of each class
    }


def nan_mean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if len(kept) else 0.0


def metrics_report(confusion: torch.Tensor, classes: list[str], samples: int) -> dict[str, Any]:
    """What `kiln eval` saves for a segmentation run (eval-<split>.json)."""
    s = scores(confusion)

    def number(v: float) -> float | None:
        return None if math.isnan(v) else v

    per_class = [
        {
            "class": name,
            "iou": number(s["iou"][k]),
            "dice": number(s["dice"][k]),
            "precision": number(s["precision"][k]),
            "recall": number(s["recall"][k]),
            "pixels": s["support"][k],
        }
        for k, name in enumerate(classes)
    ]
    return {
        "samples": samples,
        "pixels": int(confusion.sum()),
        "miou": s["miou"],
        "mean_dice": s["mean_dice"],
        "pixel_acc": s["pixel_acc"],
        "per_class": per_class,
        "confusion_matrix": confusion.long().tolist(),
    }


# Colours ----------------------------------------------------------------------------------------
def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours: black background, then well-separated hues (tab10, then more)."""
    import matplotlib

    base = [matplotlib.colors.to_rgb(c) for c in matplotlib.colormaps["tab10"].colors]
    extra = matplotlib.colormaps["hsv"](np.linspace(0, 1, max(num_classes, 2), endpoint=False))
    colours = [(0.0, 0.0, 0.0), *base, *(tuple(c[:3]) for c in extra)]
    return (np.array(colours[:num_classes]) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.55):
    """An (H, W, 3) uint8 picture: the image in gray or colour, each non-background class painted
    over it in its colour (IGNORE pixels left as they are)."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    rgb = rgb.astype(np.float32)
    painted = (mask > 0) & (mask != IGNORE)
    colour = colours[np.where(painted, mask, 0).clip(0, len(colours) - 1)].astype(np.float32)
    rgb[painted] = (1 - alpha) * rgb[painted] + alpha * colour[painted]
    return rgb.round().astype(np.uint8)


def display_image(image: torch.Tensor) -> np.ndarray:
    """A uint8 picture (H, W) or (H, W, 3) from a dataset item (C, H, W) or a volume's middle
    slice (C, D, H, W); float volumes are stretched to 0-255."""
    if image.dim() == 4:
        image = image[:, image.shape[1] // 2]
    x = image.float()
    if image.dtype != torch.uint8:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8) * 255
    x = x.round().clamp(0, 255).to(torch.uint8)
    return x[0].numpy() if x.shape[0] != 3 else x.permute(1, 2, 0).numpy()


def middle(mask: torch.Tensor) -> np.ndarray:
    """A 2-D mask as is, a volume's mask at its middle slice."""
    return (mask[mask.shape[0] // 2] if mask.dim() == 3 else mask).numpy()


# The run's plot -----------------------------------------------------------------------------------
def write_samples(
    path: Path, images: torch.Tensor, true: torch.Tensor, pred: torch.Tensor, classes: list[str]
) -> Path:
    """plots/segment_samples.png: per row an image, its true mask and the predicted one painted
    over it (volumes: the middle slice), with a legend of the classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = palette(len(classes))
    rows = len(images)
    legend = 0.3 + 0.2 * ((len(classes) - 2) // 6)  # inches below the panels for the legend
    height = 2.5 * rows + legend
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, height), squeeze=False)
    volumes = images.dim() == 5
    for i in range(rows):
        picture = display_image(images[i])
        panels = (picture, overlay(picture, middle(true[i]), colours),
                  overlay(picture, middle(pred[i]), colours))  # fmt: skip
        for ax, panel, title in zip(axes[i], panels, ("image", "true", "predicted"), strict=True):
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="nearest")
            ax.set_title(title + (" (middle slice)" if volumes and i == 0 else ""), fontsize=8)
            ax.axis("off")
    handles = [Patch(color=colours[k] / 255, label=name) for k, name in enumerate(classes) if k]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, max(1, len(handles))), fontsize=7)
    fig.tight_layout(rect=(0, legend / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    from kiln.evaluate.plots import literal_text

    literal_text(fig)  # class names are text, not math
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# kiln eval ----------------------------------------------------------------------------------------
EVAL_KEYS = ("miou", "mean_dice", "pixel_acc", "loss", "per_class", "confusion_matrix",
             "samples", "pixels")  # fmt: skip


def print_segment_eval(result: dict, as_json: bool) -> int:
    """`kiln eval` of a segmentation run: the means, then IoU and Dice per class."""
    if as_json:
        chosen = {k: result[k] for k in EVAL_KEYS if k in result}
        print(json.dumps(chosen | {"split": result["split"]}))
        return 0
    from rich.console import Console
    from rich.table import Table

    def show(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    console = Console()
    console.print(
        f"[bold]{result['run']}[/] {result['split']} split, {result['checkpoint']} checkpoint "
        f"(epoch {result['epoch']}), {result['samples']:,} images, {result['pixels']:,} pixels"
    )
    summary = Table("metric", "value")
    for key in ("miou", "mean_dice", "pixel_acc", "loss"):
        summary.add_row(key, show(result.get(key)))
    console.print(summary)
    table = Table("class", "iou", "dice", "precision", "recall", "pixels")
    for row in result["per_class"]:
        table.add_row(row["class"], show(row["iou"]), show(row["dice"]), show(row["precision"]),
                      show(row["recall"]), f"{row['pixels']:,}")  # fmt: skip
    console.print(table)
    console.print(f"saved to {Path(result['run']) / ('eval-' + result['split'] + '.json')} "
                  "(with the confusion matrix of pixels)")  # fmt: skip
    return 0
