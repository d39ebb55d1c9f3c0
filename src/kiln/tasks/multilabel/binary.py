"""task=binary: two classes, one logit (the tutorials' `nn.Linear(..., 1)` + sigmoid).

Why a task of its own rather than task=classify with two outputs: a binary classifier's questions
are different ones. It answers "is this the positive class?" with one probability, so its loss is
binary cross-entropy (`BCEWithLogitsLoss`, `binary.pos_weight` to weigh a rare positive class up),
its answer depends on a threshold that need not be 0.5 (chosen after training for the best F1 on
the validation split, saved in info.json), and it is judged by ROC-AUC and PR-AUC, which see every
threshold at once. It shares that machinery with task=multilabel (one logit per label): a binary
classifier is a multi-label one with a single label, the positive class.

The positive class is the second of the two in sorted order (scikit-learn's convention:
`cat`/`dog` -> dog, `0`/`1` -> 1, `no`/`yes` -> yes); name the folders or labels accordingly.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from kiln.data.registry import are_masks, is_multi_hot
from kiln.errors import ConfigError
from kiln.tasks.multilabel.task import SigmoidTask
from kiln.tasks.registry import register_task


class BinaryOptions(BaseModel):
    """task=binary's own config section (`binary:`)."""

    model_config = ConfigDict(extra="forbid")
    pos_weight: float | Literal["auto"] | None = Field(
        None, description="weight of the positive class in the loss; auto: negatives / positives"
    )
    threshold: Literal["auto"] | float = Field(
        "auto", description="auto: the F1-optimal threshold on the validation split"
    )


@register_task(
    "binary", "two classes, one logit: sigmoid + BCE, F1, ROC-AUC, PR-AUC; threshold chosen "
    "on validation",
)  # fmt: skip
class BinaryTask(SigmoidTask):
    test_key = "f1"
    Options = BinaryOptions

    @classmethod
    def model_outputs(cls, cfg, info) -> int:
        if info.num_classes != 2:
            shown = ", ".join(info.classes[:6]) + (", ..." if info.num_classes > 6 else "")
            raise ConfigError(
                f"task=binary needs two classes; the data has {info.num_classes} ({shown}): "
                "use task=classify for one class of several, task=multilabel for several labels"
            )
        return 1

    @classmethod
    def build(cls, cfg, data, device) -> BinaryTask:
        labels = data.train.labels
        if is_multi_hot(labels) or are_masks(labels) or labels.is_floating_point():
            raise ConfigError(
                "task=binary needs one of two classes per image (a folder with two class "
                "folders, or a CSV label column with two values)"
            )
        o = cls.options(cfg)
        how = o.pos_weight
        if how is None and cfg.data.balance == "weights":
            how = "auto"  # the classes weighed alike, as data.balance=weights does for classify
        weights = cls.weights(how, (labels == 1).view(-1, 1), "binary.pos_weight")
        threshold = None if o.threshold == "auto" else o.threshold
        return cls(1, None if weights is None else weights.to(device), threshold)

    def sample_weights(self, cfg, data) -> torch.Tensor | None:
        """data.balance=sampler: each image drawn in inverse proportion to its class's size."""
        from kiln.tasks.classify import balance

        return balance(cfg.data.balance, data.train.labels, 2)[1]

    @staticmethod
    def output_names(info) -> list[str]:
        return [info.classes[1]]  # the one logit scores the positive class

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Class index 1 (the positive class) -> 1.0, index 0 -> 0.0, as (N, 1)."""
        return labels.float().view(-1, 1)

    def logged(self, micro_f1: float, macro_f1: float, accuracy: float) -> dict[str, float]:
        return {"f1": micro_f1, "acc": accuracy}  # at the threshold of the best F1

    def metrics(self, probs, targets, info, thresholds: list[float]) -> dict[str, Any]:
        from kiln.tasks.multilabel.metrics import binary_metrics

        return binary_metrics(probs, targets, info.classes, thresholds[0])

    @classmethod
    def headline(cls, result: dict[str, Any]) -> str:
        if "f1" not in result:
            return ""
        auc = f", ROC-AUC {result['roc_auc']:.4f}" if result.get("roc_auc") is not None else ""
        return f"F1 {result['f1']:.4f}, accuracy {result['accuracy']:.2%}{auc}"

    # Prediction and export --------------------------------------------------------------------
    @staticmethod
    def predictions(outputs: torch.Tensor, info, top_k: int = 5) -> list[dict]:
        from kiln.tasks.multilabel.answers import binary_answers

        return binary_answers(outputs, info)

    @classmethod
    def show_answer(cls, answer: dict[str, Any]) -> str:
        return (f"{answer.get('file', '-')}: {answer['label']} {answer['probability']:.1%} "
                f"(threshold {answer['threshold']:.2f})")  # fmt: skip

    @classmethod
    def export_spec(cls, cfg, info) -> dict[str, Any]:
        return {"output": {
            "name": "logit", "shape": ["batch", 1], "outputs": 1, "sigmoid": False,
            "positive": info.classes[1], "thresholds": info.thresholds,
            "answer": f"{info.classes[1]} when sigmoid(logit) reaches the threshold, "
                      f"else {info.classes[0]}",
        }}  # fmt: skip

    @classmethod
    def agreement(cls, reference: torch.Tensor, exported: torch.Tensor) -> float:
        return ((reference > 0) == (exported > 0)).float().mean().item()

    @classmethod
    def accuracy(cls, outputs: torch.Tensor, labels: torch.Tensor) -> float:
        return ((outputs.reshape(-1) > 0).long() == labels.reshape(-1)).float().mean().item()
