"""Semantic segmentation: a class for every pixel of an image (or voxel of a volume).

The data are images with masks (`data.name=seg-folder`, kiln/data/masks.py); the model scores
every class at every pixel (`model=unet`). The loss adds two views of the same mistakes:

    train.ce_weight   x cross-entropy, averaged over pixels (as in classification, per pixel)
    train.dice_weight x (1 - soft Dice), averaged over classes: each class counts the same
                        however few pixels it has (a small digit as much as the background)

The headline metric is the mean IoU over classes (`miou`, higher is better); the log also shows
mean Dice and pixel accuracy. All come from a confusion matrix of pixels summed over a split
(kiln/evaluate/segment.py), so they are exact, not averages of per-batch values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kiln.data.batch_augment import IGNORE, per_sample_only
from kiln.errors import ConfigError
from kiln.evaluate.segment import confusion_matrix, metrics_report, scores
from kiln.models.tta import infer
from kiln.tasks.registry import register_task

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


@register_task("segment", "a class per pixel (data.name=seg-folder, model=unet): Dice + CE, mIoU")
class SegmentTask:
    metric = "miou"
    higher_is_better = True

    def __init__(
        self,
        num_classes: int,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        label_smoothing: float = 0.0,
        tta: str = "none",
    ):
        self.num_classes = num_classes
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.label_smoothing, self.tta = label_smoothing, tta

    @classmethod
    def build(cls, cfg, data, device) -> SegmentTask:
        labels = data.train.labels
        if labels.dim() < 3 or labels.is_floating_point():
            raise ConfigError(
                "task=segment needs a mask per image: data.name=seg-folder data.root=FOLDER "
                "(FOLDER/train/images, FOLDER/train/masks; `kiln data make mnist-seg` makes one)"
            )
        check_augment(cfg.data.augment, data)
        t = cfg.train
        if t.loss != "auto":
            raise ConfigError(
                f"train.loss={t.loss} is for task=regress; segment uses Dice + cross-entropy, "
                "weighed by train.dice_weight and train.ce_weight"
            )
        if t.ce_weight == 0 and t.dice_weight == 0:
            raise ConfigError("train.ce_weight and train.dice_weight are both 0: nothing to learn")
        return cls(data.info.num_classes, t.ce_weight, t.dice_weight, t.label_smoothing,
                   cfg.model.tta)  # fmt: skip

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

    def after_fit(self, run, model, bundle, device) -> dict[str, str]:
        """plots/curves.png and plots/segment_samples.png (test images, true and predicted),
        then report.html (run.report)."""
        if run.load_config().run.report:
            return {"Report": str(SegmentTask.report(run, model, bundle, device))}
        return {"Plots": ", ".join(str(p) for p in SegmentTask.plots(run, model, bundle, device))}

    @staticmethod
    def plots(run, model, bundle, device, n: int = 6) -> list:
        from kiln.data import Normalize
        from kiln.evaluate.plots import write_curves
        from kiln.evaluate.segment import write_samples

        info, tta = run.data_info(), run.load_config().model.tta
        images, masks = bundle.test.images[:n], bundle.test.labels[:n]
        x = Normalize(info.mean, info.std, device)(images.to(device))
        model.eval()
        with torch.inference_mode():
            pred = infer(model, x, tta).argmax(dim=1).cpu()
        samples = write_samples(run.path / "plots" / "segment_samples.png", images, masks, pred,
                                info.classes)  # fmt: skip
        return [*write_curves(run).values(), samples]

    @staticmethod
    def report(run, model, bundle, device) -> Path:
        """The plots, then RUN/report.html (what `kiln report RUN` calls)."""
        from kiln.evaluate.report import write_report

        SegmentTask.plots(run, model, bundle, device)
        return write_report(run.path, model=model)

    @staticmethod
    def predictions(outputs: torch.Tensor, info, top_k: int = 5) -> list[dict]:
        """What a runtime answers for class scores (N, K, ...): each image's mask of class
        indices (nested lists) and the share of pixels of each class found."""
        from kiln.predict_masks import class_shares

        masks = outputs.argmax(dim=1).to(torch.uint8).cpu()
        return [{"mask": m.tolist(), "classes": class_shares(m, info.classes)} for m in masks]

    @classmethod
    @torch.inference_mode()
    def evaluate_loader(cls, model: nn.Module, loader, info, cfg) -> dict[str, Any]:
        """`kiln eval`: per-class IoU and Dice, mean IoU and Dice, pixel accuracy, the loss."""
        t = cfg.train
        task = cls(info.num_classes, t.ce_weight, t.dice_weight, t.label_smoothing, cfg.model.tta)
        model.eval()
        k = info.num_classes
        confusion = torch.zeros(k, k, dtype=torch.float64)
        loss, n = 0.0, 0
        for x, y in loader:
            logits = infer(model, x, task.tta).float()
            loss += float(task.eval_loss(logits, y))
            confusion += confusion_matrix(logits.argmax(dim=1), y, k).cpu().double()
            n += len(y)
        return {**metrics_report(confusion, info.classes, n), "loss": loss / max(n, 1)}


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
