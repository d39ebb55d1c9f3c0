"""RUN/report.html: one self-contained page per run (images inlined, inline CSS, no scripts), so it
opens offline, survives being mailed or archived, and never changes under the reader.

The page's frame is the same for every task (`write_run_report`: the run's overview, the test
section, training curves and the table of epochs, the model, the config, the versions); each task
supplies its own test section, figures and rows (kiln/tasks/<task>/report.py)."""

from __future__ import annotations

import base64
import platform
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

import torch

from kiln.errors import KilnError, RunError
from kiln.evaluate.plots import best_row, read_metrics
from kiln.io import write_text_atomic
from kiln.rundir import RunDir

CURVES_CAPTION = "Loss, {metric} and learning rate per epoch; the dashed line marks the best epoch."
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


def write_run_report(
    run: RunDir,
    model: torch.nn.Module | None,
    plots: dict[str, Path],
    *,
    test_section: str,
    checkpoint: str = "best",
    headline: str = "",
    overview: Sequence[tuple[str, str]] = (),
    training: Sequence[tuple[str, str]] | None = None,
    sections: Sequence[str] = (),
    model_text: str | None = None,
    subtitle: str = "Kiln run report",
    css: str = "",
) -> Path:
    """RUN/report.html (and RUN/summary.txt). `overview`: the task's rows after "Best epoch";
    `training`: (plot name, caption) above the epoch table (default: the curves); `sections`:
    the task's HTML after it; `model_text`: the Model section (default: the layer table)."""
    cfg, info = run.load_config(), run.load_info()
    rows = read_metrics(run)
    if model_text is None:
        model_text = model_summary(run, model)
        write_text_atomic(run.path / "summary.txt", model_text + "\n")
    best = best_row(rows, *run.monitored())
    items = run_overview(run, cfg, info, rows, best, list(overview), headline)
    if training is None:
        metric = cfg.train.early_stop.monitor.split("_", 1)[-1]
        training = [("curves", CURVES_CAPTION.format(metric=metric))]
    body = [
        f"<h1>{escape(run.path.name)}</h1>",
        f'<p class="sub">{escape(subtitle)}, {escape(str(info.get("created", "")))}; '
        f"plots from the {escape(checkpoint)} checkpoint.</p>",
        "<h2>Run</h2>",
        key_value_table(items),
        test_section,
        "<h2>Training</h2>",
        *(figure(plots.get(name), caption) for name, caption in training),
        "<h3>Per epoch</h3>",
        epoch_table(rows),
        *sections,
        ADDED[0],
        *added_sections(run),
        ADDED[1],
        "<h2>Model</h2>",
        f"<pre>{escape(model_text)}</pre>",
        "<h2>Config</h2>",
        f"<pre>{escape(run.config_path.read_text())}</pre>",
        "<h2>Versions</h2>",
        versions_table(info),
    ]
    return write_page(run, body, css)


SECTIONS = "report-sections"  # RUN/report-sections/*.html: parts other commands add to the page
ADDED = ("<!-- kiln: added sections -->", "<!-- kiln: end of added sections -->")  # around them


def add_section(run: RunDir, name: str, html: str) -> Path:
    """Add (or replace) a part of the run's report page made by another command (kiln prune,
    kiln compress); it shows from the next time the page is written."""
    path = run.path / SECTIONS / f"{name}.html"
    path.parent.mkdir(exist_ok=True)
    write_text_atomic(path, html)
    return path


def added_sections(run: RunDir) -> list[str]:
    return [p.read_text() for p in sorted((run.path / SECTIONS).glob("*.html"))]


def refresh_added_sections(run: RunDir) -> Path | None:
    """Put the added sections into the run's report page as it stands, the rest untouched: for
    a command that changed only its own section (kiln compress), drawing the page again would
    run the model over the test split once more. None when there is no page with the markers
    (none yet, or one written by an older Kiln): write it whole."""
    path = run.path / "report.html"
    page = path.read_text() if path.is_file() else ""
    start, end = page.find(ADDED[0]), page.find(ADDED[1])
    if start < 0 or end < start:
        return None
    parts = [ADDED[0], *(part for part in added_sections(run) if part)]
    write_text_atomic(path, page[:start] + "\n".join(parts) + "\n" + page[end:])
    return path


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


def run_overview(run, cfg, info, rows, best, extra, headline: str = "") -> list[tuple[str, str]]:
    """The Run table: what was trained on what, how long, the best epoch, then the task's rows."""
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
    items += extra
    if headline and not any(key.startswith("Test") for key, _ in extra):
        items.append(("Test", headline))
    items += [
        ("Seed", str(info.get("seed"))),
        ("Git commit", str(info.get("git_commit") or "not a git checkout")),
        ("Command", str(info.get("command") or "")),
    ]
    return items


def metrics_section(test: dict[str, Any] | None) -> str:
    """A Test section listing every number of eval-test.json (tasks with nothing better)."""
    if test is None:
        return no_test_section()
    intro = section_intro(test, f"{test['samples']:,} test samples", "")
    cells = (
        [key, f"{value:.4f}" if isinstance(value, float) else str(value)]
        for key, value in test.items()
        if key not in ("run", "split", "checkpoint", "epoch", "samples")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    )
    return f"<h2>Test</h2>\n{intro}\n{table(['metric', 'value'], cells)}"


def no_test_section() -> str:
    return '<h2>Test</h2>\n<p class="sub">No eval-test.json in the run: run `kiln eval`.</p>'


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


def section_intro(test: dict[str, Any], what: str, note: str) -> str:
    """The line under a Test heading: what was evaluated (Kiln's own words and numbers), with
    which checkpoint."""
    checkpoint, epoch = escape(str(test.get("checkpoint"))), escape(str(test.get("epoch")))
    return f'<p class="sub">{what}, {checkpoint} checkpoint (epoch {epoch}){note}.</p>'


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


def figure(path: Path | None, caption: str, css_class: str = "") -> str:
    """A figure with the PNG inlined as a data: URI, so the page needs no other file."""
    if path is None or not Path(path).is_file():
        return ""
    shown = inline_png(path, caption, css_class)
    return f"<figure>{shown}<figcaption>{escape(caption)}</figcaption></figure>"


def versions_table(info: dict[str, Any]) -> str:
    """Library versions when the run was trained (info.json) and now, when the report was made
    (read from the installed packages' metadata: importing torchvision costs seconds)."""
    from importlib.metadata import version

    from kiln._version import __version__

    now = {
        "python": platform.python_version(),
        "kiln": __version__,
        "torch": torch.__version__,
        **{name: version(name) for name in ("torchvision", "numpy", "matplotlib")},
    }
    trained = info.get("versions", {})
    names = list(now) + [n for n in trained if n not in now]
    rows = ([n, str(trained.get(n, "-")), now.get(n, "-")] for n in names)
    return table(["library", "training", "this report"], rows, numeric_from=3)
