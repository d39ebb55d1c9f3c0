"""The `kiln` command: each verb parses its arguments and hands over to the library.

One module per group of verbs, each with its `add_parsers(verbs)`: train.py (train, config),
models.py (list, summary), data.py (data show|stats|make), evaluate.py (eval, report, compare),
predict.py (predict, sample), deploy.py (export, serve), compress.py (prune, compress),
tune.py (tune) and completion.py. usage.py gives every verb the same parser, -q/-v and the words
for a bad flag; logs.py sets the level of Kiln's messages. Building the parser imports no torch,
so `kiln --help` and a config error answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from kiln._version import __version__
from kiln.cli import (
    completion,
    compress,
    data,
    deploy,
    evaluate,
    logs,
    models,
    predict,
    train,
    tune,
    usage,
)  # fmt: skip
from kiln.errors import KilnError

# Verbs that load a run folder or an export, whose `imports:` (code) need --trust-imports.
LOADS_RUNS = ("train", "eval", "report", "predict", "sample", "export", "serve", "summary")
TRUST_HELP = (
    "import the Python modules that the run's config.yaml (or the export's sidecar) names under "
    "`imports:`; without it Kiln refuses to run code found in a run folder"
)


def build_parser() -> argparse.ArgumentParser:
    parser = usage.KilnParser(
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
        compress.add_parsers,  # prune, compress
        tune.add_parsers,  # tune
        completion.add_parsers,  # completion
    ):
        add_parsers(verbs)
    for verb in LOADS_RUNS:
        verbs.choices[verb].add_argument("--trust-imports", action="store_true", help=TRUST_HELP)
    usage.finish(parser)  # -q/-v on every verb
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:  # key=value after an option (`kiln summary convnet --input 1x8x8 model.width=8`)
        target = "overrides" if hasattr(ns, "overrides") else "args"
        if not hasattr(ns, target) or not all("=" in e and not e.startswith("-") for e in extra):
            usage.reject(ns, extra, argv)  # the verb's own usage, and what was meant
        setattr(ns, target, [*getattr(ns, target), *extra])
    logs.configure(ns)
    try:
        if getattr(ns, "trust_imports", False):
            from kiln.models.build import trust_imports

            with trust_imports():
                return ns.func(ns)
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
    except BrokenPipeError:  # `kiln predict ... | head -1`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush fails silently too
        return 141  # as a process killed by SIGPIPE
    except (MemoryError, RecursionError) as exc:
        name = "memory" if isinstance(exc, MemoryError) else "stack depth (recursion)"
        print(f"error: ran out of {name}; try a smaller batch, image or input", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug in Kiln: one line here, the traceback in a file
        print(f"error: {crash_report(exc)}", file=sys.stderr)
        return 1


def crash_report(exc: BaseException) -> str:
    """Save the traceback of an unexpected error to a file; the line to print about it."""
    import tempfile
    import traceback

    from kiln.secrets import mask

    text = "".join(traceback.format_exception(exc))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    what = mask(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
    try:
        folder = os.path.join(tempfile.gettempdir(), "kiln-crashes")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="traceback-", suffix=".txt", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(mask(f"kiln {__version__}: {' '.join(sys.argv)}\n\n{text}"))
    except OSError:
        return f"unexpected {what}. This is a bug in Kiln; please report it:\n{mask(text)}"
    return (
        f"unexpected {what}. This is a bug in Kiln, not something you did; the traceback is in "
        f"{path} (please attach it to a bug report)"
    )


def run() -> None:
    """The `kiln` console script: `main()` in a process marked as Kiln's own (kiln/process.py),
    then a quick exit (kiln/cli/exit.py)."""
    from kiln.cli.exit import exit_now
    from kiln.process import mark_command

    mark_command()
    exit_now(main())
