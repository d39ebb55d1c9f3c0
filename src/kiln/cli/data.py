"""`kiln data show|stats|make|cache`: look at a dataset before training on it, build one, or
list and remove the decoded-image caches of folder and CSV datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kiln.errors import KilnError

# The names of kiln.data.make's makers, here so that `kiln --help` need not import torch
# (tests/test_cli.py checks the two lists agree).
MAKER_NAMES = ("mnist-rotation", "mnist-pairs", "mnist-seg", "shapes3d")


def data_config(ns: argparse.Namespace):
    """DATA is a config file or a dataset name (or `data=NAME`, as in kiln train), followed by
    overrides; without it, the default dataset."""
    from kiln.api import resolve
    from kiln.config import build_config

    overrides = list(ns.overrides)
    if ns.data is None or "=" in ns.data:
        return resolve(build_config(None, [*([ns.data] if ns.data else []), *overrides]))
    if ns.data.endswith((".yaml", ".yml")):
        return resolve(build_config(ns.data, overrides))
    return resolve(build_config(None, [f"data.name={ns.data}", *overrides]))


def cmd_data_stats(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kiln import data as kdata
    from kiln.data.preview import data_stats

    bundle = kdata.build(data_config(ns).data)
    stats = data_stats(bundle)
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
    if bundle.note:
        print(bundle.note)
    return 0


def cmd_data_make(ns: argparse.Namespace) -> int:
    import inspect

    from kiln.config import parse_override
    from kiln.data import default_root
    from kiln.data.make import MAKERS

    given_root = ns.data_root
    for key, value in map(parse_override, ns.overrides):
        if key != "data.root":
            raise KilnError(
                f"kiln data make reads the source data from data.root=DIR; '{key}' is not one of "
                "its settings (the sizes are flags: --train, --test, ...)"
            )
        given_root = str(value)
    root = Path(given_root).expanduser() if given_root else default_root()
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
    from kiln.data.transforms import build_augment, resolve_augment

    cfg = data_config(ns)
    bundle = kdata.build(cfg.data)
    steps = resolve_augment(cfg.data.augment)
    info = bundle.info
    augment = None
    if ns.augmented and steps:  # per sample, as a DataLoader worker would apply them
        augment = build_augment(steps, (info.height, info.width), info.channels)
    if ns.augmented and augment is None:
        raise KilnError(
            "--augmented: data.augment is 'none'; set data.augment=light|standard|strong"
        )
    out = sample_grid(bundle, Path(ns.output), ns.n, augment)
    print(f"wrote {out}")
    return 0


def cache_dir(ns: argparse.Namespace) -> Path:
    from kiln.data.cache import cache_folder

    return Path(ns.dir).expanduser() if ns.dir else cache_folder("auto")


def cmd_data_cache_ls(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kiln.data.cache_store import entries
    from kiln.data.placement import human

    folder = cache_dir(ns)
    found, unfinished = entries(folder)
    console = Console()
    if not found:
        print(f"no decoded-image caches in {folder}")
    else:
        table = Table(title=str(folder))
        table.add_column("cache", no_wrap=True, min_width=max(len(e.name) for e in found))
        table.add_column("dataset", overflow="fold")  # whole, to paste into `rm`
        table.add_column("images", justify="right")
        table.add_column("size", justify="right")
        table.add_column("created")
        for e in found:
            table.add_row(e.name, e.dataset, f"{e.images:,}", human(e.bytes), e.created)
        console.print(table, soft_wrap=True)
        print(f"{len(found)} cache(s), {human(sum(e.bytes for e in found))} in all")
    if unfinished:
        print(
            f"{len(unfinished)} unfinished build(s), of kiln processes still decoding or stopped "
            "half way (`kiln data cache rm --all` removes the stopped ones)"
        )
    return 0


def cmd_data_cache_rm(ns: argparse.Namespace) -> int:
    from kiln.data.cache_store import remove
    from kiln.data.placement import human

    if bool(ns.names) == ns.all:
        raise KilnError(
            "kiln data cache rm: name the caches to remove (`kiln data cache ls` lists them) "
            "or give --all, not both"
        )
    folder = cache_dir(ns)
    removed, cleared = remove(folder, None if ns.all else ns.names)
    freed = human(sum(e.bytes for e in removed))
    names = "".join(f"\n  {e.name} ({e.dataset})" for e in removed)
    print(f"removed {len(removed)} cache(s), {freed}, from {folder}{names}")
    if cleared:
        print(f"removed {cleared} unfinished build(s) left by stopped kiln processes")
    return 0


def add_parsers(verbs) -> None:
    p = verbs.add_parser(
        "data", help="look at a dataset: a grid of samples, or statistics; its decoded cache"
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, func, doc in (
        ("show", cmd_data_show, "write a labelled grid of training images"),
        ("stats", cmd_data_stats, "images per class and split, imbalance, sizes, modes, mean/std"),
    ):
        q = sub.add_parser(name, help=doc, description=doc)
        q.add_argument(
            "data",
            metavar="DATA",
            nargs="?",
            help="a dataset name (e.g. mnist, folder), data=NAME, or a config (default: digits)",
        )
        q.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=images/")
        q.set_defaults(func=func)
        if name == "show":
            q.add_argument("-n", "--n", type=int, default=64, help="how many images (default 64)")
            q.add_argument("--augmented", action="store_true", help="as training sees them")
            q.add_argument("-o", "--output", default="grid.png", help="PNG to write")
        else:
            q.add_argument("--json", action="store_true", help="print one JSON object")

    q = sub.add_parser(
        "make", help="build a derived dataset (mnist-rotation: rotated digits and their angles; "
        "mnist-pairs: two digits side by side, labelled with both; "
        "mnist-seg, shapes3d: segmentation images and volumes with masks)",
        description="Build a dataset from a built-in one (or a synthetic one), as files.",
    )  # fmt: skip
    q.add_argument("name", choices=MAKER_NAMES)
    q.add_argument("overrides", nargs="*", metavar="data.root=DIR",
                   help="where MNIST is (default $KILN_DATA or the cache)")  # fmt: skip
    q.add_argument("-o", "--output", help="folder to write (default data/NAME)")
    q.add_argument("--data-root", help=argparse.SUPPRESS)  # before data.root=: still read
    q.add_argument("--train", type=int, help="training images (mnist-rotation and mnist-pairs "
                   "12,000, mnist-seg 10,000, shapes3d 400)")  # fmt: skip
    q.add_argument("--test", type=int, help="test images (2,000, 2,000, 1,000, 100)")
    q.add_argument("--max-angle", type=float, help="mnist-rotation: degrees (45)")
    q.add_argument("--size", type=int, help="mnist-seg: canvas side (64); shapes3d: volume (32)")
    q.add_argument("--seed", type=int, help="random seed (0)")
    q.set_defaults(func=cmd_data_make)

    q = sub.add_parser(
        "cache", help="list or remove the decoded images kept for folder and csv datasets",
        description="Folder and CSV datasets are decoded once and kept for later runs "
        "(data.cache=auto|off|PATH); list those caches, or remove them.",
    )  # fmt: skip
    ops = q.add_subparsers(dest="op", metavar="OP", required=True)
    for name, func, doc in (
        ("ls", cmd_data_cache_ls, "list the caches: dataset, images, size on disk, created"),
        ("rm", cmd_data_cache_rm, "remove caches by name or dataset path, or --all"),
    ):
        r = ops.add_parser(name, help=doc, description=doc)
        r.add_argument(
            "--dir", help="the cache folder (default: decoded/ under $KILN_CACHE or ~/.cache/kiln;"
            " give the folder of a data.cache=PATH)",
        )  # fmt: skip
        r.set_defaults(func=func)
        if name == "rm":
            r.add_argument("names", nargs="*", metavar="NAME", help="a cache or dataset path")
            r.add_argument("--all", action="store_true", help="every cache in the folder")
