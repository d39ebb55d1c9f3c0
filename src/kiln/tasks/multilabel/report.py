"""What a sigmoid classifier's run shows (task=binary, task=multilabel): RUN/plots/ and the report,
and `kiln eval`'s tables.

plots/: curves.png (loss and F1 per epoch), pr_curves.png and roc_curves.png (one curve
per label, or the positive class's, with the chosen threshold's point marked), per_label.png
(multi-label: precision, recall and F1 per label at the thresholds) and samples.png (images with
the labels given and their probabilities; wrong answers in red). All from the test split, capped
at MAX_SAMPLES images: the thresholds were chosen on the validation split, so the test split is
the fair place to look at them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from kiln.data import Normalize, make_loader
from kiln.data.splits import capped
from kiln.evaluate.grid import Cell, save_grid
from kiln.evaluate.plots import save, write_curves
from kiln.evaluate.report import figure, no_test_section, section_intro, table, write_run_report
from kiln.tasks.classify.plots import GRID_COLS, GRID_ROWS
from kiln.tasks.common import eval_file, eval_title, read_eval
from kiln.tasks.multilabel.metrics import decide, pr_curve, roc_curve

MAX_SAMPLES = 10_000
MAX_LEGEND = 12  # curves named in a legend; more labels are drawn unnamed
FIGURES = (
    ("pr_curves", "Precision against recall as the threshold sweeps, test split; the dot is the "
     "chosen threshold. The area is the average precision (AP)."),
    ("roc_curves", "True against false positive rate as the threshold sweeps, test split; the "
     "dot is the chosen threshold."),
    ("per_label", "Precision, recall and F1 per label at the chosen thresholds, test split."),
    ("samples", "Test images with the labels given and their probabilities; wrong ones in red, "
     "with the true labels."),
)  # fmt: skip


def write_plots(task, run, model, bundle, device) -> dict[str, Path]:
    info, out = run.data_info(), run.path / "plots"
    written = write_curves(run, "f1", "F1 (each label at its best threshold)")
    split = bundle.test
    if len(split) == 0:
        return written
    _, split = capped(split, MAX_SAMPLES)
    normalize = Normalize(info.mean, info.std, device)
    loader = make_loader(split, 512, normalize, device)
    probs, targets, _ = task.answers(model.eval(), loader, run.load_config().model.tta)
    thresholds = info.thresholds or [0.5] * probs.shape[1]
    names = task.output_names(info)
    written["pr_curves"] = save(curves_figure(probs, targets, names, thresholds, "pr"),
                                out / "pr_curves.png")  # fmt: skip
    written["roc_curves"] = save(curves_figure(probs, targets, names, thresholds, "roc"),
                                 out / "roc_curves.png")  # fmt: skip
    if len(names) > 1:
        written["per_label"] = save(per_label_figure(read_eval(run)), out / "per_label.png")
    written["samples"] = samples_grid(probs, targets, thresholds, split, names, info.classes,
                                      out / "samples.png")  # fmt: skip
    return written


def curves_figure(probs, targets, names: list[str], thresholds: list[float], kind: str) -> Figure:
    """PR (kind 'pr') or ROC ('roc') curves, one per label, the chosen thresholds marked."""
    fig = Figure(figsize=(5.6, 4.8), layout="constrained")
    ax = fig.subplots()
    preds = decide(probs, thresholds)
    for k, name in enumerate(names):
        truth = targets[:, k].long()
        if truth.min() == truth.max():
            continue  # one class only in this split: no curve to draw
        tp = int((preds[:, k] & truth).sum())
        if kind == "pr":
            x, y = pr_curve(probs[:, k], truth)
            point = (tp / max(int(truth.sum()), 1), tp / max(int(preds[:, k].sum()), 1))
        else:
            x, y = roc_curve(probs[:, k], truth)
            negatives = max(int((1 - truth).sum()), 1)
            point = (int((preds[:, k] & (1 - truth)).sum()) / negatives, tp / int(truth.sum()))
        area = torch.trapezoid(y, x).abs().item() if kind == "roc" else None
        label = name if area is None else f"{name} (AUC {area:.3f})"
        (line,) = ax.plot(x.numpy(), y.numpy(), linewidth=1.2,
                          label=label if k < MAX_LEGEND else None)  # fmt: skip
        ax.plot(*point, "o", color=line.get_color(), markersize=5)
    if kind == "pr":
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, test split")
    else:
        ax.plot([0, 1], [0, 1], ":", color="gray", linewidth=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title="ROC, test split")  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left" if kind == "pr" else "lower right")
    return fig


def per_label_figure(test: dict[str, Any] | None) -> Figure:
    rows = (test or {}).get("per_label", [])
    fig = Figure(figsize=(min(max(6.0, 0.6 * len(rows) + 2), 30), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.27
    for n, key in enumerate(("precision", "recall", "f1")):
        values = [r[key] for r in rows]
        ax.bar([i + (n - 1) * width for i in range(len(rows))], values, width, label=key)
    ax.set_xticks(range(len(rows)), labels=[r["label"] for r in rows], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_title("Per label, at the chosen thresholds (test split)")
    ax.legend(loc="upper right", ncols=3, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def samples_grid(probs, targets, thresholds, split, names, classes, path: Path) -> Path:
    """The first test images with the labels given (Pillow grid, as classification's)."""
    preds = decide(probs, thresholds)
    items = []
    for row in range(min(GRID_ROWS * GRID_COLS, len(probs))):
        wrong = bool((preds[row] != targets[row].long()).any())
        if len(names) == 1:  # binary: the class given, and its probability
            p, yes = float(probs[row, 0]), bool(preds[row, 0])
            caption = f"{classes[int(yes)]} {p if yes else 1 - p:.0%}"
            if wrong:
                caption += f"\ntrue: {classes[int(targets[row, 0])]}"
        else:
            given = preds[row].nonzero().flatten().tolist()
            caption = " ".join(f"{names[k]} {float(probs[row, k]):.0%}" for k in given) or "none"
            if wrong:
                true = targets[row].nonzero().flatten().tolist()
                caption += "\ntrue: " + (" ".join(names[k] for k in true) or "none")
        items.append(Cell(split.image(row), caption, wrong))
    wrong = int((preds != targets.long()).any(dim=1).sum())
    title = f"Test answers ({wrong:,} of {len(probs):,} images wrong, in red)"
    return save_grid(items, title, path, GRID_COLS)


def write_report(task, run, model, bundle, device, checkpoint: str = "best") -> Path:
    plots = write_plots(task, run, model, bundle, device)
    test = read_eval(run)
    overview = []
    if run.data_info().thresholds is not None:
        overview.append(("Thresholds", task.describe(run.data_info().thresholds, run.data_info())))
    figures = "".join(figure(plots.get(name), caption) for name, caption in FIGURES)
    return write_run_report(
        run, model, plots, test_section=test_section(test), checkpoint=checkpoint,
        headline=task.headline(test or {}), overview=overview,
        training=[("curves", "Loss and F1 per epoch (each label at its best threshold of 0.05, "
                   "0.10, ..., 0.95); the dashed line marks the best epoch.")],
        sections=["<h2>Test split, in pictures</h2>", figures],
    )  # fmt: skip


def overall(test: dict[str, Any]) -> list[tuple[str, str]]:
    """The scalar numbers of an evaluation, formatted."""
    skip = ("run", "split", "checkpoint", "epoch", "samples")
    return [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in test.items()
            if k not in skip and isinstance(v, (int, float, str)) and v is not None]  # fmt: skip


def test_section(test: dict[str, Any] | None) -> str:
    if test is None:
        return no_test_section()
    intro = section_intro(test, f"{test['samples']:,} test images", ", at the thresholds chosen "
                          "on the validation split")  # fmt: skip
    parts = [f"<h2>Test</h2>\n{intro}", table(["metric", "value"], map(list, overall(test)))]
    if "per_label" in test:
        parts.append("<h3>Per label</h3>")
        parts.append(table(
            ["label", "threshold", "precision", "recall", "F1", "AP", "support"],
            ([r["label"], *(f"{r[k]:.4f}" for k in ("threshold", "precision", "recall", "f1",
              "ap")), f"{r['support']:,}"] for r in test["per_label"]),
        ))  # fmt: skip
    if "confusion_matrix" in test:
        (tn, fp), (fn, tp) = test["confusion_matrix"]
        negative, positive = list(test["support"])
        parts.append("<h3>Confusion matrix</h3>")
        parts.append(
            table(
                ["true \\ given", negative, positive],
                [[negative, str(tn), str(fp)], [positive, str(fn), str(tp)]],
            )
        )
    return "\n".join(parts)


def print_eval(result: dict[str, Any], console) -> None:
    """`kiln eval`: the overall numbers, then per label (or the confusion matrix)."""
    from rich.table import Table

    console.print(eval_title(result, "samples"))
    summary = Table("metric", "value")
    for key, value in overall(result):
        summary.add_row(key, value)
    console.print(summary)
    if "per_label" in result:
        per = Table("label", "threshold", "precision", "recall", "f1", "ap", "support")
        for r in result["per_label"]:
            per.add_row(r["label"], *(f"{r[k]:.4f}" for k in ("threshold", "precision", "recall",
                        "f1", "ap")), str(r["support"]))  # fmt: skip
        console.print(per)
    if "confusion_matrix" in result:
        negative, positive = list(result["support"])
        cm = Table("true \\ given", negative, positive, title="confusion matrix")
        for name, counts in zip((negative, positive), result["confusion_matrix"], strict=True):
            cm.add_row(name, *map(str, counts))
        console.print(cm)
    console.print(f"saved to {eval_file(result)}")
