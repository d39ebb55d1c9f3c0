"""Imports the end of a run needs, made while it trains.

The report's charts need matplotlib, a few tenths of a second to import, which would otherwise be
paid after the test line, while the user waits. `preload` imports such modules in a daemon thread
once training is under way: most of an import is Python, which runs while the training step is
inside torch's kernels (they release the interpreter's lock). Python's import machinery makes this
safe: if the report starts before the thread has finished, its own import waits for the thread's.
Only modules that training itself never imports are preloaded (matplotlib and what it needs), so
the two threads never wait on each other; and a failed preload only means the report imports the
module itself, as it would have anyway.
"""

from __future__ import annotations

import importlib
import threading

from kiln.engine.callbacks import Callback


def preload(*modules: str) -> threading.Thread:
    """Import `modules` in a background thread; the thread is returned (tests join it)."""

    def work() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: S110 (the report imports it again, and says what failed)
                pass

    thread = threading.Thread(target=work, name="kiln-preload", daemon=True)
    thread.start()
    return thread


REPORT_MODULES = ("kiln.evaluate.plots", "matplotlib.backends.backend_agg")


class PreloadReport(Callback):
    """Starts preloading what every task's report draws with, after the first training step
    (which itself should start as early as it can)."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None

    def on_batch_end(self, trainer, epoch: int, step: int) -> None:
        if self.thread is None:
            self.thread = preload(*REPORT_MODULES)
