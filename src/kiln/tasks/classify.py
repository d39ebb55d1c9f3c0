"""Image classification: cross-entropy on logits, accuracy as the headline metric."""

from __future__ import annotations

import torch
from torch import nn

from kiln.data.registry import are_masks
from kiln.errors import ConfigError
from kiln.tasks.registry import register_task


def balance(how: str, labels: torch.Tensor, num_classes: int):
    """(class weights for the loss, per-sample weights for the sampler) for data.balance."""
    if how == "none":
        return None, None
    if labels.is_floating_point():
        raise ConfigError(f"data.balance={how} balances classes; task=regress has none")
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
    if how == "weights":
        return counts.sum() / (num_classes * counts), None
    if how == "sampler":
        return None, (1.0 / counts)[labels]
    return None, None


@register_task("classify", "one label per image: cross-entropy, accuracy")
class ClassifyTask:
    metric = "acc"  # the name shown next to loss in logs and metrics.csv
    higher_is_better = True

    def __init__(self, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None):
        # class_weights (data.balance=weights) weigh the training loss only: evaluation stays honest
        self.train_loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss(reduction="sum")

    @classmethod
    def build(cls, cfg, data, device) -> ClassifyTask:
        if cfg.train.loss != "auto":
            raise ConfigError(
                f"train.loss={cfg.train.loss} is for task=regress; classify uses cross-entropy"
            )
        if data.train.labels.is_floating_point():
            raise ConfigError("the data has numeric targets (data.targets): set task=regress")
        if are_masks(data.train.labels):
            raise ConfigError("the data has a mask per image (a class per pixel): set task=segment")
        class_weights, _ = balance(cfg.data.balance, data.train.labels, data.info.num_classes)
        if class_weights is not None:
            class_weights = class_weights.to(device)
        return cls(cfg.train.label_smoothing, class_weights)

    @staticmethod
    def evaluate(logits: torch.Tensor, labels: torch.Tensor, info) -> dict:
        from kiln.evaluate.metrics import classification_metrics  # torchmetrics: slow import

        return classification_metrics(logits, labels, info.classes)

    @staticmethod
    def predictions(outputs: torch.Tensor, info, top_k: int = 5) -> list[dict]:
        """What `kiln predict` and `kiln serve` answer: the top-k labels and probabilities."""
        from kiln.predict import format_predictions

        probs = outputs.float().softmax(dim=1)
        return format_predictions(range(len(probs)), probs, info.classes, top_k)

    def after_fit(self, run, model, bundle, device) -> dict[str, str]:
        """The HTML report of the run (run.report), from its class predictions."""
        if not run.load_config().run.report:
            return {}
        from kiln.evaluate.report import make_report

        return {"Report": str(make_report(run.path, model=model, bundle=bundle, device=device))}

    @staticmethod
    def score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Number of right answers in a batch, as a tensor (no device sync)."""
        return (logits.argmax(dim=1) == labels).sum()
