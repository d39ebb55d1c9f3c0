"""A classifier's outputs on a split, kept for the report's figures: the test evaluation that ends
training makes them once, and the figures read them instead of predicting again."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kiln import data as kdata
from kiln.data import Normalize, make_loader
from kiln.data.splits import capped
from kiln.models.tta import infer

MAX_SAMPLES = 10_000  # images predicted for the figures when nothing was kept, at most


@dataclass
class Predictions:
    """The model's outputs on (part of) a split; `index` points into the split."""

    index: torch.Tensor  # (n,)
    labels: torch.Tensor  # (n,)
    logits: torch.Tensor  # (n, classes)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def losses(self) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.logits, self.labels, reduction="none")


@torch.inference_mode()
def collect_logits(model: torch.nn.Module, loader, tta: str = "none"):
    """(logits, labels) over a loader, on the CPU."""
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        outs.append(infer(model, x, tta).float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


def predict_split(
    model: torch.nn.Module,
    split,
    info: kdata.DataInfo,
    device,
    batch: int,
    workers: int,
    tta: str = "none",
) -> Predictions:
    """Logits for the split, or for a fixed random MAX_SAMPLES of it when it is larger."""
    index, split = capped(split, MAX_SAMPLES)
    normalize = Normalize(info.mean, info.std, device)
    loader = make_loader(split, batch, normalize, device, workers=workers)
    logits, labels = collect_logits(model.to(device), loader, tta)
    return Predictions(index, labels, logits)
