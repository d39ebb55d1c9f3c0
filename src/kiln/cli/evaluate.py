"""`kiln eval`, `kiln report` and `kiln compare`: a trained run's numbers, plots and pages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table


def cmd_eval(ns: argparse.Namespace) -> int:
    from kiln.evaluate import evaluate_run
    from kiln.rundir import RunDir

    run = RunDir.open(ns.run)
    result = evaluate_run(run, ns.split, ns.checkpoint)
    if "rmse" in result:  # task=regress
        return print_regress_eval(result, ns.json)
    if "miou" in result:  # task=segment
        from kiln.evaluate.segment import print_segment_eval

        return print_segment_eval(result, ns.json)
    if "elbo" in result or "frechet" in result:  # task=vae, task=gan
        from kiln.evaluate.generate_report import print_eval as print_generate_eval

        return print_generate_eval(result, ns.json)
    if ns.json:
        keys = (
            "accuracy",
            *calibration_keys(result),
            "precision_macro",
            "recall_macro",
            "f1_macro",
            "f1_weighted",
            "per_class",
            "confusion_matrix",
        )
        print(
            json.dumps(
                {k: result[k] for k in keys} | {"split": ns.split, "samples": result["samples"]}
            )
        )
        return 0
    print_eval(result)
    return 0


def print_regress_eval(result: dict, as_json: bool) -> int:
    keys = ("rmse", "mae", "r2", "per_target", "samples")
    if as_json:
        print(json.dumps({k: result[k] for k in keys} | {"split": result["split"]}))
        return 0
    console = Console()
    console.print(
        f"[bold]{result['run']}[/] {result['split']} split, {result['checkpoint']} checkpoint "
        f"(epoch {result['epoch']}), {result['samples']:,} samples"
    )
    table = Table("target", "rmse", "mae", "r2")
    for row in [{"target": "all", **result}, *result["per_target"]]:
        table.add_row(row["target"], f"{row['rmse']:.4f}", f"{row['mae']:.4f}", f"{row['r2']:.4f}")
    console.print(table)
    return 0


def calibration_keys(result: dict) -> list[str]:
    """Top-k accuracy (when the classes make it meaningful) and expected calibration error."""
    return [k for k in result if (k.startswith("top") and k.endswith("_accuracy")) or k == "ece"]


def print_eval(result: dict) -> None:
    console = Console()
    console.print(
        f"[bold]{result['run']}[/] {result['split']} split, {result['checkpoint']} checkpoint "
        f"(epoch {result['epoch']}), {result['samples']:,} samples"
    )
    summary = Table("metric", "value")
    for key in (
        "accuracy",
        *calibration_keys(result),
        "loss",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
    ):
        summary.add_row(key, f"{result[key]:.4f}")
    console.print(summary)
    per_class = Table("class", "precision", "recall", "f1", "support")
    for row in result["per_class"]:
        per_class.add_row(
            row["class"],
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            str(row["support"]),
        )
    console.print(per_class)
    names = [r["class"] for r in result["per_class"]]
    cm = Table("true \\ pred", *names, title="confusion matrix")
    for name, counts in zip(names, result["confusion_matrix"], strict=True):
        cm.add_row(name, *map(str, counts))
    console.print(cm)
    console.print(f"saved to {Path(result['run']) / ('eval-' + result['split'] + '.json')}")


def cmd_report(ns: argparse.Namespace) -> int:
    from kiln.evaluate.report import make_report
    from kiln.rundir import RunDir

    run = RunDir.open(ns.run)  # a clear error before paying for the model and data
    path = make_report(run.path, checkpoint=ns.checkpoint)
    print(f"wrote plots to {run.path / 'plots'}")
    print(path)
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from kiln.evaluate.compare import check_output, compare_runs, rich_table

    check_output(ns.output)  # before reading any run
    runs = compare_runs(ns.runs, ns.output)
    console = Console()
    console.print(rich_table(runs, console.width))
    print(f"wrote {ns.output}")
    return 0


def add_parsers(verbs) -> None:
    p = verbs.add_parser("eval", help="evaluate a run on its test or validation split")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = verbs.add_parser(
        "report",
        help="plots and a self-contained HTML report of a run",
        description="Write RUN_DIR/plots/*.png and RUN_DIR/report.html (one file, opens offline).",
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.set_defaults(func=cmd_report)

    p = verbs.add_parser(
        "compare",
        help="overlaid learning curves and a table of final metrics for several runs",
        description="Compare runs: curves from each RUN_DIR/metrics.csv, final metrics, test "
        "accuracy (eval-test.json), time and parameters. -o X.png writes the figure and prints "
        "the table; -o X.html writes one self-contained page with both.",
        epilog="example:\n  kiln compare runs/dropout-none runs/dropout-0.5 -o compare.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    p.add_argument("-o", "--output", default="compare.html", help=".html or .png to write")
    p.set_defaults(func=cmd_compare)
