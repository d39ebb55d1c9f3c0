"""Training progress in Jupyter: a live bar and a table of epochs that fills in as they end,
drawn as HTML through IPython's display handles (updated in place, no widget library needed).
On a terminal the rich bar of callbacks.ProgressBar is used instead, and plain lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from html import escape
from typing import TYPE_CHECKING, Any

from kiln.engine.callbacks import Callback, ProgressBar

if TYPE_CHECKING:
    from kiln.engine.trainer import Trainer


def in_notebook() -> bool:
    """Running in a Jupyter kernel (IPython imported already: never imported here)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_callback() -> Callback:
    """What shows training as it goes: HTML in a notebook, else the terminal bar and lines."""
    return NotebookProgress() if in_notebook() else ProgressBar()


class NotebookProgress(Callback):
    """A progress bar per epoch (loss, the task's metric, samples/s, time left) and a table with
    one row per finished epoch, both updated in place."""

    def __init__(self, refresh_s: float = 0.5):
        self.refresh_s = refresh_s
        self.rows: list[dict[str, Any]] = []
        self.bar = self.table = None

    def _quiet(self) -> bool:
        return logging.getLogger("kiln").level > logging.INFO  # -q, or set by the user

    def on_fit_start(self, trainer: Trainer) -> None:
        if self._quiet():
            return
        from IPython.display import HTML, display

        self.rows = list(trainer.history)  # a resumed run shows its earlier epochs too
        self.table = display(HTML(self._table_html(trainer)), display_id=True)
        self.bar = display(HTML(""), display_id=True)
        self.last = 0.0

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.started = time.perf_counter()
        self._show_bar(trainer, epoch, 0, "")

    def on_batch_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        now = time.perf_counter()
        if self.bar is None or (
            now - self.last < self.refresh_s and step + 1 < trainer.steps_per_epoch
        ):
            return
        self.last = now
        loss, score, rate = trainer.running_stats()
        done = step + 1
        left = (now - self.started) / max(done, 1) * (trainer.steps_per_epoch - done)
        stats = (
            f"loss {loss:.4f} {trainer.task.show(score)} {rate:,.0f} samples/s, {left:.0f} s left"
        )
        self._show_bar(trainer, epoch, done, stats)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        if self.table is None:
            return
        from IPython.display import HTML

        self.rows.append(row)
        self.table.update(HTML(self._table_html(trainer)))

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            from IPython.display import HTML

            self.bar.update(HTML(""))  # the table says it all once training has ended

    def _show_bar(self, trainer: Trainer, epoch: int, step: int, stats: str) -> None:
        if self.bar is None:
            return
        from IPython.display import HTML

        total = trainer.steps_per_epoch
        self.bar.update(HTML(
            f"<div><b>Epoch {epoch}/{trainer.epochs}</b> "
            f'<progress value="{step}" max="{total}" style="width:40%"></progress> '
            f"{step}/{total} {escape(stats)}</div>"
        ))  # fmt: skip

    def _table_html(self, trainer: Trainer) -> str:
        from kiln.evaluate import notebook as nb

        task = trainer.task
        keys = [k for k in (self.rows[0] if self.rows else {}) if k != "epoch"]
        shown = []
        for row in self.rows:
            cells = [f"{row['epoch']:.0f}"]
            for key in keys:
                value = row.get(key, "")
                if key == "lr":
                    cells.append(f"{value:.2e}")
                elif key in ("seconds", "samples_per_s"):
                    cells.append(f"{value:,.1f}")
                else:
                    cells.append(task.format_value(key, value))
            shown.append(cells)
        header = ["epoch", *(k.replace("_", " ") for k in keys)]
        return nb.STYLE + '<div class="kiln-view">' + nb.table(header, shown, 0) + "</div>"
