"""Classification metrics from logits, via torchmetrics: the numbers `kiln eval` reports."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict[str, Any]:
    k = len(classes)
    preds = logits.argmax(dim=1)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels).item()

    def scalar(fn, average: str) -> float:
        return round(float(fn(preds, labels, num_classes=k, average=average)), 6)

    per_p = multiclass_precision(preds, labels, num_classes=k, average=None)
    per_r = multiclass_recall(preds, labels, num_classes=k, average=None)
    per_f = multiclass_f1_score(preds, labels, num_classes=k, average=None)
    support = torch.bincount(labels, minlength=k)
    confusion = multiclass_confusion_matrix(preds, labels, num_classes=k)
    return {
        "samples": len(labels),
        "loss": round(loss, 6),
        "accuracy": scalar(multiclass_accuracy, "micro"),
        "precision_macro": scalar(multiclass_precision, "macro"),
        "recall_macro": scalar(multiclass_recall, "macro"),
        "f1_macro": scalar(multiclass_f1_score, "macro"),
        "precision_weighted": scalar(multiclass_precision, "weighted"),
        "recall_weighted": scalar(multiclass_recall, "weighted"),
        "f1_weighted": scalar(multiclass_f1_score, "weighted"),
        "per_class": [
            {
                "class": name,
                "precision": round(float(per_p[i]), 6),
                "recall": round(float(per_r[i]), 6),
                "f1": round(float(per_f[i]), 6),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        ],
        "confusion_matrix": confusion.tolist(),
    }
