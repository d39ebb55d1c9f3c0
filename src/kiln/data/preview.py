"""Looking at data before training: `kiln data show` (a labelled grid) and `kiln data stats`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kiln.data.registry import DataBundle, are_masks, is_multi_hot

IMBALANCE_WARNING = 3.0


def data_stats(bundle: DataBundle) -> dict[str, Any]:
    """Images per class and split, imbalance, sizes and modes, normalization."""
    classes = bundle.info.classes
    masks = are_masks(bundle.train.labels)  # task=segment: pixels per class, not images
    multi = is_multi_hot(bundle.train.labels)  # several labels per image
    per_split = {}
    for name in ("train", "val", "test"):
        labels = getattr(bundle, name).labels
        if masks:
            labels = labels[labels < len(classes)]  # every pixel but the ignored ones
        if multi:  # several labels per image: the images that have each label
            counts = labels.sum(dim=0).tolist()
        else:
            counts = torch.bincount(labels, minlength=len(classes)).tolist()
        per_split[name] = dict(zip(classes, counts, strict=True))
    train_counts = [c for c in per_split["train"].values()]
    smallest = min(train_counts)
    ratio = float("inf") if smallest == 0 else max(train_counts) / smallest
    return {
        "dataset": bundle.info.name,
        "classes": classes,
        "per_split": per_split,
        "totals": {  # label sets: images, not the labels they carry
            name: len(getattr(bundle, name)) if multi else sum(counts.values())
            for name, counts in per_split.items()
        },
        "counted": "pixels" if masks else "images",
        "imbalance_ratio": round(ratio, 3),
        "imbalanced": ratio > IMBALANCE_WARNING and not masks,  # Dice weighs classes alike
        "input_shape": list(bundle.info.input_shape),
        "sizes": bundle.sizes,
        "modes": bundle.modes,
        "mean": bundle.info.mean,
        "std": bundle.info.std,
        "skipped": bundle.skipped,
    }


def sample_grid(
    bundle: DataBundle,
    out: Path,
    n: int = 64,
    augment: torch.nn.Module | None = None,
    seed: int = 0,
) -> Path:
    """A labelled grid of `n` training images (augmented as training would see them if given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = bundle.train
    masks = are_masks(train.labels)
    if masks:  # masks: shown as stored (training moves them with the images)
        augment = None
    n = max(1, min(n, len(train)))
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(train), generator=generator)[:n].tolist()
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.55), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    torch.manual_seed(seed)
    for ax, index in zip(axes.flat, picks, strict=False):
        image = train.image(index)
        if masks:  # a mask, painted over its image (volumes: middle slice)
            draw_mask(ax, image, train.labels[index], bundle.info.classes)
            continue
        if augment is not None:
            image = augment(image)
        array = image.permute(1, 2, 0).numpy()
        if array.shape[2] == 1:
            ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(array)
        ax.set_title(label_text(train.labels[index], bundle.info.classes), fontsize=7)
    title = f"{bundle.info.name}: {n} training images" + (" (augmented)" if augment else "")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def label_text(label: torch.Tensor, classes: list[str]) -> str:
    """An image's class, or its labels joined by ';' when it has a set of them."""
    if label.dim() == 1:  # a multi-hot row
        return ";".join(classes[k] for k in label.nonzero().flatten().tolist()) or "(none)"
    return classes[int(label)]


def draw_mask(ax, image: torch.Tensor, mask: torch.Tensor, classes: list[str]) -> None:
    """An image with its segmentation mask painted over it, titled with the classes in it."""
    from kiln.data.overlay import display_image, middle, overlay, palette

    ax.imshow(overlay(display_image(image), middle(mask), palette(len(classes))))
    found = [classes[k] for k in mask.unique().tolist() if 0 < k < len(classes)]
    ax.set_title(", ".join(found[:3]) or classes[0], fontsize=7)
