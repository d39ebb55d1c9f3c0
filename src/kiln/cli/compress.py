"""The compression verbs of the `kiln` command: `kiln prune` and `kiln compress`."""

from __future__ import annotations

import argparse

EPILOG_PRUNE = """examples:
  kiln prune runs/mnist-fast --sparsity 0.5                  half the weights zeroed, 2 epochs
  kiln prune runs/mnist-fast --sparsity 0.8 --epochs 3
  kiln prune runs/mnist-fast --sparsity 0.5 --structured channels    narrower convolutions
  kiln prune runs/mnist-fast --sparsity 0.5 data.root=DIR     key=value: the new run's config
The new run (RUN-pruned50, RUN-channels50) records its parent in prune.json and its report."""

EPILOG_COMPRESS = """examples:
  kiln compress runs/mnist-fast          fp32, int8 dynamic and static, ExecuTorch, and the
                                         run's pruned and distilled children, in one table
  kiln compress runs/mnist-fast --runs runs/student-a runs/other --rounds 5
  kiln compress runs/mnist-fast --export-again     do not reuse the exports in RUN/exports"""


def cmd_prune(ns: argparse.Namespace) -> int:
    from kiln.compress.prune import prune_run

    prune_run(ns.run, ns.sparsity, structured=ns.structured, epochs=ns.epochs, lr=ns.lr,
              overrides=ns.overrides)  # fmt: skip
    return 0


def cmd_compress(ns: argparse.Namespace) -> int:
    from kiln.compress.table import compress_run

    compress_run(ns.run, extra_runs=ns.runs, rounds=ns.rounds, calls=ns.calls,
                 formats=tuple(ns.formats), export_again=ns.export_again)  # fmt: skip
    return 0


def add_parsers(verbs) -> None:
    p = verbs.add_parser(
        "prune",
        help="prune a run's weights (or channels) and fine-tune the result into a new run",
        description="Prune the best checkpoint of a run with torch.nn.utils.prune: global "
        "magnitude pruning of the convolution and linear weights, or whole channels "
        "(--structured channels, a narrower model), then fine-tune it into a new run.",
        epilog=EPILOG_PRUNE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="for the new run's config")
    p.add_argument("--sparsity", type=float, required=True,
                   help="share of weights (or channels) removed, between 0 and 1")  # fmt: skip
    p.add_argument("--structured", choices=["channels"],
                   help="remove whole output channels of convolutions")  # fmt: skip
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (2)")
    p.add_argument(
        "--lr",
        type=float,
        help="fine-tuning learning rate (the run's; a tenth of it when unstructured)",
    )
    p.set_defaults(func=cmd_prune)

    p = verbs.add_parser(
        "compress",
        help="one table of a run's smaller forms: size, non-zero parameters, latency, accuracy",
        description="Export a run as fp32, dynamic and static int8 ONNX and ExecuTorch programs, "
        "measure them and the run's pruned and distilled children (size, non-zero parameters, "
        "CPU latency at batch 1, throughput at batch 64, validation accuracy), print the table "
        "and add it to the run's report.",
        epilog=EPILOG_COMPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument(
        "--runs", nargs="*", default=[], metavar="RUN",
        help="more runs to measure (pruned and distilled children are found)",
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=int, default=3,
        help="latency measured this many times, in turn, the median kept (3)",
    )  # fmt: skip
    p.add_argument("--calls", type=int, default=300, help="batch-1 calls per round (300)")
    p.add_argument(
        "--formats", nargs="+", default=["onnx", "executorch"], choices=["onnx", "executorch"],
        help="the run's own exports to measure (both by default)",
    )  # fmt: skip
    p.add_argument(
        "--export-again", action="store_true",
        help="write every export anew (by default one already in RUN/exports is measured as it "
        "is when it was made from the same checkpoint with the same settings)",
    )  # fmt: skip
    p.set_defaults(func=cmd_compress)
