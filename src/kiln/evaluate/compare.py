"""Compare finished runs side by side: learning curves overlaid, and a table of final metrics.

Everything is read from the run directories (metrics.csv, info.json, eval-test.json), so runs
trained on different machines or days compare the same way. The output is a PNG (the curves;
the table goes to stdout) or one self-contained HTML page (the curves inlined, the table).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.errors import KilnError, RunError

SUFFIXES = (".html", ".png")
LOSSES = (("train_loss", "train loss"), ("val_loss", "validation loss"))


@dataclass
class RunCurves:
    """One run as `kiln compare` sees it: its epochs and the few facts the table needs. Each run
    is judged by its own monitored metric (config.yaml) and headline test figure (info.json says
    which key of eval-test.json it is, and whether it reads as a percentage)."""

    name: str
    path: Path
    history: list[dict[str, float]]
    parameters: int | None = None
    test: dict[str, Any] = field(default_factory=dict)
    monitor: str = "val_loss"
    mode: str = "min"
    metric: dict[str, Any] = field(default_factory=dict)  # name, test_key, percent

    @property
    def test_acc(self) -> float | None:
        return self.test.get("accuracy")

    @property
    def test_value(self) -> float | None:
        key = self.metric.get("test_key")
        return self.test.get(key) if key else None

    def fmt(self, value: float) -> str:
        return f"{value:.2%}" if self.metric.get("percent") else f"{value:.4g}"

    def summary(self) -> dict[str, Any]:
        """The table row: the best monitored value and its epoch, final losses, the test figure."""
        last = self.history[-1]
        row: dict[str, Any] = {"run": self.name, "monitor": self.monitor, "best": None,
                               "best_epoch": None, "best_val_acc": None}  # fmt: skip
        rows = [r for r in self.history if self.monitor in r]
        if rows:
            pick = min if self.mode == "min" else max
            best = pick(rows, key=lambda r: r[self.monitor])
            row["best"], row["best_epoch"] = best[self.monitor], int(best["epoch"])
        if "val_acc" in last:
            row["best_val_acc"] = max(r["val_acc"] for r in self.history if "val_acc" in r)
        return row | {
            "final_train_loss": last.get("train_loss"),
            "final_val_loss": last.get("val_loss"),
            "test": self.test_value,
            "test_acc": self.test_acc,
            "epochs": int(last.get("epoch", len(self.history))),
            "seconds": sum(r.get("seconds", 0.0) for r in self.history),
            "parameters": self.parameters,
        }


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"


def columns(runs: Sequence[RunCurves]) -> list[tuple[str, str, Callable[[RunCurves, Any], str]]]:
    """(row key, header, formatter) for the table, in the terminal and in HTML. Runs that share
    a monitored metric get it in the header ("best val acc"); mixed runs name it per cell."""
    monitors = {r.monitor for r in runs}
    tests = {r.metric.get("test_key") for r in runs}
    if len(monitors) == 1:
        best_header = "best " + next(iter(monitors)).replace("_", " ")

        def best_cell(run: RunCurves, v: Any) -> str:
            return run.fmt(v)
    else:
        best_header = "best (monitored)"

        def best_cell(run: RunCurves, v: Any) -> str:
            return f"{run.monitor} {run.fmt(v)}"

    test_header = f"test {next(iter(tests))}" if len(tests) == 1 and None not in tests else "test"
    return [
        ("run", "run", lambda r, v: str(v)),
        ("best", best_header, best_cell),
        ("best_epoch", "best at", lambda r, v: str(v)),
        ("final_train_loss", "train loss", lambda r, v: f"{v:.4f}"),
        ("final_val_loss", "val loss", lambda r, v: f"{v:.4f}"),
        ("test", test_header, lambda r, v: r.fmt(v)),
        ("epochs", "epochs", lambda r, v: str(v)),
        ("seconds", "time", lambda r, v: _duration(v)),
        ("parameters", "params", lambda r, v: f"{v:,}"),
    ]


def format_row(run: RunCurves, cols) -> list[str]:
    """A table row as text; missing values (no test evaluation yet, say) as '-'."""
    row = run.summary()
    return ["-" if row.get(key) is None else fmt(run, row[key]) for key, _, fmt in cols]


def rich_table(runs: Sequence[RunCurves], width: int):
    """The table for a terminal `width` characters wide: a row per run, or a column per run
    where that does not fit (rich would otherwise cut the numbers short)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    title = "final metrics (losses: last epoch)"
    cols = columns(runs)
    rows = [format_row(r, cols) for r in runs]
    wide = Table(title=title, box=box.SIMPLE_HEAD)
    for key, header, _ in cols:
        wide.add_column(header, justify="left" if key == "run" else "right", no_wrap=True)
    for row in rows:
        wide.add_row(*row)
    if Console(width=10_000).measure(wide).maximum <= width:
        return wide
    tall = Table("", *(row[0] for row in rows), title=title, box=box.SIMPLE_HEAD)
    for i, (_, header, _) in enumerate(cols[1:], start=1):
        tall.add_row(header, *(row[i] for row in rows))
    for column in tall.columns[1:]:
        column.justify = "right"
    return tall


def load_run(path: str | Path) -> RunCurves:
    """Read a run's metrics.csv (required), info.json and eval-test.json (used when present)."""
    path = Path(path)
    expected = "pass run directories written by `kiln train`, e.g. runs/digits-convnet"
    if not path.is_dir():
        raise RunError(f"{path} does not exist or is not a folder; {expected}")
    metrics = path / "metrics.csv"
    if not metrics.is_file():
        raise RunError(f"{path} is not a Kiln run: it has no metrics.csv; {expected}")
    try:
        with open(metrics, newline="") as f:
            history = [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]
    except (OSError, ValueError, csv.Error) as exc:
        raise RunError(f"{metrics} is damaged ({exc}); it should hold one row per epoch") from None
    if not history:
        raise RunError(f"{metrics} has no epochs yet; train the run for at least one epoch")
    info = _read_json(path / "info.json")
    metric = info.get("metric") if isinstance(info.get("metric"), dict) else {}
    early_stop = _read_config(path).get("train", {}).get("early_stop", {})
    monitor = early_stop.get("monitor", metric.get("monitor", "val_loss"))
    return RunCurves(
        name=path.name,
        path=path,
        history=history,
        parameters=info.get("parameters"),
        test=_read_json(path / "eval-test.json"),
        monitor=monitor,
        mode=metric.get("mode") or ("min" if monitor.endswith("loss") else "max"),
        metric=metric,
    )


def _read_json(path: Path) -> dict[str, Any]:
    """Optional extras: a missing or unreadable file leaves its cells empty, not an error."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_config(path: Path) -> dict[str, Any]:
    """config.yaml as plain data (only read, never validated: runs of any version compare)."""
    import yaml

    try:
        data = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def load_runs(paths: Sequence[str | Path]) -> list[RunCurves]:
    """At least two runs, each labelled by its folder name (by its path where names clash)."""
    if len(paths) < 2:
        raise KilnError(f"kiln compare needs at least 2 run directories, got {len(paths)}")
    runs = [load_run(p) for p in paths]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.path)
    labels = [r.name for r in runs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise KilnError(f"{', '.join(twice)} given more than once; pass each run once")
    return runs


def curves_figure(runs: Sequence[RunCurves]):
    """Train loss, validation loss and each run's own monitored metric per epoch, one colour per
    run (runs monitoring different metrics get a panel each)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    monitored = list(dict.fromkeys(r.monitor for r in runs if not r.monitor.endswith("loss")))
    panels = [*LOSSES, *((m, f"{'validation' if m.startswith('val_') else 'training'} "
                          f"{m.split('_', 1)[1]}") for m in monitored)]  # fmt: skip
    fig = Figure(figsize=(5 * len(panels), 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    markers = max(len(r.history) for r in runs) <= 30  # dots help read a 5-epoch curve
    for ax, (column, title) in zip(axes, panels, strict=True):
        percent = False
        for i, run in enumerate(runs):
            points = [(r["epoch"], r[column]) for r in run.history if column in r]
            if points:
                x, y = zip(*points, strict=True)
                marker = "o" if markers else None
                ax.plot(x, y, color=f"C{i % 10}", label=run.name, marker=marker, markersize=3)
                percent = percent or (run.monitor == column and run.metric.get("percent", False))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if percent:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize="small")
    return fig


def figure_png(fig) -> bytes:
    from kiln.evaluate.plots import literal_text

    literal_text(fig)  # run names are text, not math
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def html_page(runs: Sequence[RunCurves], png: bytes) -> str:
    """One self-contained page: no external files or URLs, every run-supplied text escaped."""
    e = html.escape
    cols = columns(runs)
    head = "".join(f"<th>{e(title)}</th>" for _, title, _ in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in format_row(r, cols)) + "</tr>"
        for r in runs
    )
    sources = "".join(f"<li><code>{e(str(r.path))}</code></li>" for r in runs)
    image = base64.b64encode(png).decode("ascii")
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Kiln: {e(", ".join(r.name for r in runs))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
.note {{ color: #666; font-size: 0.9em; }}
</style></head><body>
<h1>Compare {len(runs)} runs</h1>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p class="note">Best: the best value of the metric each run monitored (its best checkpoint), reached
at epoch "best at"; train and val loss: the last epoch's; test: the best checkpoint's headline
figure (eval-test.json); time: the sum of the epochs' seconds.</p>
<img alt="learning curves" src="data:image/png;base64,{image}">
<p class="note">Runs:</p><ul class="note">{sources}</ul>
<p class="note">Written by kiln compare, {e(when)}.</p>
</body></html>
"""


def check_output(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix.lower() not in SUFFIXES:
        raise KilnError(
            f"-o {output}: the output must end in .html (one self-contained page) or .png "
            "(the curves; the table is printed)"
        )
    return output


@dataclass
class Comparison:
    """What kiln.compare returns: the runs read, the figure of their curves (PNG bytes) and the
    file written, if any; a notebook shows the table and the curves."""

    runs: list[RunCurves]
    png: bytes
    output: Path | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One row of final metrics per run (the table's numbers, unformatted)."""
        return [r.summary() for r in self.runs]

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.rows(), "output": str(self.output) if self.output else None}

    def __repr__(self) -> str:
        return f"Comparison({', '.join(r.name for r in self.runs)})"

    def _repr_html_(self) -> str:
        from kiln.evaluate import notebook as nb

        cols = columns(self.runs)
        body = nb.table([h for _, h, _ in cols], [format_row(r, cols) for r in self.runs])
        return nb.view(f"Compare {len(self.runs)} runs", body, nb.png(self.png, "learning curves"))


def compare(paths: Sequence[str | Path], output: str | Path | None = None) -> Comparison:
    """Read the runs and draw their curves; write `output` (.html or .png) when given."""
    if output is not None:
        output = check_output(output)
    runs = load_runs(paths)
    png = figure_png(curves_figure(runs))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix.lower() == ".png":
            output.write_bytes(png)
        else:
            output.write_text(html_page(runs, png), encoding="utf-8")
    return Comparison(runs, png, output)


def compare_runs(paths: Sequence[str | Path], output: str | Path) -> list[RunCurves]:
    """Write the comparison of `paths` to `output` (.html or .png); returns the runs read."""
    return compare(paths, output).runs
