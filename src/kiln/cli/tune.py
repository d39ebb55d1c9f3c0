"""The `kiln tune` verb: a hyperparameter study, or with --lr-find the learning-rate range test."""

from __future__ import annotations

import argparse
import os

from kiln.cli.train import split_config_args
from kiln.errors import KilnError
from kiln.secrets import STORAGE_VARIABLE

EPILOG = """examples:
  kiln tune recipes/tune-digits.yaml --trials 20          runs/tune-digits/{best.yaml,report.html}
  kiln tune recipes/tune-digits.yaml --trials 40 --workers 2      two processes share the study
  kiln tune recipes/tune-digits.yaml --storage postgresql://user:pw@db/kiln --study lr-sweep
  kiln tune --lr-find recipes/mnist-cnn.yaml              loss against lr, and a suggested lr
The search space is tune.space in the config, e.g.
  tune:
    space:
      optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}
      model.dropout: {uniform: [0, 0.5]}
      optim.name: {choice: [sgd, adam]}
Re-running the same command continues the study: only the missing trials run."""


def cmd_tune(ns: argparse.Namespace) -> int:
    from kiln.config import build_config

    config, overrides = split_config_args(ns.args)
    cfg = build_config(config, overrides)  # validate before paying for torch's import
    if ns.lr_find:
        return lr_find(ns, cfg, config, overrides)
    from kiln.tune import tune

    tune(
        config,
        overrides,
        trials=ns.trials,
        timeout=ns.timeout,
        storage=ns.storage or os.environ.get(STORAGE_VARIABLE) or None,
        study=ns.study,
        workers=ns.workers,
        worker_index=ns.worker_index,
        report=not ns.no_report,
        verbose=ns.verbose,
    )
    return 0


def lr_find(ns: argparse.Namespace, cfg, config: str | None, overrides: list[str]) -> int:
    import shlex

    from kiln.tune.lr_find import lr_find as run

    study_flags = ("trials", "timeout", "storage", "study")
    given = [f"--{k}" for k in study_flags if getattr(ns, k) is not None]
    if given or ns.workers != 1:
        raise KilnError(
            f"--lr-find runs one range test: drop {', '.join(given) or '--workers'} "
            "(those are for a study)"
        )
    result = run(cfg, start=ns.start_lr, end=ns.end_lr, steps=ns.steps, output=ns.output)
    print(f"LR range test: {len(result.lrs)} steps from {result.lrs[0]:.1e} to "
          f"{result.lrs[-1]:.1e} ({result.stopped})")  # fmt: skip
    print(f"Suggested lr: {result.suggestion:.2e} (steepest descent of the smoothed loss); "
          f"minimum/10: {result.min_div10:.2e}")  # fmt: skip
    print(f"Plot: {result.plot}")
    kept = [o for o in overrides if o.split("=", 1)[0].strip() not in ("lr", "optim.lr")]
    words = [
        "kiln",
        "train",
        *([config] if config else []),
        *kept,
        f"optim.lr={result.suggestion:.2g}",
    ]
    print(f"Use it: {' '.join(shlex.quote(w) for w in words)}")
    return 0


def add_parsers(verbs) -> None:
    p = verbs.add_parser(
        "tune",
        help="search hyperparameters (tune.space) with Optuna, or --lr-find a learning rate",
        description="Run a study over the config's tune.space: each trial is a run in "
        "RUN_DIR/STUDY/trial-NNNN, bad trials are pruned after an epoch, and the study's folder "
        "gets best.yaml (ready for kiln train), trials.csv and report.html.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    p.add_argument("--trials", type=int, help="trials in the study, all workers together "
                   "(default tune.trials, 20)")  # fmt: skip
    p.add_argument("--timeout", type=float, help="seconds; no new trial starts after this")
    p.add_argument(
        "--storage",
        help="SQLAlchemy URL (default $KILN_STORAGE, else tune.storage, else sqlite in "
        "RUN_DIR/STUDY/study.db); a URL with a password is best given as $KILN_STORAGE, "
        "which no other user can see in the process list",
    )
    p.add_argument("--study", help="study name (default tune.study, run.name or the file's name)")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine (1)")
    g = p.add_argument_group("learning-rate range test")
    g.add_argument("--lr-find", action="store_true", help="sweep lr, plot loss, suggest an lr")
    g.add_argument("--start-lr", type=float, default=1e-7, help="first lr (1e-7)")
    g.add_argument("--end-lr", type=float, default=10.0, help="last lr (10)")
    g.add_argument("--steps", type=int, default=100, help="batches, one per lr (100)")
    g.add_argument("-o", "--output", help="folder for lr_find.png (default RUN_DIR/NAME-lr-find)")
    # Set by `--workers K` for the processes it starts.
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_tune)
