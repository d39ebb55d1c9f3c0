"""What a segmentation run shows: the samples plot (image | true mask | predicted mask), its report
(mean IoU, Dice and pixel accuracy, then per class) and `kiln eval`'s tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kiln.data import Normalize
from kiln.data.overlay import display_image, middle, overlay, palette
from kiln.evaluate.plots import literal_text, write_curves
from kiln.evaluate.report import figure, no_test_section, section_intro, table, write_run_report
from kiln.models.tta import infer
from kiln.tasks.common import eval_file, eval_title, read_eval

SAMPLES = "Test images, their true masks and the predicted masks (the middle slice of a volume)."
TRAINING = [("curves", "Loss, miou and learning rate per epoch; the dashed line marks the best "
                       "epoch.")]  # fmt: skip


def write_plots(run, model, bundle, device, n: int = 6) -> list[Path]:
    """plots/curves.png and plots/segment_samples.png (the first test images)."""
    info, tta = run.data_info(), run.load_config().model.tta
    images, masks = bundle.test.images[:n], bundle.test.labels[:n]
    x = Normalize(info.mean, info.std, device)(images.to(device))
    model.eval()
    with torch.inference_mode():
        pred = infer(model, x, tta).argmax(dim=1).cpu()
    samples = write_samples(run.path / "plots" / "segment_samples.png", images, masks, pred,
                            info.classes)  # fmt: skip
    return [*write_curves(run, "miou").values(), samples]


def write_report(run, model, bundle, device, checkpoint: str = "best") -> Path:
    paths = write_plots(run, model, bundle, device)
    plots = {p.stem: p for p in paths}
    test = read_eval(run)
    overview = []
    if test is not None and "miou" in test:
        overview.append(("Test mean IoU, Dice", f"{test['miou']:.4f}, {test['mean_dice']:.4f} "
                         f"({test['samples']:,} images)"))  # fmt: skip
    return write_run_report(
        run, model, plots, test_section=test_section(test), checkpoint=checkpoint,
        overview=overview, training=TRAINING,
        sections=["<h2>Test predictions</h2>", figure(plots.get("segment_samples"), SAMPLES)],
    )  # fmt: skip


def test_section(test: dict[str, Any] | None) -> str:
    """Mean IoU, mean Dice, pixel accuracy, then IoU and Dice per class."""
    if test is None:
        return no_test_section()
    what = f"{test['samples']:,} test images ({test['pixels']:,} pixels)"
    note = "; IoU and Dice from the confusion of every pixel of the split"
    intro = section_intro(test, what, note)
    keys = ("miou", "mean_dice", "pixel_acc")
    overall = table(["metric", "value"], ([k, f"{test[k]:.4f}"] for k in keys))
    per_class = table(
        ["class", "IoU", "Dice", "precision", "recall", "pixels"],
        ([r["class"], shown(r["iou"]), shown(r["dice"]), shown(r["precision"]),
          shown(r["recall"]), f"{r['pixels']:,}"] for r in test.get("per_class", [])),
    )  # fmt: skip
    return f"<h2>Test</h2>\n{intro}\n{overall}\n<h3>Per class</h3>\n{per_class}"


def shown(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"  # a class absent from the split and never predicted


def print_eval(result: dict, console) -> None:
    """`kiln eval` of a segmentation run: the means, then IoU and Dice per class."""
    from rich.table import Table

    console.print(eval_title(result, "images") + f", {result['pixels']:,} pixels")
    summary = Table("metric", "value")
    for key in ("miou", "mean_dice", "pixel_acc", "loss"):
        summary.add_row(key, shown(result.get(key)))
    console.print(summary)
    per_class = Table("class", "iou", "dice", "precision", "recall", "pixels")
    for row in result["per_class"]:
        cells = (row["iou"], row["dice"], row["precision"], row["recall"])
        per_class.add_row(row["class"], *map(shown, cells), f"{row['pixels']:,}")
    console.print(per_class)
    console.print(f"saved to {eval_file(result)} (with the confusion matrix of pixels)")


def write_samples(
    path: Path, images: torch.Tensor, true: torch.Tensor, pred: torch.Tensor, classes: list[str]
) -> Path:
    """plots/segment_samples.png: per row an image, its true mask and the predicted one painted
    over it (volumes: the middle slice), with a legend of the classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = palette(len(classes))
    rows = len(images)
    legend = 0.3 + 0.2 * ((len(classes) - 2) // 6)  # inches below the panels for the legend
    height = 2.5 * rows + legend
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, height), squeeze=False)
    volumes = images.dim() == 5
    for i in range(rows):
        picture = display_image(images[i])
        panels = (picture, overlay(picture, middle(true[i]), colours),
                  overlay(picture, middle(pred[i]), colours))  # fmt: skip
        for ax, panel, title in zip(axes[i], panels, ("image", "true", "predicted"), strict=True):
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="nearest")
            ax.set_title(title + (" (middle slice)" if volumes and i == 0 else ""), fontsize=8)
            ax.axis("off")
    handles = [Patch(color=colours[k] / 255, label=name) for k, name in enumerate(classes) if k]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, max(1, len(handles))), fontsize=7)
    fig.tight_layout(rect=(0, legend / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    literal_text(fig)  # class names are text, not math
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
