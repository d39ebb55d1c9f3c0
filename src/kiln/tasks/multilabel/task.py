"""task=multilabel: any number of labels per image, each its own yes/no question.

The model gives one logit per label; each goes through a sigmoid (not a softmax: the labels do not
compete), and the loss is binary cross-entropy per label (`BCEWithLogitsLoss`, with an optional
`pos_weight` that weighs the positives of rare labels up). A label is given when its probability
reaches its threshold; after training, each label's threshold is the one with the best F1 on the
validation split, saved in info.json (`thresholds`) and used by `kiln eval`, `kiln predict`, the
export's sidecar and `kiln serve`. While training, train_f1 / val_f1 are the micro F1 with each
label at its best threshold of 0.05, 0.10, ..., 0.95 (`GRID`), f1_macro the mean per label.

The data: a CSV whose label cells list an image's labels, split on `data.label_sep`
(`file,labels` / `a.png,cat;outdoor`), or any dataset giving (N, K) multi-hot labels.
task=binary (binary.py) is the same machinery with one logit for two classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kiln.data.registry import is_multi_hot
from kiln.errors import ConfigError, KilnError
from kiln.models.tta import infer
from kiln.tasks.base import StepContext, Task
from kiln.tasks.registry import register_task

PositiveWeight = float | list[float] | Literal["auto"] | None
# The thresholds an epoch's F1 tries per label (the best one counts), so val_f1 tracks what the
# thresholds chosen after training give rather than one fixed cut that early epochs never reach
GRID = torch.linspace(0.05, 0.95, 19)


class MultilabelOptions(BaseModel):
    """task=multilabel's own config section (`multilabel:`)."""

    model_config = ConfigDict(extra="forbid")
    pos_weight: PositiveWeight = Field(
        None, description="weight of positives in the loss: a number, one per label, or auto "
        "(per label, negatives / positives in the training split)",
    )  # fmt: skip
    threshold: Literal["auto"] | float = Field(
        "auto", description="auto: each label's F1-optimal threshold on the validation split; "
        "or one probability for every label",
    )  # fmt: skip


class SigmoidTask(Task):
    """What task=multilabel and task=binary share: (N, K) logits against (N, K) 0/1 targets."""

    metric = "f1"
    higher_is_better = True

    def __init__(self, outputs: int, pos_weight: torch.Tensor | None = None,
                 threshold: float | None = None):  # fmt: skip
        self.outputs, self.pos_weight, self.threshold = outputs, pos_weight, threshold

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.train.loss != "auto":
            raise ConfigError(
                f"train.loss={cfg.train.loss} is for task=regress; task={cls.name} uses binary "
                f"cross-entropy (weigh the positives with {cls.name}.pos_weight)"
            )
        threshold = cls.options(cfg).threshold
        if threshold != "auto" and not 0 < threshold < 1:
            raise ConfigError(f"{cls.name}.threshold={threshold}: give a probability in (0, 1)")

    @staticmethod
    def weights(how: PositiveWeight, targets: torch.Tensor, key: str) -> torch.Tensor | None:
        """pos_weight as a tensor, one per output: auto is negatives / positives per output."""
        k = targets.shape[1]
        if how is None:
            return None
        if how == "auto":
            positives = targets.sum(dim=0).float()
            return (len(targets) - positives) / positives.clamp_min(1)
        values = how if isinstance(how, list) else [how] * k
        if len(values) != k or min(values) <= 0:
            raise ConfigError(f"{key}={how}: give one positive number, or {k} of them, or auto")
        return torch.tensor(values, dtype=torch.float32)

    # The target and output shapes -------------------------------------------------------------
    @classmethod
    def check_outputs(cls, outputs: Any, images: int, info, module: str) -> None:
        """One logit per label (binary: one, the positive class's) and image, checked on a
        module of the user's before the run starts."""
        k = info.num_outputs
        need = f"({images}, {k}): one logit per label" if k > 1 else f"({images}, 1): one logit"
        if not isinstance(outputs, torch.Tensor):
            raise KilnError(
                f"{module}.forward returns {type(outputs).__name__}; task={cls.name} needs one "
                f"tensor of shape {need}"
            )
        if outputs.dim() >= 1 and outputs.shape[0] == images and outputs[0].numel() == k:
            return
        if outputs.dim() >= 1 and outputs.shape[0] != images:
            why = (
                f"{outputs.shape[0]} rows for {images} images: a view or reshape in forward "
                "mixes the batch with the features (flatten with torch.flatten(x, 1))"
            )
        else:
            why = f"end it with nn.Linear(..., {k})"
        raise KilnError(
            f"{module}.forward returns outputs of shape {tuple(outputs.shape)} for {images} "
            f"images; task={cls.name} needs {need}: {why}"
        )

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The batch's labels as (N, K) floats, 1 where the image has the label."""
        return labels.float()

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        logits = outputs.float().reshape(len(outputs), -1)
        if logits.shape[1] != self.outputs:
            raise ConfigError(
                f"task={self.name} needs {self.outputs} output(s) per image (one logit per "
                f"label), but the model gave {tuple(outputs.shape[1:])}: end a model of your "
                f"own with nn.Linear(..., {self.outputs})"
            )
        return logits

    # Training ---------------------------------------------------------------------------------
    def train_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            self.logits(outputs), self.targets(labels), pos_weight=self.pos_weight
        )

    def eval_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Unweighted: each image's mean over labels, summed over the batch."""
        losses = F.binary_cross_entropy_with_logits(
            self.logits(outputs), self.targets(labels), reduction="none"
        )
        return losses.mean(dim=1).sum()

    def score(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per label and threshold of GRID: true positives, false positives, false negatives
        (one flat vector: batches add up)."""
        logits, truth = self.logits(outputs), self.targets(labels) > 0.5
        grid = torch.logit(GRID).to(logits.device)
        pred, truth = logits.unsqueeze(-1) >= grid, truth.unsqueeze(-1)  # (N, K, G)
        counts = [(pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)]
        return torch.stack(counts).flatten().float()

    def summarize(self, sums: torch.Tensor, n: int) -> dict[str, float]:
        """F1 with each label at its best threshold of GRID (what the thresholds chosen after
        training will do): micro (over every label's answers) and macro (the mean per label)."""
        k, g = self.outputs, len(GRID)
        if sums.numel() != 3 * k * g:  # nothing scored yet (a fresh epoch's progress bar)
            sums = torch.zeros(3 * k * g)
        tp, fp, fn = sums.double().cpu().view(3, k, g)
        f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
        best = f1.argmax(dim=1, keepdim=True)  # each label's threshold
        tp, fp, fn = (c.gather(1, best).sum() for c in (tp, fp, fn))
        micro = float(2 * tp / (2 * tp + fp + fn).clamp_min(1))
        macro = float(f1.gather(1, best).mean())
        return self.logged(micro, macro, 1 - float(fp + fn) / max(n, 1))

    def logged(self, micro_f1: float, macro_f1: float, accuracy: float) -> dict[str, float]:
        """What an epoch logs; `accuracy` is right answers per image (meant for one label)."""
        return {"f1": micro_f1, "f1_macro": macro_f1}

    # Thresholds -------------------------------------------------------------------------------
    @torch.inference_mode()
    def answers(self, net, loader, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor, float]:
        """(probabilities, targets, summed loss) over a loader, on the CPU."""
        probs, targets, loss = [], [], 0.0
        for x, y in loader:
            logits = self.logits(infer(net, x, tta))
            loss += float(self.eval_loss(logits, y))
            probs.append(logits.sigmoid().cpu())
            targets.append(self.targets(y).cpu())
        if not probs:
            return torch.zeros(0, self.outputs), torch.zeros(0, self.outputs), 0.0
        return torch.cat(probs), torch.cat(targets), loss

    def choose_thresholds(self, net, val, normalize, device, tta: str = "none") -> list[float]:
        """The fixed threshold (`<task>.threshold`), else each output's F1-optimal one on the
        validation split."""
        from kiln.data import make_loader
        from kiln.tasks.multilabel.metrics import DEFAULT_THRESHOLD, f1_thresholds

        if self.threshold is not None:
            return [self.threshold] * self.outputs
        if val is None or len(val) == 0:
            return [DEFAULT_THRESHOLD] * self.outputs
        net.eval()
        probs, targets, _ = self.answers(net, make_loader(val, 512, normalize, device), tta)
        return f1_thresholds(probs, targets)

    # Evaluation and report --------------------------------------------------------------------
    def evaluate(self, ctx: StepContext, loader, info) -> dict[str, Any]:
        """The metrics at the run's thresholds (info.json), or, before they are saved (the test
        evaluation that ends training), at the ones the validation split gives."""
        ctx.model.eval()
        thresholds = info.thresholds
        if thresholds is None:
            val = ctx.data.val if ctx.data is not None else None
            thresholds = self.choose_thresholds(ctx.net, val, ctx.normalize, ctx.device, ctx.tta)
        probs, targets, loss = self.answers(ctx.net, loader, ctx.tta)
        result = self.metrics(probs, targets, info, thresholds)
        return {**result, "loss": loss / max(len(targets), 1)}

    def metrics(self, probs, targets, info, thresholds: list[float]) -> dict[str, Any]:
        from kiln.tasks.multilabel.metrics import multilabel_metrics

        return multilabel_metrics(probs, targets, info.classes, thresholds)

    def after_fit(self, run, model, bundle, device) -> dict[str, str]:
        """The thresholds into info.json (what predict, export and serve answer with), then the
        report (run.report)."""
        from kiln.data import Normalize

        info = run.data_info()
        normalize = Normalize(info.mean, info.std, device)
        tta = run.load_config().model.tta
        thresholds = self.choose_thresholds(model, bundle.val, normalize, device, tta)
        run.update_info(thresholds=thresholds)
        if self.threshold is not None:
            how = "fixed"
        elif bundle.val is None or len(bundle.val) == 0:
            how = "the default: no validation split to choose them on"
        else:
            how = "F1-optimal on the validation split"
        done = {"Thresholds": f"{self.describe(thresholds, info)} ({how}), in info.json"}
        if run.load_config().run.report:
            done["Report"] = str(self.report(run, model, bundle, device))
        return done

    @staticmethod
    def output_names(info) -> list[str]:
        """What each output answers: a label each (binary: the positive class)."""
        return info.classes

    def describe(self, thresholds: list[float], info) -> str:
        names = self.output_names(info)
        pairs = [f"{name} {t:.2f}" for name, t in zip(names, thresholds, strict=True)]
        return ", ".join(pairs[:6]) + (f", ... ({len(pairs)} labels)" if len(pairs) > 6 else "")

    def report(self, run, model, bundle, device, checkpoint: str = "best") -> Path:
        from kiln.tasks.multilabel.report import write_report

        return write_report(self, run, model, bundle, device, checkpoint)

    @classmethod
    def print_eval(cls, result: dict[str, Any], console) -> None:
        from kiln.tasks.multilabel.report import print_eval

        print_eval(result, console)


@register_task(
    "multilabel",
    "several labels per image (data.label_sep): a sigmoid per label, F1, mAP; thresholds chosen "
    "on validation",
)  # fmt: skip
class MultiLabelTask(SigmoidTask):
    test_key = "f1_micro"
    Options = MultilabelOptions

    @classmethod
    def build(cls, cfg, data, device) -> MultiLabelTask:
        labels = data.train.labels
        if not is_multi_hot(labels):
            raise ConfigError(
                "task=multilabel needs a set of labels per image: a CSV whose label cells list "
                "them, e.g. `3;7`, read with data.name=csv data.label_sep=';' (`kiln data make "
                "mnist-pairs` makes one); one class per image is task=classify or task=binary"
            )
        o = cls.options(cfg)
        weights = cls.weights(o.pos_weight, labels, "multilabel.pos_weight")
        threshold = None if o.threshold == "auto" else o.threshold
        return cls(labels.shape[1], None if weights is None else weights.to(device), threshold)

    def sample_weights(self, cfg, data) -> torch.Tensor | None:
        if cfg.data.balance != "none":
            raise ConfigError(
                f"data.balance={cfg.data.balance} balances one class per image; with several "
                "labels per image weigh each label's positives: multilabel.pos_weight=auto"
            )
        return None

    @classmethod
    def headline(cls, result: dict[str, Any]) -> str:
        if "f1_micro" not in result:
            return ""
        return f"micro F1 {result['f1_micro']:.4f}, mAP {result['map']:.4f}"

    # Prediction and export --------------------------------------------------------------------
    @staticmethod
    def predictions(outputs: torch.Tensor, info, top_k: int = 5) -> list[dict]:
        """The labels at or above their thresholds, most probable first, and the top-k labels
        by probability (either side of their thresholds)."""
        from kiln.tasks.multilabel.answers import label_sets

        return label_sets(outputs, info, top_k)

    @classmethod
    def show_answer(cls, answer: dict[str, Any]) -> str:
        given = ", ".join(f"{e['label']} {e['probability']:.1%}" for e in answer["labels"])
        if not given:
            best = answer["top_k"][0]
            given = f"no label above its threshold (likeliest {best['label']} "
            given += f"{best['probability']:.1%})"
        return f"{answer.get('file', '-')}: {given}"

    @classmethod
    def export_spec(cls, cfg, info) -> dict[str, Any]:
        return {"output": {
            "name": "logits", "shape": ["batch", len(info.classes)], "sigmoid": False,
            "thresholds": info.thresholds,
            "answer": "every label whose sigmoid(logit) reaches its threshold",
        }}  # fmt: skip

    @classmethod
    def agreement(cls, reference: torch.Tensor, exported: torch.Tensor) -> float:
        """The share of images given the same labels (at probability 0.5)."""
        return ((reference > 0) == (exported > 0)).all(dim=1).float().mean().item()

    @classmethod
    def accuracy(cls, outputs: torch.Tensor, labels: torch.Tensor) -> float:
        """The exact-match ratio at probability 0.5."""
        return ((outputs > 0) == labels.bool()).all(dim=1).float().mean().item()
