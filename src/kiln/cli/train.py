"""`kiln train` and `kiln config show`: a config file and key=value overrides, checked before
torch is imported; several devices relaunch the command under torchrun."""

from __future__ import annotations

import argparse

from kiln.errors import KilnError

EPILOG_TRAIN = """examples:
  kiln train                                   digits + convnet, the defaults
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


def add_parsers(verbs) -> None:
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
