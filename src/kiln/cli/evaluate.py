"""`kiln eval`, `kiln report` and `kiln compare`: a trained run's numbers, plots and pages."""

from __future__ import annotations

import argparse
import json


def cmd_eval(ns: argparse.Namespace) -> int:
    from rich.console import Console

    from kiln.engine.evaluate import evaluate_run
    from kiln.models import import_run_modules
    from kiln.rundir import RunDir
    from kiln.tasks import get_task

    run = RunDir.open(ns.run)
    result = evaluate_run(run, ns.split, ns.checkpoint)
    if ns.json:  # everything eval-<split>.json holds
        print(json.dumps(result))
        return 0
    cfg = run.load_config()
    import_run_modules(cfg.imports, run.config_path)
    get_task(cfg.task).print_eval(result, Console())
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from kiln.engine.evaluate import report_run
    from kiln.rundir import RunDir

    run = RunDir.open(ns.run)  # a clear error before paying for the model and data
    path = report_run(run.path, checkpoint=ns.checkpoint)
    print(f"wrote plots to {run.path / 'plots'}")
    print(path)
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from rich.console import Console

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
