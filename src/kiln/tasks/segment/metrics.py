"""Segmentation metrics from a confusion matrix of pixels.

Every metric comes from one confusion matrix C (rows: true class, columns: predicted) summed
over all pixels of a split; pixels marked IGNORE (255) are left out. For class k, with TP = C[k,k],
FP = column sum - TP and FN = row sum - TP:

    IoU  = TP / (TP + FP + FN)          (intersection over union, Jaccard)
    Dice = 2 TP / (2 TP + FP + FN)      (F1 of the class's pixels)

Mean IoU and mean Dice average the classes that occur in the truth or the prediction (a class
absent from both has no IoU: null in JSON); pixel accuracy is trace(C) / sum(C).
"""

from __future__ import annotations

import math
from typing import Any

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
