"""RUN/report.html: one self-contained page per run (images inlined, inline CSS, no scripts), so it
opens offline, survives being mailed or archived, and never changes under the reader."""

from __future__ import annotations

import base64
import json
import platform
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

import torch

from kiln import data as kdata
from kiln.errors import KilnError, RunError
from kiln.evaluate.plots import PLOTS, best_row, read_metrics, write_plots
from kiln.io import write_text_atomic
from kiln.rundir import RunDir

CAPTIONS = {
    "curves": "Loss, accuracy and learning rate per epoch; the dashed line marks the best epoch.",
    "confusion": "Confusion matrix on the validation split, each row normalized to 1.",
    "per_class": "Precision, recall and F1 per class on the validation split.",
    "samples": "Validation images with the predicted class and its probability; wrong in red.",
    "mistakes": "The validation images with the highest loss: predicted and true class.",
    "predicted_vs_true": "Predicted against true value on the test split, one panel per target;"
    " the diagonal is a perfect answer.",
    "residuals": "Residual (predicted - true) against the predicted value on the test split.",
    "segment_samples": "Test images, their true masks and the predicted masks (the middle slice "
    "of a volume).",
}
# Per task: the heading of its figure section and the plots in it (RUN/plots/NAME.png).
TASK_FIGURES = {
    "classify": ("Validation", ("confusion", "per_class", "samples", "mistakes")),
    "regress": ("Test predictions", ("predicted_vs_true", "residuals")),
    "segment": ("Test predictions", ("segment_samples",)),
}
TEST_METRICS = (
    "accuracy", "loss", "precision_macro", "recall_macro", "f1_macro",
    "precision_weighted", "recall_weighted", "f1_weighted",
)  # fmt: skip
CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1100px; margin: 2rem auto; padding: 0 1rem; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: 0.3rem;
     margin-top: 2.2rem; }
h3 { font-size: 1rem; margin-top: 1.4rem; }
.sub, figcaption { color: #59636e; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.88rem; }
th, td { padding: 0.22rem 0.7rem; border-bottom: 1px solid #eaeef2; text-align: left; }
th { background: #f6f8fa; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { max-height: 30rem; overflow: auto; display: inline-block; }
pre { background: #f6f8fa; padding: 0.8rem; overflow: auto; font-size: 0.78rem;
      line-height: 1.35; border-radius: 6px; }
figure { margin: 1.2rem 0; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
"""


def make_report(
    run_dir: str | Path,
    model: torch.nn.Module | None = None,
    bundle: kdata.DataBundle | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str = "best",
) -> Path:
    """Plots, then the report: what `kiln report` and the end of training call."""
    from kiln.predict import load_model
    from kiln.tasks import get_task

    run = RunDir.open(run_dir)
    if model is None:
        model, _ = load_model(run, checkpoint, device)
    task = get_task(run.load_config().task)
    if hasattr(task, "report"):  # tasks other than classify make their own plots
        if bundle is None:
            bundle = kdata.build(run.load_config().data)
        return task.report(run, model, bundle, device)
    plots = write_plots(run.path, model, bundle, device, checkpoint)
    return write_report(run.path, model=model, plots=plots, checkpoint=checkpoint)


def write_report(
    run_dir: str | Path,
    model: torch.nn.Module | None = None,
    plots: dict[str, Path] | None = None,
    checkpoint: str = "best",
) -> Path:
    """Write RUN/report.html (and RUN/summary.txt) from the run directory and the given plots
    (default: whatever RUN/plots/ holds)."""
    run = RunDir.open(run_dir)
    cfg, info = run.load_config(), run.load_info()
    rows = read_metrics(run)
    heading, names = TASK_FIGURES.get(cfg.task, ("Plots", ()))
    if plots is None:
        found = {name: run.path / "plots" / f"{name}.png" for name in (*PLOTS, *names)}
        plots = {name: path for name, path in found.items() if path.is_file()}
    summary = model_summary(run, model)
    write_text_atomic(run.path / "summary.txt", summary + "\n")
    test = read_eval(run, "test")
    best = best_row(rows, cfg.train.early_stop.monitor, cfg.train.early_stop.mode)
    overview = run_overview(run, cfg, info, rows, best, test)
    body = [
        f"<h1>{escape(run.path.name)}</h1>",
        f'<p class="sub">Kiln run report, {escape(str(info.get("created", "")))}; '
        f"plots from the {escape(checkpoint)} checkpoint.</p>",
        "<h2>Run</h2>",
        key_value_table(overview),
        {"regress": regress_section, "segment": segment_section}.get(cfg.task, test_section)(test),
        "<h2>Training</h2>",
        figure(plots, "curves"),
        "<h3>Per epoch</h3>",
        epoch_table(rows),
        f"<h2>{escape(heading)}</h2>",
        *(figure(plots, name) for name in names),
        "<h2>Model</h2>",
        f"<pre>{escape(summary)}</pre>",
        "<h2>Config</h2>",
        f"<pre>{escape(run.config_path.read_text())}</pre>",
        "<h2>Versions</h2>",
        versions_table(info),
    ]
    return write_page(run, body)


def write_page(run: RunDir, body: list[str], css: str = "") -> Path:
    """RUN/report.html: the body's non-empty parts in one self-contained page."""
    path = run.path / "report.html"
    write_text_atomic(path, html_page(f"Kiln report: {run.path.name}", body, css))
    return path


def html_page(title: str, body: list[str], css: str = "") -> str:
    """One self-contained HTML page (run reports, study reports): the body's non-empty parts."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'  # no favicon request: the page makes none at all
        f"<title>{escape(title)}</title>\n<style>{CSS}{css}</style>\n"
        "</head>\n<body>\n" + "\n".join(part for part in body if part) + "\n</body>\n</html>\n"
    )


def inline_png(path: str | Path, alt: str, css_class: str = "") -> str:
    """An <img> with the PNG inlined as a data: URI, so the page needs no other file."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    attr = f' class="{css_class}"' if css_class else ""
    return f'<img{attr} src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def model_summary(run: RunDir, model: torch.nn.Module | None) -> str:
    """The per-layer table for one input; the architecture is rebuilt (no weights) if not given."""
    from kiln.models import build_model, import_run_modules
    from kiln.models.summary import summary_table

    cfg, info = run.load_config(), run.data_info()
    try:
        if model is None:
            if cfg.model.name == "custom":
                raise RunError("the model was passed in Python; Kiln cannot rebuild it")
            import_run_modules(cfg.imports, run.config_path)
            model = build_model(cfg.model, info, load=False).model
        where = next(model.parameters(), torch.empty(0)).device
        try:
            return summary_table(model, info.input_shape, batch=1)
        finally:
            model.to(where)  # torchinfo moves the model to the CPU
    except KilnError as exc:
        return f"(no model summary: {exc})"


def read_eval(run: RunDir, split: str) -> dict[str, Any] | None:
    path = run.path / f"eval-{split}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(
            f"{path} is damaged ({exc}); rewrite it with `kiln eval {run.path}`"
        ) from None


def run_overview(run, cfg, info, rows, best, test) -> list[tuple[str, str]]:
    classes = info.get("classes", [])
    shape = "x".join(map(str, info.get("input_shape", [])))
    samples = info.get("samples", {})
    split_sizes = ", ".join(f"{n:,} {name}" for name, n in samples.items())
    params = info.get("parameters")
    seconds = sum(r.get("seconds", 0.0) for r in rows)
    items = [
        ("Directory", str(run.path.resolve())),
        ("Dataset", f"{info.get('name', cfg.data.name)}: {len(classes)} classes, input {shape}"),
        ("Samples", split_sizes or "unknown"),
        ("Model", cfg.model.name),
        ("Parameters", f"{params:,}" if isinstance(params, int) else "unknown"),
        ("Epochs run", f"{len(rows)} of {cfg.train.epochs}"),
        ("Training time", duration(seconds)),
        ("Device", f"{info.get('device', cfg.train.device)}, {cfg.train.precision}"),
    ]
    if best is not None:
        monitor = cfg.train.early_stop.monitor
        items.append(("Best epoch", f"{best['epoch']:.0f} (by {monitor} = {best[monitor]:.4f})"))
        if "val_acc" in best:
            items.append(("Val accuracy, best epoch", f"{best['val_acc']:.2%}"))
    if test is not None and "accuracy" in test:
        items.append(("Test accuracy", f"{test['accuracy']:.2%} ({test['samples']:,} images)"))
    elif test is not None and "miou" in test:
        items.append(("Test mean IoU, Dice", f"{test['miou']:.4f}, {test['mean_dice']:.4f} "
                      f"({test['samples']:,} images)"))  # fmt: skip
    elif test is not None and "rmse" in test:
        items.append(("Test RMSE, R2", f"{test['rmse']:.4g}, {test['r2']:.4f} "
                      f"({test['samples']:,} samples)"))  # fmt: skip
    items += [
        ("Seed", str(info.get("seed"))),
        ("Git commit", str(info.get("git_commit") or "not a git checkout")),
        ("Command", str(info.get("command") or "")),
    ]
    return items


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def key_value_table(items: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in items)
    return f"<table>{rows}</table>"


def table(header: list[str], rows: Iterable[list[str]], numeric_from: int = 1) -> str:
    """An HTML table with every cell escaped; columns from `numeric_from` on are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(c)}</td>' if i >= numeric_from else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def test_section(test: dict[str, Any] | None) -> str:
    if test is None:
        return '<h2>Test</h2>\n<p class="sub">No eval-test.json in the run: run `kiln eval`.</p>'
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


def section_intro(test: dict[str, Any], what: str, note: str) -> str:
    """The line under a Test heading: what was evaluated (Kiln's own words and numbers), with
    which checkpoint."""
    checkpoint, epoch = escape(str(test.get("checkpoint"))), escape(str(test.get("epoch")))
    return f'<p class="sub">{what}, {checkpoint} checkpoint (epoch {epoch}){note}.</p>'


def regress_section(test: dict[str, Any] | None) -> str:
    """task=regress: RMSE, MAE and R2 overall and per target, in the targets' units."""
    if test is None:
        return test_section(test)
    what = f"{test['samples']:,} test samples"
    intro = section_intro(test, what, "; errors in the targets' own units")
    overall = table(["metric", "value"], ([k, f"{test[k]:.4g}"] for k in ("rmse", "mae", "r2")))
    per_target = table(
        ["target", "RMSE", "MAE", "R2"],
        ([t["target"], f"{t['rmse']:.4g}", f"{t['mae']:.4g}", f"{t['r2']:.4f}"]
         for t in test.get("per_target", [])),
    )  # fmt: skip
    return f"<h2>Test</h2>\n{intro}\n{overall}\n<h3>Per target</h3>\n{per_target}"


def segment_section(test: dict[str, Any] | None) -> str:
    """task=segment: mean IoU, mean Dice, pixel accuracy, then IoU and Dice per class."""
    if test is None:
        return test_section(test)
    what = f"{test['samples']:,} test images ({test['pixels']:,} pixels)"
    note = "; IoU and Dice from the confusion of every pixel of the split"
    intro = section_intro(test, what, note)
    keys = ("miou", "mean_dice", "pixel_acc")
    overall = table(["metric", "value"], ([k, f"{test[k]:.4f}"] for k in keys))

    def shown(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"  # a class absent from the split and never predicted

    per_class = table(
        ["class", "IoU", "Dice", "precision", "recall", "pixels"],
        ([r["class"], shown(r["iou"]), shown(r["dice"]), shown(r["precision"]),
          shown(r["recall"]), f"{r['pixels']:,}"] for r in test.get("per_class", [])),
    )  # fmt: skip
    return f"<h2>Test</h2>\n{intro}\n{overall}\n<h3>Per class</h3>\n{per_class}"


EPOCH_COLUMNS = {
    "epoch": "{:.0f}",
    "train_loss": "{:.4f}",
    "train_acc": "{:.2%}",
    "val_loss": "{:.4f}",
    "val_acc": "{:.2%}",
    "lr": "{:.3g}",
    "seconds": "{:.1f}",
    "samples_per_s": "{:,.0f}",
}


def epoch_table(rows: list[dict[str, float]]) -> str:
    if not rows:
        return '<p class="sub">No epoch finished: metrics.csv is missing or empty.</p>'
    columns = [c for c in rows[0] if c in EPOCH_COLUMNS] + [
        c for c in rows[0] if c not in EPOCH_COLUMNS
    ]
    cells = (
        [EPOCH_COLUMNS.get(c, "{:.4g}").format(r[c]) if c in r else "" for c in columns]
        for r in rows
    )
    return table(columns, cells, numeric_from=0)


def figure(plots: dict[str, Path], name: str) -> str:
    """An <img> with the PNG inlined as a data: URI, so the page needs no other file."""
    path = plots.get(name)
    if path is None or not Path(path).is_file():
        return ""
    caption = CAPTIONS.get(name, name)
    return f"<figure>{inline_png(path, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


def versions_table(info: dict[str, Any]) -> str:
    """Library versions when the run was trained (info.json) and now, when the report was made."""
    import matplotlib
    import numpy
    import torchvision

    from kiln import __version__

    now = {
        "python": platform.python_version(),
        "kiln": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "matplotlib": matplotlib.__version__,
    }
    trained = info.get("versions", {})
    names = list(now) + [n for n in trained if n not in now]
    rows = ([n, str(trained.get(n, "-")), now.get(n, "-")] for n in names)
    return table(["library", "training", "this report"], rows, numeric_from=3)
