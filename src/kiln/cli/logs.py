"""-q/-v for every verb: the level of the `kiln` logger (kiln/logs.py: rich's handler on a
terminal, plain lines otherwise, NO_COLOR honoured)."""

from __future__ import annotations

import argparse
import logging


def configure(ns: argparse.Namespace) -> None:
    from kiln import logs

    if getattr(ns, "quiet", False):
        level = logging.WARNING
    elif getattr(ns, "verbose", False):
        level = logging.DEBUG
    else:
        level = logging.INFO
    logs.setup(level)
