"""Classification metrics from logits, via torchmetrics: the numbers `kiln eval` and the report
show, as a plain JSON-ready dict (floats rounded to 6 places) saved in the run as it is."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

ECE_BINS = 15


def top_k_for(num_classes: int) -> int | None:
    """The k worth reporting: top-5 past 5 classes, top-2 for 3 to 5, none for 2 (always 100%)."""
    if num_classes > 5:
        return 5
    if num_classes > 2:
        return 2
    return None


def _r(value: torch.Tensor | float) -> float:
    return round(float(value), 6)


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict[str, Any]:
    """Loss, accuracy (top-1 and top-k), calibration, precision/recall/F1 and the confusion matrix.

    `ece` is the expected calibration error (15 bins, L1): how far the softmax confidence is from
    the accuracy actually reached, 0 for a perfectly calibrated model.
    """
    k = len(classes)
    logits = logits.float()
    preds = logits.argmax(dim=1)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()

    def scalar(fn, average: str) -> float:
        return _r(fn(preds, labels, num_classes=k, average=average))

    per_p = multiclass_precision(preds, labels, num_classes=k, average=None)
    per_r = multiclass_recall(preds, labels, num_classes=k, average=None)
    per_f = multiclass_f1_score(preds, labels, num_classes=k, average=None)
    support = torch.bincount(labels, minlength=k)
    confusion = multiclass_confusion_matrix(preds, labels, num_classes=k)
    probs = logits.softmax(dim=1)
    result: dict[str, Any] = {
        "samples": len(labels),
        "loss": round(loss, 6),
        "accuracy": scalar(multiclass_accuracy, "micro"),
    }
    top_k = top_k_for(k)
    if top_k is not None:
        acc = multiclass_accuracy(logits, labels, num_classes=k, top_k=top_k, average="micro")
        result[f"top{top_k}_accuracy"] = _r(acc)
    result["ece"] = _r(
        multiclass_calibration_error(probs, labels, num_classes=k, n_bins=ECE_BINS, norm="l1")
    )
    result |= {
        "precision_macro": scalar(multiclass_precision, "macro"),
        "recall_macro": scalar(multiclass_recall, "macro"),
        "f1_macro": scalar(multiclass_f1_score, "macro"),
        "precision_weighted": scalar(multiclass_precision, "weighted"),
        "recall_weighted": scalar(multiclass_recall, "weighted"),
        "f1_weighted": scalar(multiclass_f1_score, "weighted"),
        "per_class": [
            {
                "class": name,
                "precision": _r(per_p[i]),
                "recall": _r(per_r[i]),
                "f1": _r(per_f[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        ],
        "confusion_matrix": confusion.tolist(),
    }
    return result
