"""What `kiln predict`, `kiln.load(RUN).predict` and `kiln serve` answer for a sigmoid classifier:
the labels at or above their thresholds (task=multilabel), or one of two classes (task=binary),
with their probabilities. The thresholds are the run's (info.json) or its export's (sidecar)."""

from __future__ import annotations

from typing import Any

import torch

from kiln.tasks.multilabel.metrics import DEFAULT_THRESHOLD


def thresholds_of(info, outputs: int) -> torch.Tensor:
    """The run's thresholds, or 0.5 for a run evaluated before they were chosen."""
    chosen = info.thresholds or [DEFAULT_THRESHOLD] * outputs
    return torch.tensor(chosen, dtype=torch.float32)


def label_sets(outputs: torch.Tensor, info, top_k: int) -> list[dict[str, Any]]:
    """Per image: `labels`, the labels given (probability >= threshold), most probable first;
    `top_k`, the k most probable labels whether given or not."""
    probs = outputs.float().reshape(len(outputs), -1).sigmoid()
    given = probs >= thresholds_of(info, probs.shape[1])
    k = max(1, min(top_k, probs.shape[1]))
    answers = []
    for row, marks in zip(probs, given, strict=True):
        order = row.argsort(descending=True).tolist()
        scores = [{"label": info.classes[i], "probability": round(float(row[i]), 6)}
                  for i in order]  # fmt: skip
        answers.append({"labels": [s for s, i in zip(scores, order, strict=True) if marks[i]],
                        "top_k": scores[:k]})  # fmt: skip
    return answers


def binary_answers(outputs: torch.Tensor, info) -> list[dict[str, Any]]:
    """Per image: the class (the positive one, info.classes[1], when its probability reaches the
    threshold), that answer's probability, the threshold, and both classes by probability."""
    negative, positive = info.classes
    p = outputs.float().reshape(len(outputs)).sigmoid()
    threshold = float(thresholds_of(info, 1)[0])
    answers = []
    for value in p.tolist():
        both = sorted([(positive, value), (negative, 1 - value)], key=lambda s: -s[1])
        yes = value >= threshold
        answers.append({
            "label": positive if yes else negative,
            "probability": round(value if yes else 1 - value, 6),
            "threshold": round(threshold, 6),
            "top_k": [{"label": name, "probability": round(q, 6)} for name, q in both],
        })  # fmt: skip
    return answers
