"""`kiln compress RUN`: one table of a run's smaller and faster forms, measured side by side.

Rows: the run exported as fp32 ONNX, dynamic and static int8 ONNX, fp32 and int8 ExecuTorch
programs (when ExecuTorch is installed), then the run's children: runs pruned from it (their
prune.json names it) and students distilled from it (their distill.teacher names it), each as
fp32 ONNX, plus any --runs. Columns: file size, non-zero parameters, CPU latency at batch 1 (p50
and p95 over `calls` calls) and throughput at batch 64, each in the format's own runtime
(ONNX Runtime, ExecuTorch), and the accuracy on the whole validation split.

An export already in RUN/exports that exporting again would write the same way (the same
checkpoint, by this Kiln and torch, with compress's settings, the file unchanged) is measured as
it is: ExecuTorch's programs take a minute to write for a CIFAR-10 net. `export_again` writes
them all anew.

The machine may be shared: latency is measured in `rounds`, every row in turn within a round so
that a busy spell slows them all alike, and the median over rounds is kept; the load average
before and after is printed and saved with the table (RUN/compress.json, and the run's report).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import torch

from kiln._version import __version__
from kiln.compress.measure import nonzero_parameters
from kiln.deploy.export import export_run, output_path
from kiln.deploy.quantize import Calibration
from kiln.errors import ConfigError, KilnError, RunError
from kiln.evaluate.report import add_section, refresh_added_sections, table
from kiln.infer import open_export
from kiln.infer.spec import ExportSpec, find_export, sha256
from kiln.rundir import RunDir, load_model
from kiln.tasks import get_task

VARIANTS = (  # (label, format, quantize) of the run's own exports
    ("fp32, ONNX Runtime", "onnx", None),
    ("int8 dynamic, ONNX Runtime", "onnx", "dynamic"),
    ("int8 static, ONNX Runtime", "onnx", "static"),
    ("fp32, ExecuTorch XNNPACK", "executorch", None),
    ("int8 static, ExecuTorch XNNPACK", "executorch", "static"),
)


@dataclass
class Row:
    method: str
    run: str
    file: str | None = None
    bytes: int | None = None
    parameters: int | None = None  # non-zero
    accuracy: float | None = None  # on the validation split, when the task has one
    p50_ms: float | None = None
    p95_ms: float | None = None
    per_s: float | None = None  # images per second at batch 64
    note: str = ""
    rounds: list[dict[str, float]] = field(default_factory=list)


def compress_run(
    run_dir: str | Path,
    extra_runs: list[str] | None = None,
    rounds: int = 3,
    calls: int = 300,
    formats: tuple[str, ...] = ("onnx", "executorch"),
    log=print,
    export_again: bool = False,
) -> dict[str, Any]:
    """Export, measure and tabulate (see the module docstring); returns compress.json's data.
    `formats`: the run's own exports to include (children are always fp32 ONNX)."""
    if rounds < 1 or calls < 10:
        raise ConfigError(f"--rounds must be at least 1 and --calls at least 10 (got {rounds}, "
                          f"{calls})")  # fmt: skip
    run = RunDir.open(run_dir)
    if not run.checkpoint("best").is_file():
        raise RunError(f"{run.path} has no checkpoint ({run.checkpoint('best')}): train it first")
    for fmt in formats:
        if fmt not in ("onnx", "executorch"):
            raise ConfigError(f"--formats: choose among onnx and executorch, got '{fmt}'")
    own = [(run, v) for v in VARIANTS if v[1] in formats]
    runs = own + [(child, None) for child in children(run, extra_runs)]
    rows, loaded, seen = [], [], {}
    for source, variant in runs:
        row, predictor, sample = export_and_check(source, variant, log, export_again, seen)
        rows.append(row)
        if predictor is not None:
            loaded.append((row, predictor, sample))
    load = {"before": os.getloadavg()}
    for _ in range(rounds):
        for row, predictor, sample in loaded:
            row.rounds.append(timing(predictor, sample, calls))
    load["after"] = os.getloadavg()
    for row, _, _ in loaded:
        for key in ("p50_ms", "p95_ms", "per_s"):
            setattr(row, key, statistics.median(r[key] for r in row.rounds))
    result = {"run": str(run.path), "rounds": rounds, "calls": calls, "cores": os.cpu_count(),
              "load_average": load, "rows": [asdict(r) for r in rows]}  # fmt: skip
    run.write_json("compress.json", result)
    log(text_table(rows))
    log(f"Load average (1, 5, 15 min) {fmt_load(load['before'])} before timing, "
        f"{fmt_load(load['after'])} after; latency: the median of {rounds} rounds of "
        f"{calls} calls")  # fmt: skip
    add_section(run, "compress", section(result, rows))
    if (run.path / "report.html").is_file():
        page = refresh_added_sections(run)
        if page is None:  # a page from before the markers: drawn whole again
            from kiln.engine.evaluate import report_run

            page = report_run(run.path)
        log(f"Report: {page}")
    return result


def children(run: RunDir, extra: list[str] | None) -> list[RunDir]:
    """Runs beside this one pruned from it or distilled from it, then the ones named (each
    once)."""
    me = run.path.resolve()
    found = []
    for other in sorted(run.path.parent.iterdir()):
        if other.resolve() == me or not (other / "config.yaml").is_file():
            continue
        try:
            prune = other / "prune.json"
            parent = json.loads(prune.read_text()).get("parent") if prune.is_file() else None
            teacher = RunDir.open(other).load_config().distill.teacher
        except (KilnError, OSError, json.JSONDecodeError):
            continue
        named = [p for p in (parent, teacher) if p]
        if any(Path(p).resolve() == me for p in named):
            found.append(RunDir.open(other))
    unique = {r.path.resolve(): r for r in found + [RunDir.open(p) for p in extra or []]}
    return list(unique.values())  # a run found and also named is measured once


def describe(run: RunDir) -> str:
    """A child's row label: how it was made."""
    prune = run.path / "prune.json"
    if prune.is_file():
        p = json.loads(prune.read_text())
        kind = "channels" if p["method"].startswith("structured") else "weights"
        return f"pruned {p['sparsity']:.0%} {kind}, fine-tuned, fp32 ONNX"
    cfg = run.load_config()
    if cfg.distill.teacher:
        return f"distilled {cfg.model.name} student, fp32 ONNX"
    return f"{cfg.model.name}, fp32 ONNX"


def export_and_check(run: RunDir, variant, log, export_again: bool, seen: dict):
    """(row, the file opened in its runtime, validation inputs) for one row; a format that
    cannot be made here (ExecuTorch not installed) gives a row with a note and no file.
    `seen`: what earlier rows of the same run read (see `validation_of`)."""
    label, fmt, quantize = variant if variant is not None else (describe(run), "onnx", None)
    row = Row(label, run.path.name)
    found = None if export_again else current_export(run, fmt, quantize)
    if found is not None:
        path, spec = found
    else:
        try:
            result = export_run(run.path, fmt, quantize=quantize, log=lambda _: None)
        except KilnError as exc:
            row.note = str(exc).splitlines()[0]
            log(f"{label}: not measured ({row.note})")
            return row, None, None
        path, spec = result.path, result.spec
    predictor = open_export(path, spec)
    row.file = str(path)
    row.bytes = path.stat().st_size
    row.parameters, inputs, labels = validation_of(run, spec, seen)
    if labels is not None:
        outputs = torch.cat([predictor.logits(inputs[i : i + 256])
                             for i in range(0, len(inputs), 256)])  # fmt: skip
        row.accuracy = get_task(spec.task).accuracy(outputs, labels)
    made = "exported earlier from this checkpoint" if found is not None else "exported"
    log(f"{label}: {row.file} ({row.bytes / 1e6:.3f} MB, {made})")
    return row, predictor, inputs


def validation_of(run: RunDir, spec: ExportSpec, seen: dict) -> tuple[int, torch.Tensor, Any]:
    """(the best checkpoint's non-zero parameters, the whole validation split as the graph takes
    it, its labels): read once per run, as its five formats' rows share them (building a
    CIFAR-10 split takes seconds)."""
    key = run.path.resolve()
    if key not in seen:
        model, _ = load_model(run, "best")
        inputs, labels, _ = get_task(spec.task).export_inputs(run, 10**9, spec)
        seen[key] = (nonzero_parameters(model), inputs, labels)
    return seen[key]


def current_export(run: RunDir, fmt: str, quantize: str | None) -> tuple[Path, ExportSpec] | None:
    """The run's export of this kind in RUN/exports when exporting again would write it the
    same way: from the best checkpoint as it is now (its hash), by this Kiln and torch, not
    embedded, calibrated with the defaults (static int8), and the file unchanged since."""
    path = output_path(run, fmt, quantize, None)
    try:
        file, spec = find_export(path)  # its sidecar read, the file's hash checked
    except KilnError:
        return None
    model, default, calibration = spec.model, Calibration(), spec.calibration or {}
    asked = tuple(calibration.get(k) for k in ("method", "per_channel", "images_asked"))
    made_alike = (
        (spec.format, spec.quantize, spec.raw_input) == (fmt, quantize, None)
        and (model.checkpoint, model.kiln_version, model.torch_version)
        == ("best", __version__, torch.__version__)
        and (quantize != "static" or asked == (default.method, default.per_channel, default.images))
    )
    checkpoint = run.checkpoint("best")
    if not made_alike or file != path or spec.sha256 is None or not checkpoint.is_file():
        return None
    return (path, spec) if model.checkpoint_sha256 == sha256(checkpoint) else None


def timing(predictor, inputs: torch.Tensor, calls: int) -> dict[str, float]:
    """Batch-1 latency percentiles over `calls` calls, and images/s at batch 64."""
    one = inputs[:1]
    batch = inputs[:64] if len(inputs) >= 64 else inputs[:1].expand(64, *inputs.shape[1:])
    batch = batch.contiguous()
    for _ in range(5):
        predictor.logits(one)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        predictor.logits(one)
        times.append(time.perf_counter() - t)
    times.sort()
    predictor.logits(batch)
    n, started = 0, time.perf_counter()
    while n < 10 or time.perf_counter() - started < 0.5:
        predictor.logits(batch)
        n += 1
    per_s = n * len(batch) / (time.perf_counter() - started)
    return {"p50_ms": times[len(times) // 2] * 1000,
            "p95_ms": times[int(len(times) * 0.95)] * 1000, "per_s": per_s}  # fmt: skip


def cells(row: Row) -> list[str]:
    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return [
        row.method, row.run, num(row.bytes and row.bytes / 1e6, ".3f"),
        num(row.parameters, ","), num(row.p50_ms, ".3f"), num(row.p95_ms, ".3f"),
        num(row.per_s, ",.0f"), "-" if row.accuracy is None else f"{row.accuracy:.2%}",
    ]  # fmt: skip


HEADER = ["format / method", "run", "MB", "params (non-zero)", "p50 ms (b=1)", "p95 ms (b=1)",
          "images/s (b=64)", "val accuracy"]  # fmt: skip


def text_table(rows: list[Row]) -> str:
    """The table as Markdown (readable in a terminal, pasteable into a README)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        note = f" ({row.note})" if row.note else ""
        values = cells(row)
        values[0] += note
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def fmt_load(load) -> str:
    return " ".join(f"{v:.2f}" for v in load)


def section(result: dict[str, Any], rows: list[Row]) -> str:
    load = result["load_average"]
    body = table(HEADER, [cells(r) for r in rows], numeric_from=2)
    notes = "".join(f"<li>{escape(r.method)}: {escape(r.note)}</li>" for r in rows if r.note)
    return (
        "<h2>Smaller and faster</h2>"
        f'<p class="sub">kiln compress: CPU latency at batch 1 (median over '
        f"{result['rounds']} rounds of {result['calls']} calls) and throughput at batch 64 in "
        f"each format's runtime, on {result['cores']} cores; load average "
        f"{fmt_load(load['before'])} before timing, {fmt_load(load['after'])} after (the machine "
        "may be shared: compare rows, not machines).</p>"
        f"{body}{f'<ul>{notes}</ul>' if notes else ''}"
    )
