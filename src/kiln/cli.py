"""The `kiln` command: each verb parses its arguments and hands over to the library."""

from __future__ import annotations

import argparse
import inspect
import json
import os
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
  kiln train train.devices=2                   two processes training together (torchrun)
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
        from kiln.rundir import RunDir

        saved = RunDir.open(ns.resume).load_config().to_dict()
        launched = relaunch(ns, build_config(saved, extra))
        if launched is not None:
            return launched
        from kiln.api import train

        train(resume=ns.resume, **extra)
        return 0
    cfg = build_config(config, overrides)  # validate before paying for torch's import
    launched = relaunch(ns, cfg)
    if launched is not None:
        return launched
    from kiln.api import train

    train(cfg)
    return 0


def relaunch(ns: argparse.Namespace, cfg) -> int | None:
    """train.devices=N > 1: this same command again under torchrun, N processes (returns its
    exit code); None when this process trains (one device, or started by torchrun already)."""
    if cfg.train.devices == 1:
        return None
    from kiln.engine import distributed

    processes = distributed.requested_devices(cfg.train.devices)
    if distributed.under_torchrun() or processes == 1:
        return None
    distributed.per_rank_batch(cfg.data.batch_size, processes)  # one clear error, not N
    resume = ["--resume", ns.resume] if ns.resume else []
    return distributed.launch(processes, ["train", *resume, *ns.args])


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
        rows.append(("timm:NAME", "any timm model, once installed: pip install 'kiln[timm]'"))
    return rows


def cmd_summary(ns: argparse.Namespace) -> int:
    """A model name (with model.* overrides) or a run directory."""
    from kiln.models import build_model, import_user_modules
    from kiln.models.summary import DEFAULT_INPUT, data_info, parse_input, summary_table

    target = Path(ns.target)
    if (target / "config.yaml").is_file():
        from kiln.rundir import RunDir

        if ns.overrides:
            raise KilnError("a run's model is summarised as trained: drop the key=value overrides")
        run = RunDir.open(target)
        cfg = run.load_config()
        if cfg.model.name == "custom":
            raise KilnError(
                f"{target} was trained with a model passed in Python: Kiln cannot rebuild it"
            )
        import_user_modules(cfg.imports)
        info = run.data_info()
        shape = parse_input(ns.input) if ns.input else info.input_shape
        if ns.input:
            info = data_info(shape, info.num_classes)
    else:
        from kiln.config import build_config

        overrides = [f"model.name={ns.target}", *ns.overrides]
        cfg = build_config(None, overrides)
        import_user_modules(cfg.imports)
        shape = parse_input(ns.input) if ns.input else DEFAULT_INPUT
        info = data_info(shape, ns.classes)
    model = build_model(cfg.model, info, load=False).model
    size = "x".join(map(str, (ns.batch, *shape)))
    print(f"{cfg.model.name}: input {size}, {info.num_classes} classes")
    print(summary_table(model, shape, ns.batch))
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
    counted = stats["counted"]  # images, or pixels for segmentation masks
    table = Table("class", "train", "val", "test", title=f"{stats['dataset']}: {counted} per class")
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
    axes = "(C, D, H, W)" if len(stats["input_shape"]) == 4 else "(C, H, W)"  # volumes: a depth
    console.print(f"input shape {axes}: {tuple(stats['input_shape'])}")
    console.print(
        "sizes before resizing: " + ", ".join(f"{k} ({v})" for k, v in stats["sizes"].items())
    )
    console.print("modes: " + ", ".join(f"{k} ({v})" for k, v in stats["modes"].items()))
    console.print(f"mean {stats['mean']}  std {stats['std']} (training split)")
    if stats["skipped"]:
        console.print(f"[yellow]{len(stats['skipped'])} bad file(s) skipped[/] (data.on_bad=skip)")
    return 0


def cmd_data_make(ns: argparse.Namespace) -> int:
    from kiln.data import default_root
    from kiln.data.make import MAKERS

    root = Path(ns.data_root).expanduser() if ns.data_root else default_root()
    out = Path(ns.output or f"data/{ns.name}")
    maker = MAKERS[ns.name]
    accepted = inspect.signature(maker).parameters
    given = {k: getattr(ns, k) for k in ("train", "test", "max_angle", "size", "seed")}
    options = {k: v for k, v in given.items() if v is not None}  # else the maker's defaults
    for key in options:
        if key not in accepted:
            raise KilnError(f"--{key.replace('_', '-')} is not an option of {ns.name}")
    made = maker(root, out, **options)
    print(f"wrote {made}" + (f" and the images under {out / 'images'}" if made.is_file() else ""))
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


def cmd_predict(ns: argparse.Namespace) -> int:
    import kiln
    from kiln.predict import expand_paths

    target = Path(ns.run)
    if (target / "config.yaml").is_file() and run_task(target) == "segment":
        return cmd_predict_masks(ns)
    if ns.output or ns.overlay:
        raise KilnError("-o/--output and --overlay write masks: they are for segmentation runs "
                        "(task=segment)")  # fmt: skip
    if target.is_file() or (target.is_dir() and not (target / "config.yaml").exists()):
        from kiln.deploy.runtime import load_servable  # an export: its own runtime answers

        predictor = load_servable(target)
    else:
        predictor = kiln.load(ns.run, ns.checkpoint)
    files = expand_paths(ns.paths)
    results = []
    if predictor.info.features:  # a table run: CSV files of rows
        for table in files:
            results += predictor.predict_table(table, top_k=ns.top_k)
    else:
        for begin in range(0, len(files), 256):
            results += predictor.predict(files[begin : begin + 256], top_k=ns.top_k)
    if ns.json:
        print(json.dumps(results))
        return 0
    for r in results:
        if "values" in r:  # task=regress
            shown = "  ".join(f"{name} {value:.4g}" for name, value in r["values"].items())
            if "line" in r:
                shown = f"line {r['line']}: {shown}"
        else:
            shown = "  ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top_k"])
        print(f"{r['file']}: {shown}")
    return 0


def run_task(run_dir: Path) -> str:
    from kiln.rundir import RunDir

    return RunDir.open(run_dir).load_config().task


def cmd_predict_masks(ns: argparse.Namespace) -> int:
    """`kiln predict` of a segmentation run: a mask of class indices per image, in a folder."""
    from kiln.predict_masks import MaskPredictor, expand_inputs

    predictor = MaskPredictor.from_run(ns.run, ns.checkpoint)
    files = expand_inputs(ns.paths, volumes=predictor.info.depth is not None)
    out = Path(ns.output) if ns.output else Path(ns.run) / "predictions"
    results = predictor.write(files, out, with_overlay=ns.overlay)
    if ns.json:
        print(json.dumps(results))
        return 0
    for r in results:
        shares = ", ".join(f"{name} {share:.1%}" for name, share in list(r["classes"].items())[:4])
        print(f"{r['file']} -> {r['mask']}  ({shares})")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description="Kiln: train, evaluate, predict, export and serve with PyTorch."
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
    from kiln.data.make import MAKERS

    q = sub.add_parser(
        "make", help="build a derived dataset (mnist-rotation: rotated digits and their angles; "
        "mnist-seg, shapes3d: segmentation images and volumes with masks)",
        description="Build a dataset from a built-in one (or a synthetic one), as files.",
    )  # fmt: skip
    q.add_argument("name", choices=sorted(MAKERS))
    q.add_argument("-o", "--output", help="folder to write (default data/NAME)")
    q.add_argument("--data-root", help="where MNIST is (default $KILN_DATA or the cache)")
    q.add_argument("--train", type=int, help="training images (mnist-rotation 12,000, "
                   "mnist-seg 10,000, shapes3d 400)")  # fmt: skip
    q.add_argument("--test", type=int, help="test images (2,000, 1,000, 100)")
    q.add_argument("--max-angle", type=float, help="mnist-rotation: degrees (45)")
    q.add_argument("--size", type=int, help="mnist-seg: canvas side (64); shapes3d: volume (32)")
    q.add_argument("--seed", type=int, help="random seed (0)")
    q.set_defaults(func=cmd_data_make)

    p = verbs.add_parser("eval", help="evaluate a run on its test or validation split")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = verbs.add_parser("predict", help="classify image files or folders with a trained run")
    p.add_argument("run", metavar="RUN_DIR|EXPORT")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("-o", "--output", help="segment runs: folder for the masks (RUN/predictions)")
    p.add_argument("--overlay", action="store_true", help="segment runs: NAME.overlay.png too")
    p.set_defaults(func=cmd_predict)

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

    from kiln.deploy.cli import add_parsers

    add_parsers(verbs)
    from kiln.sample import add_parser as add_sample

    add_sample(verbs)
    from kiln.tune.cli import add_parsers as add_tune

    add_tune(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:  # key=value after an option (`kiln summary convnet --input 1x8x8 model.width=8`)
        target = "overrides" if hasattr(ns, "overrides") else "args"
        if not hasattr(ns, target) or not all("=" in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(ns, target, [*getattr(ns, target), *extra])
    try:
        return ns.func(ns)
    except KilnError as exc:
        if exc.exit_code != 130:
            print(f"error: {exc}", file=sys.stderr)
        elif os.environ.get("RANK", "0") == "0":  # several processes: rank 0 says it once
            print(exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
