"""The `kiln` command: each verb parses its arguments and hands over to the library.

One module per group of verbs, each with its `add_parsers(verbs)`: train.py (train, config),
models.py (list, summary), data.py (data show|stats|make), evaluate.py (eval, report, compare),
predict.py (predict, sample), deploy.py (export, serve) and tune.py (tune). Building
the parser imports no torch, so `kiln --help` and a config error answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from kiln._version import __version__
from kiln.cli import data, deploy, evaluate, models, predict, train, tune
from kiln.errors import KilnError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description="Kiln: train, evaluate, predict, export and serve with PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add_parsers in (
        train.add_parsers,  # train, config
        models.add_parsers,  # list, summary
        data.add_parsers,  # data show|stats|make
        evaluate.add_parsers,  # eval, report, compare
        predict.add_parsers,  # predict, sample
        deploy.add_parsers,  # export, serve
        tune.add_parsers,  # tune
    ):
        add_parsers(verbs)
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


def run() -> None:
    """The `kiln` console script: `main()`, then a quick exit (kiln/cli/exit.py)."""
    from kiln.cli.exit import exit_now

    exit_now(main())
