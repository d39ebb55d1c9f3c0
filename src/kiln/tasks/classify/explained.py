"""plots/explained.png: why the model got its worst validation images wrong. The highest-loss
images (those of mistakes.png), each with a heat map of what drove the class it predicted and of
what speaks for the true class (kiln.evaluate.explain: Grad-CAM, or integrated gradients)."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from kiln.data.images import normalize
from kiln.evaluate.explain import overlay

COLUMNS = 8


def explained_figure(model: torch.nn.Module, pred, split, info, device) -> Figure | None:
    """Three rows: the images, the predicted class's map, the true class's map; None for inputs
    that are not images (table rows)."""
    from kiln.tasks.classify.plots import _short, show_image
    from kiln.tasks.classify.task import ClassifyTask

    if info.features or min(info.height, info.width) < 2 or len(pred.labels) == 0:
        return None
    worst = pred.losses.topk(min(COLUMNS, len(pred.labels))).indices.tolist()
    images = torch.stack([split.image(int(pred.index[i])) for i in worst])
    shape = (1, -1, 1, 1)
    x = normalize(images, torch.tensor(info.mean).view(shape), torch.tensor(info.std).view(shape))
    targets = [[int(pred.preds[i]), int(pred.labels[i])] for i in worst]
    explained = ClassifyTask.explain(model.eval(), x.to(device), info, targets=targets)
    fig = Figure(figsize=(len(worst) * 1.6, 3 * 1.75 + 0.5))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88, hspace=0.45, wspace=0.1)
    axes = fig.subplots(3, len(worst), squeeze=False)
    for column, (image, (predicted, true)) in enumerate(zip(images, explained, strict=True)):
        show_image(axes[0][column], image)
        axes[0][column].set_title(f"true {_short(true.label)}", fontsize=7)
        for row, e in ((1, predicted), (2, true)):
            show_image(axes[row][column], overlay(image, e.heat, min_side=1))
            axes[row][column].set_title(f"{'pred' if row == 1 else 'true'} {_short(e.label)} "
                                        f"{e.score:.0%}", fontsize=7)  # fmt: skip
    fig.suptitle(
        f"Why: the highest-loss validation images, what drove the predicted class (middle) and "
        f"what speaks for the true one (bottom); {explained[0][0].method}",
        fontsize=9,
    )
    return fig
