"""Classification metrics from logits: the numbers `kiln eval` and the report show, as a plain
JSON-ready dict (floats rounded to 6 places) saved in the run as it is.

Every score but the top-k accuracy and the calibration error comes from one confusion matrix C
(rows: true class, columns: predicted), as the segmentation task's do (tasks/segment/metrics.py).
For class k, TP = C[k, k], FP = its column's sum - TP, FN = its row's sum - TP; a class's
precision, recall and F1 are 0 where undefined; the macro averages take the classes that occur in
the truth or the predictions, the weighted ones weigh each class by its true count (scikit-learn's
and torchmetrics' definitions: tests/test_metrics.py checks them against scikit-learn). Plain
torch, because torchmetrics' import (pandas, SciPy, matplotlib) took longer than the whole
evaluation of a small run.
"""

from __future__ import annotations

from typing import Any

import torch

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


def confusion_counts(preds: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(true, predicted) counts, k x k."""
    return torch.bincount(labels.long() * k + preds.long(), minlength=k * k).view(k, k)


def class_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class precision, recall and F1 from a confusion matrix (0 where undefined)."""
    c = confusion.double()
    tp = c.diagonal()
    precision = tp / c.sum(dim=0).clamp(min=1)
    recall = tp / c.sum(dim=1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"precision": precision, "recall": recall, "F1": f1}


def calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error, L1: the samples binned by their top probability (equal-width
    bins over [0, 1], a probability of exactly 1 in a bin of its own), and the gap between each
    bin's mean confidence and its accuracy, weighted by the share of samples in it."""
    confidence, preds = probs.double().max(dim=1)
    right = (preds == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = torch.bucketize(confidence, edges, right=True) - 1
    count = torch.zeros(bins + 1, dtype=torch.float64).index_add_(0, index, torch.ones_like(right))
    conf = torch.zeros(bins + 1, dtype=torch.float64).index_add_(0, index, confidence)
    acc = torch.zeros(bins + 1, dtype=torch.float64).index_add_(0, index, right)
    used = count > 0
    gap = (acc[used] - conf[used]).abs() / count[used]
    return float((gap * count[used]).sum() / count.sum().clamp(min=1))


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict[str, Any]:
    """Loss, accuracy (top-1 and top-k), calibration, precision/recall/F1 and the confusion matrix.

    `ece` is the expected calibration error (15 bins, L1): how far the softmax confidence is from
    the accuracy actually reached, 0 for a perfectly calibrated model.
    """
    k = len(classes)
    logits, labels = logits.float().cpu(), labels.long().cpu()
    preds = logits.argmax(dim=1)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    confusion = confusion_counts(preds, labels, k)
    per_class = class_scores(confusion)
    support = confusion.sum(dim=1).double()
    occurs = (support + confusion.sum(dim=0)) > 0  # in the truth or the predictions
    weights = support / support.sum().clamp(min=1)
    result: dict[str, Any] = {
        "samples": len(labels),
        "loss": round(loss, 6),
        "accuracy": _r(confusion.trace() / max(len(labels), 1)),
    }
    top_k = top_k_for(k)
    if top_k is not None:
        hits = (logits.topk(top_k, dim=1).indices == labels[:, None]).any(dim=1)
        result[f"top{top_k}_accuracy"] = _r(hits.double().mean())
    result["ece"] = _r(calibration_error(logits.softmax(dim=1), labels))
    for name, key in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
        values = per_class[key]
        result[f"{name}_macro"] = _r(values[occurs].mean() if occurs.any() else 0.0)
    for name, key in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
        result[f"{name}_weighted"] = _r((per_class[key] * weights).sum())
    result["per_class"] = [
        {
            "class": name,
            "precision": _r(per_class["precision"][i]),
            "recall": _r(per_class["recall"][i]),
            "f1": _r(per_class["F1"][i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]
    result["confusion_matrix"] = confusion.tolist()
    return result
