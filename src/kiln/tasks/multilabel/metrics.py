"""The numbers of a sigmoid classifier (task=binary, task=multilabel), via torchmetrics: the
decision thresholds chosen on the validation split, and what `kiln eval` saves for a split.

Everything works on (N, K) probabilities and (N, K) 0/1 targets: K labels for task=multilabel, one
(the positive class) for task=binary. A label is given when its probability reaches its threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
    multilabel_average_precision,
    multilabel_exact_match,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
)

DEFAULT_THRESHOLD = 0.5  # a label never seen positive in the validation split keeps this


def _r(value: torch.Tensor | float) -> float:
    return round(float(value), 6)


def f1_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label, the threshold with the highest F1 on these (validation) answers: the
    probability at which the precision-recall curve's F1 peaks (0.5 without positives)."""
    chosen = []
    for k in range(probs.shape[1]):
        column, truth = probs[:, k].float(), targets[:, k].long()
        if truth.sum() == 0:
            chosen.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, thresholds = binary_precision_recall_curve(column, truth)
        f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]).clamp_min(1e-12)
        chosen.append(float(thresholds[int(f1.argmax())]))
    return chosen


def decide(probs: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """(N, K) 0/1 answers: each label given where its probability reaches its threshold."""
    return (probs >= torch.tensor(thresholds, dtype=probs.dtype)).long()


def multilabel_metrics(
    probs: torch.Tensor, targets: torch.Tensor, labels: list[str], thresholds: list[float]
) -> dict[str, Any]:
    """Per-label precision, recall, F1, average precision and support at the chosen thresholds;
    micro and macro F1, mAP, and the exact-match ratio (every label of an image right)."""
    k, targets = len(labels), targets.long()
    preds = decide(probs, thresholds)

    def average(fn, how: str) -> float:
        return _r(fn(preds, targets, num_labels=k, average=how))

    per = {
        "precision": multilabel_precision(preds, targets, num_labels=k, average=None),
        "recall": multilabel_recall(preds, targets, num_labels=k, average=None),
        "f1": multilabel_f1_score(preds, targets, num_labels=k, average=None),
        "ap": multilabel_average_precision(probs, targets, num_labels=k, average=None),
    }
    support = targets.sum(dim=0)
    return {
        "samples": len(targets),
        "f1_micro": average(multilabel_f1_score, "micro"),
        "f1_macro": average(multilabel_f1_score, "macro"),
        "precision_micro": average(multilabel_precision, "micro"),
        "recall_micro": average(multilabel_recall, "micro"),
        "map": _r(multilabel_average_precision(probs, targets, num_labels=k, average="macro")),
        "exact_match": _r(multilabel_exact_match(preds, targets, num_labels=k)),
        "labels_per_image": _r(targets.sum() / max(len(targets), 1)),
        "per_label": [
            {"label": name, "threshold": _r(thresholds[i]), "precision": _r(per["precision"][i]),
             "recall": _r(per["recall"][i]), "f1": _r(per["f1"][i]), "ap": _r(per["ap"][i]),
             "support": int(support[i])}
            for i, name in enumerate(labels)
        ],
    }  # fmt: skip


def binary_metrics(
    probs: torch.Tensor, targets: torch.Tensor, classes: list[str], threshold: float
) -> dict[str, Any]:
    """Accuracy, precision, recall and F1 of the positive class at the chosen threshold, ROC-AUC
    and PR-AUC (average precision, threshold-free) and the confusion matrix."""
    p, truth = probs[:, 0].float(), targets[:, 0].long()
    pred = (p >= threshold).long()
    tp, fp = int((pred & truth).sum()), int((pred & (1 - truth)).sum())
    fn, tn = int(((1 - pred) & truth).sum()), int(((1 - pred) & (1 - truth)).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    both = truth.min() != truth.max()  # AUCs need both classes present
    return {
        "samples": len(truth),
        "positive": classes[1],
        "threshold": _r(threshold),
        "accuracy": _r((tp + tn) / max(len(truth), 1)),
        "precision": _r(precision),
        "recall": _r(recall),
        "f1": _r(2 * precision * recall / max(precision + recall, 1e-12)),
        "roc_auc": _r(binary_auroc(p, truth)) if both else None,
        "pr_auc": _r(binary_average_precision(p, truth)) if both else None,
        "support": {classes[0]: tn + fp, classes[1]: tp + fn},
        "confusion_matrix": [[tn, fp], [fn, tp]],  # rows: true negative, positive class
    }


def pr_curve(probs: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(recall, precision) of one label, as the threshold sweeps."""
    precision, recall, _ = binary_precision_recall_curve(probs.float(), truth.long())
    return recall, precision


def roc_curve(probs: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(false positive rate, true positive rate) of one label, as the threshold sweeps."""
    fpr, tpr, _ = binary_roc(probs.float(), truth.long())
    return fpr, tpr
