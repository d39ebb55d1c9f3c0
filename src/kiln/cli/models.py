"""`kiln list` (datasets, models, tasks) and `kiln summary` (a model's layer table)."""

from __future__ import annotations

import argparse


def cmd_list(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    table.add_column("name")
    table.add_column("description")
    if ns.what == "datasets":
        from kiln.data import DATASETS

        for name, entry in sorted(DATASETS.items()):
            table.add_row(name, entry.description)
    elif ns.what == "tasks":
        from kiln.tasks import TASKS

        table.add_column("metric")
        for name, entry in sorted(TASKS.items()):
            better = "higher" if entry.cls.higher_is_better else "lower"
            table.add_row(name, entry.description, f"{entry.cls.metric} ({better} is better)")
    else:
        from kiln.models.summary import DEFAULT_INPUT, catalogue

        shape = "x".join(map(str, DEFAULT_INPUT))
        table.add_column(f"parameters ({shape}, 10 classes)", justify="right")
        table.add_column("options")
        for row in catalogue():
            opts = ", ".join(f"{k}={v!r}" for k, v in row["options"].items())
            count = "-" if row["parameters"] is None else f"{row['parameters']:,}"
            table.add_row(row["name"], row["description"], count, opts or "-")
        for name, description in model_families():
            table.add_row(name, description, "-", "pretrained")
    Console().print(table)
    if ns.what == "tasks":
        print("Your own: @kiln.tasks.register_task in a module named under `imports:`.")
    if ns.what == "models":
        print("Your own: @kiln.models.register in a module named under `imports:` in the config.")
    return 0


def model_families() -> list[tuple[str, str]]:
    from kiln.models.torchvision_models import classification_models

    names = classification_models()
    rows = [
        ("tv:NAME", f"any of torchvision's {len(names)} classifiers: {', '.join(names[:8])}, ...")
    ]
    try:
        import timm

        rows.append(("timm:NAME", f"any of timm's {len(timm.list_models())} models"))
    except ImportError:
        from rich.markup import escape

        from kiln.errors import install_line

        hint = f"any timm model, with the timm extra: {install_line('timm')}"
        rows.append(("timm:NAME", escape(hint)))  # rich would take [timm] for markup
    return rows


def cmd_summary(ns: argparse.Namespace) -> int:
    """A model name (with model.* overrides) or a run directory."""
    from kiln.engine.summary import summarize

    print(summarize(ns.target, ns.overrides, input=ns.input, batch=ns.batch, classes=ns.classes))
    return 0


def add_parsers(verbs) -> None:
    p = verbs.add_parser("list", help="list datasets, models or tasks")
    p.add_argument("what", choices=["datasets", "models", "tasks"])
    p.set_defaults(func=cmd_list)

    p = verbs.add_parser(
        "summary",
        help="per-layer table of a model: output shapes, parameters, mult-adds, memory",
        description="Summarise a model by name (model.* overrides allowed) or a run directory.",
        epilog="examples:\n  kiln summary convnet --input 3x32x32 model.width=64\n"
        "  kiln summary runs/mnist-cnn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="MODEL|RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.depth=4")
    p.add_argument("--input", help="C x H x W, e.g. 1x28x28 (default: the run's, or 1x28x28)")
    p.add_argument("--batch", type=int, default=64, help="batch size for shapes and memory")
    p.add_argument("--classes", type=int, default=10, help="classes, for a model name")
    p.set_defaults(func=cmd_summary)
