"""Where Kiln's messages go: the `kiln` logger, with rich's handler on a terminal (colour unless
NO_COLOR is set) and plain lines otherwise (files, pipes, CI, notebooks). Messages go to stdout,
warnings and errors to stderr. The CLI sets the level from -q/-v; the Python API adds the same
handlers the first time it speaks, unless the program has set up logging of its own."""

from __future__ import annotations

import logging
import os
import sys

LOGGER = "kiln"


class _Plain(logging.Handler):
    """`%(message)s` to the sys.stdout or sys.stderr of the moment (pytest and Jupyter replace
    them), warnings as `warning: ...`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            if record.levelno >= logging.WARNING and not text.startswith(("note:", "warning:")):
                text = f"warning: {text}"
            stream.write(text + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 (logging must never raise)
            self.handleError(record)


def in_terminal() -> bool:
    """stdout is an interactive terminal (not a pipe, a file or a notebook)."""
    from rich.console import Console

    console = Console(file=sys.stdout)
    return console.is_terminal and not console.is_jupyter and os.environ.get("TERM") != "dumb"


def _handlers() -> list[logging.Handler]:
    if not in_terminal():
        return [_Plain()]
    from rich.console import Console
    from rich.logging import RichHandler

    out = RichHandler(console=Console(file=sys.stdout), show_time=False, show_level=False,
                      show_path=False, markup=False, rich_tracebacks=False)  # fmt: skip
    out.addFilter(lambda r: r.levelno < logging.WARNING)
    err = RichHandler(console=Console(file=sys.stderr), show_time=False, show_path=False,
                      markup=False)  # fmt: skip
    err.setLevel(logging.WARNING)
    return [out, err]


def setup(level: int = logging.INFO) -> logging.Logger:
    """Kiln's handlers on the `kiln` logger, at `level` (replacing any set before)."""
    logger = logging.getLogger(LOGGER)
    for old in list(logger.handlers):
        if getattr(old, "_kiln", False):
            logger.removeHandler(old)
    for handler in _handlers():
        handler._kiln = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # said once, not again by a root handler
    return logger


def ensure() -> logging.Logger:
    """The `kiln` logger, given Kiln's handlers unless it has some already. To send Kiln's
    messages to handlers of your own instead: `logging.getLogger("kiln").propagate = True`
    after removing its handlers, or add yours to it before the first call."""
    logger = logging.getLogger(LOGGER)
    if not logger.handlers:
        setup(logger.level or logging.INFO)
    return logger
