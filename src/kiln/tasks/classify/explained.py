"""plots/explained.png: why the model got its worst test images wrong. The highest-loss images
(those of mistakes.png), each with a heat map of what drove the class it predicted and of what
speaks for the true class (kiln.evaluate.explain: Grad-CAM, or integrated gradients), drawn as a
Pillow grid like the samples and mistakes (kiln/evaluate/grid.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from kiln.data.images import normalize
from kiln.evaluate.explain import overlay
from kiln.evaluate.grid import Cell, save_grid

COLUMNS = 8


def explained_grid(model: torch.nn.Module, pred, split, info, device, path: Path) -> Path | None:
    """Three rows: the images, the predicted class's map, the true class's map; None for inputs
    that are not images (table rows) or an empty split."""
    from kiln.tasks.classify.plots import _short
    from kiln.tasks.classify.task import ClassifyTask

    if info.features or min(info.height, info.width) < 2 or len(pred.labels) == 0:
        return None
    worst = pred.losses.topk(min(COLUMNS, len(pred.labels))).indices.tolist()
    images = torch.stack([split.image(int(pred.index[i])) for i in worst])
    shape = (1, -1, 1, 1)
    x = normalize(images, torch.tensor(info.mean).view(shape), torch.tensor(info.std).view(shape))
    targets = [[int(pred.preds[i]), int(pred.labels[i])] for i in worst]
    explained = ClassifyTask.explain(model.eval(), x.to(device), info, targets=targets)
    rows: list[list[Cell]] = [[], [], []]
    for image, (predicted, true) in zip(images, explained, strict=True):
        wrong = predicted.label != true.label
        rows[0].append(Cell(image, f"true {_short(true.label)}", wrong))
        for row, name, e in ((1, "pred", predicted), (2, "true", true)):
            rows[row].append(Cell(overlay(image, e.heat, min_side=1),
                                  f"{name} {_short(e.label)} {e.score:.0%}"))  # fmt: skip
    title = (
        f"Why ({explained[0][0].method}): the highest-loss test images; what drove the predicted "
        "class (middle row), what speaks for the true one (bottom)"
    )
    return save_grid([c for row in rows for c in row], title, path, columns=len(worst))
