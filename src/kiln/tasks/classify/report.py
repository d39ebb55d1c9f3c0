"""What a classification run shows: its report (test metrics per class, the test split's figures)
and `kiln eval`'s tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.evaluate.plots import best_row, read_metrics
from kiln.evaluate.report import (
    no_test_section,
    section_intro,
    table,
    write_run_report,
)  # fmt: skip
from kiln.tasks.classify.plots import write_plots
from kiln.tasks.common import eval_file, eval_title, read_eval

FIGURES = (
    ("confusion", "Confusion matrix on the test split, each row normalized to 1."),
    ("per_class", "Precision, recall and F1 per class on the test split."),
    ("samples", "Test images with the predicted class and its probability; wrong in red."),
    ("mistakes", "The test images with the highest loss: predicted and true class."),
    ("explained", "Why: the highest-loss test images with heat maps of what drove the predicted "
     "class and of what speaks for the true class (red: most)."),
)  # fmt: skip
CURVES = "Loss, accuracy and learning rate per epoch; the dashed line marks the best epoch."
TEST_METRICS = (
    "accuracy", "loss", "precision_macro", "recall_macro", "f1_macro",
    "precision_weighted", "recall_weighted", "f1_weighted",
)  # fmt: skip


def write_report(run, model, bundle, device, checkpoint: str = "best", predictions=None) -> Path:
    """The plots (curves and the test split's figures, from `predictions` when the test
    evaluation kept them), then RUN/report.html."""
    plots = write_plots(run.path, model, bundle, device, checkpoint, predictions)
    test = read_eval(run)
    rows = read_metrics(run)
    best = best_row(rows, *run.monitored())
    overview = []
    if best is not None and "val_acc" in best:
        overview.append(("Val accuracy, best epoch", f"{best['val_acc']:.2%}"))
    if test is not None and "accuracy" in test:
        overview.append(("Test accuracy", f"{test['accuracy']:.2%} ({test['samples']:,} images)"))
    figures = "".join(figure_html(plots, name, caption) for name, caption in FIGURES)
    return write_run_report(
        run, model, plots, test_section=test_section(test) + figures, checkpoint=checkpoint,
        overview=overview, training=[("curves", CURVES)],
    )  # fmt: skip


def figure_html(plots: dict[str, Path], name: str, caption: str) -> str:
    from kiln.evaluate.report import figure

    return figure(plots.get(name), caption)


def test_section(test: dict[str, Any] | None) -> str:
    if test is None:
        return no_test_section()
    intro = section_intro(test, f"{test['samples']:,} test images", "")
    overall = table(["metric", "value"], ([k, f"{test[k]:.4f}"] for k in TEST_METRICS if k in test))
    per_class = table(
        ["class", "precision", "recall", "F1", "support"],
        (
            [r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}",
             f"{r['support']:,}"]
            for r in test.get("per_class", [])
        ),
    )  # fmt: skip
    return f"<h2>Test</h2>\n{intro}\n{overall}\n<h3>Per class</h3>\n{per_class}"


def calibration_keys(result: dict) -> list[str]:
    """Top-k accuracy (when the classes make it meaningful) and expected calibration error."""
    return [k for k in result if (k.startswith("top") and k.endswith("_accuracy")) or k == "ece"]


def print_eval(result: dict, console) -> None:
    """`kiln eval` of a classifier: overall metrics, per class, and the confusion matrix."""
    from rich.table import Table

    console.print(eval_title(result, "samples"))
    summary = Table("metric", "value")
    keys = ("accuracy", *calibration_keys(result), "loss", "precision_macro", "recall_macro",
            "f1_macro", "precision_weighted", "recall_weighted", "f1_weighted")  # fmt: skip
    for key in keys:
        summary.add_row(key, f"{result[key]:.4f}")
    console.print(summary)
    per_class = Table("class", "precision", "recall", "f1", "support")
    for row in result["per_class"]:
        per_class.add_row(row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}",
                          f"{row['f1']:.4f}", str(row["support"]))  # fmt: skip
    console.print(per_class)
    names = [r["class"] for r in result["per_class"]]
    cm = Table("true \\ pred", *names, title="confusion matrix")
    for name, counts in zip(names, result["confusion_matrix"], strict=True):
        cm.add_row(name, *map(str, counts))
    console.print(cm)
    console.print(f"saved to {eval_file(result)}")
