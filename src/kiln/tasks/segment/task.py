"""Semantic segmentation: a class for every pixel of an image (or voxel of a volume).

The data are images with masks (`data.name=seg-folder`, kiln/data/masks.py); the model scores
every class at every pixel (`model=unet`). The loss adds two views of the same mistakes:

    segment.ce_weight   x cross-entropy, averaged over pixels (as in classification, per pixel)
    segment.dice_weight x (1 - soft Dice), averaged over classes: each class counts the same
                          however few pixels it has (a small digit as much as the background)

The headline metric is the mean IoU over classes (`miou`, higher is better); the log also shows
mean Dice and pixel accuracy. All come from a confusion matrix of pixels summed over a split
(metrics.py), so they are exact, not averages of per-batch values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kiln.data.batch_augment import IGNORE, per_sample_only
from kiln.errors import ConfigError
from kiln.models.tta import infer
from kiln.tasks.base import StepContext, Task
from kiln.tasks.common import ClassScores, check_same_outputs, distilled
from kiln.tasks.registry import register_task
from kiln.tasks.segment.metrics import confusion_matrix, metrics_report, scores

SMOOTH = 1.0  # keeps the Dice of a class absent from both truth and prediction at 1, not 0/0


def dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 - the soft Dice of each class over the whole batch, averaged over classes."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    valid = (masks != IGNORE).unsqueeze(1)  # (N, 1, ...)
    target = F.one_hot(masks.long().where(masks != IGNORE, 0), num_classes)
    target = target.movedim(-1, 1).float() * valid  # (N, K, ...) like probs
    probs = probs * valid
    axes = (0, *range(2, logits.dim()))  # everything but the class axis
    overlap = (probs * target).sum(axes)
    sizes = probs.sum(axes) + target.sum(axes)
    return 1 - ((2 * overlap + SMOOTH) / (sizes + SMOOTH)).mean()


class SegmentOptions(BaseModel):
    """task=segment's own config section (`segment:`)."""

    model_config = ConfigDict(extra="forbid")
    dice_weight: float = Field(1.0, ge=0.0, description="weight of the Dice loss")
    ce_weight: float = Field(1.0, ge=0.0, description="weight of cross-entropy")


@register_task("segment", "a class per pixel (data.name=seg-folder, model=unet): Dice + CE, mIoU")
class SegmentTask(ClassScores, Task):
    metric = "miou"
    higher_is_better = True
    models = ("unet",)
    Options = SegmentOptions

    def __init__(
        self,
        num_classes: int,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        label_smoothing: float = 0.0,
    ):
        self.num_classes = num_classes
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.label_smoothing = label_smoothing

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.train.loss != "auto":
            raise ConfigError(
                f"train.loss={cfg.train.loss} is for task=regress; segment uses Dice + "
                "cross-entropy, weighed by segment.dice_weight and segment.ce_weight"
            )
        o = cls.options(cfg)
        if o.ce_weight == 0 and o.dice_weight == 0:
            raise ConfigError(
                "segment.ce_weight and segment.dice_weight are both 0: nothing to learn"
            )

    @classmethod
    def build(cls, cfg, data, device) -> SegmentTask:
        labels = data.train.labels
        if labels.dim() < 3 or labels.is_floating_point():
            raise ConfigError(
                "task=segment needs a mask per image: data.name=seg-folder data.root=FOLDER "
                "(FOLDER/train/images, FOLDER/train/masks; `kiln data make mnist-seg` makes one)"
            )
        check_augment(cfg.data.augment, data)
        o = cls.options(cfg)
        return cls(data.info.num_classes, o.ce_weight, o.dice_weight, cfg.train.label_smoothing)

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss: weighted cross-entropy + Dice."""
        if logits.dim() != masks.dim() + 1 or logits.shape[2:] != masks.shape[1:]:
            raise ConfigError(
                f"task=segment needs a model that scores every pixel (model=unet): it gave "
                f"outputs of shape {tuple(logits.shape)} for masks of shape {tuple(masks.shape)}"
            )
        total = torch.zeros((), device=logits.device)
        if self.ce_weight:
            ce = F.cross_entropy(logits.float(), masks.long(), ignore_index=IGNORE,
                                 label_smoothing=self.label_smoothing)  # fmt: skip
            total = total + self.ce_weight * ce
        if self.dice_weight:
            total = total + self.dice_weight * dice_loss(logits, masks)
        return total

    def train_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, masks)

    def eval_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, masks) * len(masks)  # summed over the batch's images

    def score(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The batch's confusion matrix of pixels, flattened (the trainer sums these)."""
        return confusion_matrix(logits.argmax(dim=1), masks, self.num_classes).flatten()

    def summarize(self, score_sum: torch.Tensor, n: int) -> dict[str, float]:
        k = self.num_classes
        if score_sum.numel() != k * k:  # no batch scored yet (a fresh epoch's progress bar)
            return {"miou": 0.0, "dice": 0.0, "pixel_acc": 0.0}
        s = scores(score_sum.view(k, k))
        return {"miou": s["miou"], "dice": s["mean_dice"], "pixel_acc": s["pixel_acc"]}

    @classmethod
    def check_teacher(cls, teacher_cfg, teacher_info, info, where: str) -> None:
        check_same_outputs(cls.name, teacher_cfg, teacher_info, info, where)

    def distill_loss(self, outputs, teacher, loss, distill) -> torch.Tensor:
        """KL on class scores softened by distill.temperature, pixel by pixel, plus the labels'
        loss."""
        return distilled(outputs, teacher, loss, distill)

    # Evaluation and report --------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, ctx: StepContext, loader, info) -> dict[str, Any]:
        """Per-class IoU and Dice, mean IoU and Dice, pixel accuracy, the loss."""
        ctx.model.eval()
        k = info.num_classes
        confusion = torch.zeros(k, k, dtype=torch.float64)
        loss, n = 0.0, 0
        for x, y in loader:
            logits = infer(ctx.net, x, ctx.tta).float()
            loss += float(self.eval_loss(logits, y))
            confusion += confusion_matrix(logits.argmax(dim=1), y, k).cpu().double()
            n += len(y)
        return {**metrics_report(confusion, info.classes, n), "loss": loss / max(n, 1)}

    @classmethod
    def headline(cls, result: dict[str, Any]) -> str:
        return f"mean IoU {result['miou']:.4f}" if "miou" in result else ""

    @classmethod
    def print_eval(cls, result: dict[str, Any], console) -> None:
        from kiln.tasks.segment.report import print_eval

        print_eval(result, console)

    def after_fit(self, run, model, bundle, device) -> dict[str, str]:
        """plots/curves.png and plots/segment_samples.png (test images, true and predicted),
        then report.html (run.report)."""
        if run.load_config().run.report:
            return {"Report": str(self.report(run, model, bundle, device))}
        from kiln.tasks.segment.report import write_plots

        return {"Plots": ", ".join(str(p) for p in write_plots(run, model, bundle, device))}

    def report(self, run, model, bundle, device, checkpoint: str = "best") -> Path:
        from kiln.tasks.segment.report import write_report

        return write_report(run, model, bundle, device, checkpoint)

    # Prediction and export --------------------------------------------------------------------
    @classmethod
    def read_input(cls, item, info) -> torch.Tensor:
        """An image at its own size (a U-Net takes any), or a volume."""
        from kiln.tasks.segment.masks import read_input

        return read_input(item, info)

    @classmethod
    def input_files(cls, paths, info) -> list[Path]:
        from kiln.tasks.segment.masks import expand_inputs

        return expand_inputs(paths, volumes=info.depth is not None)

    @staticmethod
    def predictions(outputs: torch.Tensor, info, top_k: int = 5) -> list[dict]:
        """Each image's mask of class indices (nested lists) and the share of pixels of each
        class found."""
        from kiln.tasks.segment.masks import class_shares

        masks = outputs.argmax(dim=1).to(torch.uint8).cpu()
        return [{"mask": m.tolist(), "classes": class_shares(m, info.classes)} for m in masks]

    @classmethod
    def python_answer(cls, answers: list[dict], outputs: list[torch.Tensor], single: bool):
        """kiln.load(RUN).predict: a mask tensor (H, W) per image, the size of the image."""
        masks = [o.argmax(dim=0).to(torch.uint8).cpu() for o in outputs]  # (K, ...) each
        return masks[0] if single else masks

    @classmethod
    def show_answer(cls, answer: dict[str, Any]) -> str:
        shares = ", ".join(f"{n} {s:.1%}" for n, s in list(answer["classes"].items())[:4])
        return f"{answer['file']} -> {answer['mask']}  ({shares})"

    @classmethod
    def serve_answer(cls, answer: dict[str, Any]) -> dict[str, Any]:
        """The mask travels as a PNG (base64) over HTTP."""
        import base64

        from kiln.evaluate.images import png_bytes

        mask = torch.tensor(answer.pop("mask"), dtype=torch.uint8)
        return {**answer, "mask_png": base64.b64encode(png_bytes(mask)).decode("ascii")}

    @classmethod
    def predict_files(cls, predictor, files, output=None, overlay=False, top_k=3) -> list[dict]:
        """Masks written to OUTPUT (default RUN/predictions), one per input file."""
        from kiln.tasks.segment.masks import write_masks

        folder = predictor.source if predictor.source.is_dir() else predictor.source.parent
        out = Path(output) if output is not None else folder / "predictions"
        return write_masks(predictor, files, out, overlay)

    @classmethod
    def export_spec(cls, cfg, info) -> dict[str, Any]:
        return {"output": {"name": "logits", "shape": ["batch", len(info.classes),
                           *info.input_shape[1:]], "softmax": False, "per": "pixel"}}  # fmt: skip

    # Explanation ------------------------------------------------------------------------------
    explains = True

    @classmethod
    def explain(cls, model, inputs, info, top_k=3, method="auto", targets=None) -> list[list]:
        """Per class found in the image (the top_k by pixels): a heat map of what drove the
        class's mean score over the pixels given to it."""
        from kiln.evaluate.explain import Explanation, heat_maps
        from kiln.tasks.classify.task import black_image

        if inputs.dim() != 4:
            raise ConfigError("explanations are heat maps over 2-D images; this run has volumes")
        with torch.no_grad():
            found = model(inputs).float().argmax(dim=1)  # (N, H, W)
        answers = []
        for n in range(len(inputs)):
            shares = torch.bincount(found[n].flatten(), minlength=info.num_classes).float()
            shares = shares / shares.sum()
            row = (
                targets[n]
                if targets is not None
                else [c for c in shares.argsort(descending=True).tolist() if shares[c] > 0][:top_k]
            )
            masks = {c: (found[n : n + 1] == c).float() for c in row}

            def score(out, c, masks=masks):  # the class's mean logit over its pixels
                return (out[:, c] * masks[c]).sum(dim=(1, 2)) / masks[c].sum().clamp_min(1)

            x = inputs[n : n + 1]
            maps, name = heat_maps(model, x, score, torch.tensor([row]), black_image(info, x),
                                   method)  # fmt: skip
            answers.append([
                Explanation(info.classes[c], round(float(shares[c]), 6), maps[0, j].cpu(), name)
                for j, c in enumerate(row)
            ])  # fmt: skip
        return answers


def check_augment(augment, data) -> None:
    """data.augment steps must move a mask with its image: the batch steps on data in memory."""
    from kiln.data.transforms import resolve_augment

    steps = resolve_augment(augment)
    if not steps:
        return
    per_sample = per_sample_only(steps)
    if per_sample:
        raise ConfigError(
            f"data.augment: {', '.join(per_sample)} would change the images but not their masks; "
            "task=segment takes flip, vflip, crop (integer padding), translate and cutout"
        )
    if data.placement is not None and not data.placement.in_memory:
        raise ConfigError(
            "data.augment with task=segment runs on whole batches in memory, but this data is "
            f"not in memory ({data.placement.reason}); set data.memory=true or data.augment=none"
        )
    names = [name for step in steps for name in step]
    if data.info.depth is not None and any(n not in ("flip", "vflip") for n in names):
        raise ConfigError(f"data.augment: volumes take flip and vflip only, got {', '.join(names)}")
