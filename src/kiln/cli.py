"""The `kiln` command: each verb parses its arguments and hands over to the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kiln.errors import KilnError

EPILOG_TRAIN = """examples:
  kiln train                                   digits + mlp, the defaults
  kiln train recipes/mnist-cnn.yaml epochs=2   a recipe with an override
  kiln train data=fashion-mnist model=mlp model.hidden=[512,512] lr=3e-3
  kiln train --resume runs/mnist-cnn           continue an interrupted run
aliases: data model epochs batch lr device seed name"""


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG.yaml] [key=value ...]` -> (config path or None, overrides)."""
    config, overrides = None, []
    for i, arg in enumerate(args):
        if "=" in arg:
            overrides.append(arg)
        elif i == 0:
            config = arg
        else:
            raise KilnError(f"unexpected argument '{arg}': overrides look like key=value")
    return config, overrides


def cmd_train(ns: argparse.Namespace) -> int:
    from kiln.config import build_config, parse_override

    config, overrides = split_config_args(ns.args)
    if ns.resume:
        if config:
            raise KilnError("--resume takes its config from the run; do not pass a config file too")
        extra = dict(map(parse_override, overrides))
        from kiln.api import train

        train(resume=ns.resume, **extra)
        return 0
    cfg = build_config(config, overrides)  # validate before paying for torch's import
    from kiln.api import train

    train(cfg)
    return 0


def cmd_config_show(ns: argparse.Namespace) -> int:
    from kiln.api import resolve
    from kiln.config import build_config

    config, overrides = split_config_args(ns.args)
    print(resolve(build_config(config, overrides)).to_yaml(), end="")
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    table = Table(show_header=True, header_style="bold")
    table.add_column("name")
    table.add_column("description")
    if ns.what == "datasets":
        from kiln.data import DATASETS

        for name, entry in sorted(DATASETS.items()):
            table.add_row(name, entry.description)
    else:
        from kiln.models import MODELS

        table.add_column("options")
        for name, entry in sorted(MODELS.items()):
            opts = ", ".join(f"{k}={v!r}" for k, v in entry.options().items())
            table.add_row(name, entry.description, opts or "-")
    Console().print(table)
    return 0


def data_config(ns: argparse.Namespace):
    """DATA is a config file or a dataset name, followed by overrides."""
    from kiln.api import resolve
    from kiln.config import build_config

    overrides = list(ns.overrides)
    if ns.data.endswith((".yaml", ".yml")):
        return resolve(build_config(ns.data, overrides))
    return resolve(build_config(None, [f"data.name={ns.data}", *overrides]))


def cmd_data_stats(ns: argparse.Namespace) -> int:
    from kiln import data as kdata
    from kiln.data.preview import data_stats

    stats = data_stats(kdata.build(data_config(ns).data))
    if ns.json:
        print(json.dumps(stats))
        return 0
    console = Console()
    table = Table("class", "train", "val", "test", title=f"{stats['dataset']}: images per class")
    for name in stats["classes"]:
        table.add_row(name, *(str(stats["per_split"][s][name]) for s in ("train", "val", "test")))
    totals = stats["totals"]
    table.add_row("[bold]total", *(f"[bold]{totals[s]}" for s in ("train", "val", "test")))
    console.print(table)
    console.print(f"imbalance (largest / smallest training class): {stats['imbalance_ratio']:.2f}")
    if stats["imbalanced"]:
        console.print(
            "[yellow]warning:[/] classes are imbalanced above 3:1; consider data.balance=weights "
            "or data.balance=sampler"
        )
    console.print(f"input shape (C, H, W): {tuple(stats['input_shape'])}")
    console.print(
        "sizes before resizing: " + ", ".join(f"{k} ({v})" for k, v in stats["sizes"].items())
    )
    console.print("modes: " + ", ".join(f"{k} ({v})" for k, v in stats["modes"].items()))
    console.print(f"mean {stats['mean']}  std {stats['std']} (training split)")
    if stats["skipped"]:
        console.print(f"[yellow]{len(stats['skipped'])} bad file(s) skipped[/] (data.on_bad=skip)")
    return 0


def cmd_data_show(ns: argparse.Namespace) -> int:
    from kiln import data as kdata
    from kiln.data.preview import sample_grid
    from kiln.engine.trainer import build_augment

    cfg = data_config(ns)
    bundle = kdata.build(cfg.data)
    augment = build_augment(cfg.data.augment, bundle.info) if ns.augmented else None
    if ns.augmented and augment is None:
        raise KilnError(
            "--augmented: data.augment is 'none'; set data.augment=light|standard|strong"
        )
    out = sample_grid(bundle, Path(ns.output), ns.n, augment)
    print(f"wrote {out}")
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from kiln.evaluate import evaluate_run
    from kiln.rundir import RunDir

    run = RunDir.open(ns.run)
    result = evaluate_run(run, ns.split, ns.checkpoint)
    if ns.json:
        keys = (
            "accuracy",
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


def print_eval(result: dict) -> None:
    console = Console()
    console.print(
        f"[bold]{result['run']}[/] {result['split']} split, {result['checkpoint']} checkpoint "
        f"(epoch {result['epoch']}), {result['samples']:,} samples"
    )
    summary = Table("metric", "value")
    for key in (
        "accuracy",
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


def cmd_predict(ns: argparse.Namespace) -> int:
    import kiln
    from kiln.predict import expand_paths

    predictor = kiln.load(ns.run, ns.checkpoint)
    files = expand_paths(ns.paths)
    results = []
    for begin in range(0, len(files), 256):
        results += predictor.predict(files[begin : begin + 256], top_k=ns.top_k)
    if ns.json:
        print(json.dumps(results))
        return 0
    for r in results:
        ranked = "  ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top_k"])
        print(f"{r['file']}: {ranked}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description="Kiln: train, evaluate and predict with PyTorch."
    )
    from kiln import __version__

    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser(
        "train",
        help="train a model",
        description="Train a model from a config and overrides.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from checkpoints/last.pt")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("config", help="show the resolved config")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the fully resolved config (every default filled in)")
    show.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    show.set_defaults(func=cmd_config_show)

    p = verbs.add_parser("list", help="list datasets or models")
    p.add_argument("what", choices=["datasets", "models"])
    p.set_defaults(func=cmd_list)

    p = verbs.add_parser("data", help="look at a dataset: a grid of samples, or statistics")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, func, doc in (
        ("show", cmd_data_show, "write a labelled grid of training images"),
        ("stats", cmd_data_stats, "images per class and split, imbalance, sizes, modes, mean/std"),
    ):
        q = sub.add_parser(name, help=doc, description=doc)
        q.add_argument(
            "data", metavar="DATA", help="a dataset name (e.g. mnist, folder) or a config"
        )
        q.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=images/")
        q.set_defaults(func=func)
        if name == "show":
            q.add_argument("--n", type=int, default=64, help="how many images (default 64)")
            q.add_argument("--augmented", action="store_true", help="as training sees them")
            q.add_argument("-o", "--output", default="grid.png", help="PNG to write")
        else:
            q.add_argument("--json", action="store_true", help="print one JSON object")

    p = verbs.add_parser("eval", help="evaluate a run on its test or validation split")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = verbs.add_parser("predict", help="classify image files or folders with a trained run")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except KilnError as exc:
        print(f"error: {exc}" if exc.exit_code != 130 else str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
