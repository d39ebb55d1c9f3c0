"""Image classification: cross-entropy on logits, accuracy as the headline metric."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.data.registry import are_masks, is_multi_hot
from kiln.errors import ConfigError, KilnError
from kiln.tasks.base import StepContext, Task
from kiln.tasks.common import ClassScores, check_same_outputs, distilled
from kiln.tasks.registry import register_task

log = logging.getLogger("kiln.tasks")


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
class ClassifyTask(ClassScores, Task):
    metric = "acc"  # the name shown next to loss in logs and metrics.csv
    higher_is_better = True
    percent = True
    test_key = "accuracy"

    def __init__(self, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None):
        self.evaluated = None  # (model, Predictions) of the last evaluate: the report's figures
        # class_weights (data.balance=weights) weigh the training loss only: evaluation stays honest
        self.cross_entropy = nn.CrossEntropyLoss(weight=class_weights,
                                                 label_smoothing=label_smoothing)  # fmt: skip
        self.eval_loss = nn.CrossEntropyLoss(reduction="sum")  # on log-probabilities: their NLL
        self.log_probs: bool | None = None  # the model returns log_softmax (seen at step one)

    def train_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on scores; on log-probabilities (a module ending in log_softmax, as the
        PyTorch MNIST example's) their negative log-likelihood, as F.nll_loss computes it."""
        if self.log_probs is None:
            self.log_probs = are_log_probabilities(outputs)
            if self.log_probs:
                smoothing = self.cross_entropy.label_smoothing
                log.info(
                    "note: the model returns log-probabilities (log_softmax): the loss is their "
                    "negative log-likelihood (NLL)"
                    + (f", with train.label_smoothing={smoothing}" if smoothing else "")
                )
        if self.log_probs and not self.cross_entropy.label_smoothing:
            return nn.functional.nll_loss(outputs.float(), labels, self.cross_entropy.weight)
        return self.cross_entropy(outputs, labels)  # on log-probabilities: the smoothed NLL

    def state_dict(self) -> dict[str, Any]:
        return {"log_probs": self.log_probs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_probs = state.get("log_probs", self.log_probs)

    @classmethod
    def check_outputs(cls, outputs: Any, images: int, info, module: str) -> None:
        """One score (or log-probability) per class and image."""
        k = info.num_classes
        shown = ", ".join(info.classes[:5]) + (", ..." if k > 5 else "")
        if not isinstance(outputs, torch.Tensor):
            raise KilnError(
                f"{module}.forward returns {type(outputs).__name__}; task=classify needs one "
                f"tensor of shape (N, {k}): a score per class ({shown})"
            )
        if outputs.dim() == 2 and outputs.shape[1] == k and outputs.shape[0] == images:
            return
        if outputs.dim() >= 1 and outputs.shape[0] != images:
            why = (f"{outputs.shape[0]} rows for {images} images: a view or reshape in forward "
                   "mixes the batch with the features (flatten with x.view(x.shape[0], -1) or "
                   "torch.flatten(x, 1))")  # fmt: skip
        else:
            why = f"make its last layer give {k} outputs, one per class ({shown})"
        raise KilnError(
            f"{module}.forward returns outputs of shape {tuple(outputs.shape)} for {images} "
            f"images; task=classify needs ({images}, {k}): {why}"
        )

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.train.loss != "auto":
            raise ConfigError(
                f"train.loss={cfg.train.loss} is for task=regress; classify uses cross-entropy"
            )

    @classmethod
    def build(cls, cfg, data, device) -> ClassifyTask:
        if data.train.labels.is_floating_point():
            raise ConfigError("the data has numeric targets (data.targets): set task=regress")
        if are_masks(data.train.labels):
            raise ConfigError("the data has a mask per image (a class per pixel): set task=segment")
        if is_multi_hot(data.train.labels):
            raise ConfigError("the data has a set of labels per image (data.label_sep): set "
                              "task=multilabel")  # fmt: skip
        class_weights, _ = balance(cfg.data.balance, data.train.labels, data.info.num_classes)
        if class_weights is not None:
            class_weights = class_weights.to(device)
        return cls(cfg.train.label_smoothing, class_weights)

    def sample_weights(self, cfg, data) -> torch.Tensor | None:
        """data.balance=sampler: each image drawn in inverse proportion to its class's size."""
        return balance(cfg.data.balance, data.train.labels, data.info.num_classes)[1]

    @staticmethod
    def score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Number of right answers in a batch, as a tensor (no device sync)."""
        return (logits.argmax(dim=1) == labels).sum()

    @classmethod
    def check_teacher(cls, teacher_cfg, teacher_info, info, where: str) -> None:
        check_same_outputs(cls.name, teacher_cfg, teacher_info, info, where)

    def distill_loss(self, outputs, teacher, loss, distill) -> torch.Tensor:
        """KL on class scores softened by distill.temperature, plus the labels' loss."""
        return distilled(outputs, teacher, loss, distill)

    # Evaluation and report --------------------------------------------------------------------
    def evaluate(self, ctx: StepContext, loader, info) -> dict[str, Any]:
        """Accuracy (top-1, top-k), calibration, precision/recall/F1, the confusion matrix. The
        outputs are kept (`self.evaluated`) for the report's figures, which then need no second
        pass over the split."""
        from kiln.tasks.classify.metrics import classification_metrics
        from kiln.tasks.classify.predictions import Predictions, collect_logits

        logits, labels = collect_logits(ctx.net, loader, ctx.tta)
        self.evaluated = (ctx.model, Predictions(torch.arange(len(labels)), labels, logits))
        return classification_metrics(logits, labels, info.classes)

    @classmethod
    def headline(cls, result: dict[str, Any]) -> str:
        return f"accuracy {result['accuracy']:.2%}" if "accuracy" in result else ""

    @classmethod
    def format_value(cls, key: str, value: float) -> str:
        from kiln.evaluate.notebook import number

        return number(value, key.endswith(("acc", "accuracy")))

    @classmethod
    def eval_html(cls, result: dict[str, Any]) -> str:
        """The numbers, then precision, recall and F1 per class."""
        from kiln.evaluate.notebook import table

        rows = [[c["class"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}",
                 f"{c['support']:,}"] for c in result.get("per_class", [])]  # fmt: skip
        per_class = table(["class", "precision", "recall", "f1", "support"], rows) if rows else ""
        return super().eval_html(result) + per_class

    @classmethod
    def print_eval(cls, result: dict[str, Any], console) -> None:
        from kiln.tasks.classify.report import print_eval

        print_eval(result, console)

    def report(self, run, model, bundle, device, checkpoint: str = "best") -> Path:
        from kiln.tasks.classify.report import write_report

        return write_report(run, model, bundle, device, checkpoint, self.kept(model, bundle.test))

    def kept(self, model: nn.Module, split):
        """The outputs `evaluate` kept, when they are `model`'s over the whole of `split` (the
        same labels in the same order), else None."""
        if getattr(self, "evaluated", None) is None:
            return None
        owner, predictions = self.evaluated
        same = owner is model and torch.equal(predictions.labels, split.labels.cpu())
        return predictions if same else None

    # Prediction and export --------------------------------------------------------------------
    @staticmethod
    def predictions(outputs: torch.Tensor, info, top_k: int = 5) -> list[dict]:
        """The top-k labels and their probabilities."""
        probs = outputs.float().softmax(dim=1)
        return top_labels(probs, info.classes, top_k)

    @classmethod
    def show_answer(cls, answer: dict[str, Any]) -> str:
        shown = "  ".join(f"{t['label']} {t['probability']:.1%}" for t in answer["top_k"])
        return f"{answer.get('file', '-')}: {shown}"

    @classmethod
    def export_spec(cls, cfg, info) -> dict[str, Any]:
        return {"output": {"name": "logits", "shape": ["batch", len(info.classes)],
                           "softmax": False}}  # fmt: skip

    # Explanation ------------------------------------------------------------------------------
    explains = True

    @classmethod
    def explain(cls, model, inputs, info, top_k=3, method="auto", targets=None) -> list[list]:
        """Heat maps of what drove each of the top-k classes (the logit's gradient)."""
        from kiln.evaluate.explain import Explanation, heat_maps

        with torch.no_grad():
            probs = model(inputs).float().softmax(dim=1)
        if targets is None:
            k = max(1, min(top_k, probs.shape[1]))
            targets = probs.topk(k, dim=1).indices.tolist()
        classes = torch.tensor(targets, device=inputs.device)
        maps, name = heat_maps(model, inputs, lambda out, c: out[:, c], classes,
                               black_image(info, inputs), method)  # fmt: skip
        return [
            [Explanation(info.classes[c], round(float(probs[n, c]), 6), maps[n, j].cpu(), name)
             for j, c in enumerate(row)]
            for n, row in enumerate(targets)
        ]  # fmt: skip

    @classmethod
    def accuracy(cls, outputs: torch.Tensor, labels: torch.Tensor) -> float:
        return (outputs.argmax(1) == labels).float().mean().item()


def are_log_probabilities(outputs: torch.Tensor) -> bool:
    """Rows whose exponentials sum to 1: log-probabilities (log_softmax), not free scores."""
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2 or outputs.shape[1] < 2:
        return False
    with torch.no_grad():
        return bool((outputs.detach().float().logsumexp(dim=1).abs() < 1e-3).all())


def top_labels(probs: torch.Tensor, classes: list[str], top_k: int) -> list[dict[str, Any]]:
    """One entry per row of probabilities: the top label, its probability and the top-k list."""
    k = max(1, min(top_k, len(classes)))
    top_p, top_i = probs.topk(k, dim=1)
    results = []
    for ps, idx in zip(top_p.tolist(), top_i.tolist(), strict=True):
        top = [
            {"label": classes[i], "probability": round(p, 6)} for p, i in zip(ps, idx, strict=True)
        ]
        results.append({"label": top[0]["label"], "probability": top[0]["probability"],
                        "top_k": top})  # fmt: skip
    return results


def black_image(info, inputs: torch.Tensor) -> torch.Tensor:
    """A black image as the model takes it (normalized): integrated gradients' baseline."""
    mean = torch.tensor(info.mean, device=inputs.device).view(1, -1, *[1] * (inputs.dim() - 2))
    std = torch.tensor(info.std, device=inputs.device).view_as(mean)
    return (torch.zeros_like(inputs[:1]) - mean) / std
