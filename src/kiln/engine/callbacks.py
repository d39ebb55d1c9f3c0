"""Callbacks: things that watch training (progress, TensorBoard) without living in the loop."""

from __future__ import annotations

import sys
import time
import warnings
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from kiln.engine.trainer import Trainer


class Callback:
    """Override any of these; the trainer calls them in order."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_batch_end(self, trainer: Trainer, epoch: int, step: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...


def format_row(row: dict[str, Any], epochs: int) -> str:
    """The one summary line per epoch, Keras style."""
    return (
        f"Epoch {row['epoch']}/{epochs}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['samples_per_s']:,.0f} samples/s"
    )


class ProgressBar(Callback):
    """A live bar per epoch (loss, accuracy, samples/s, ETA) on a terminal; a line per epoch."""

    def __init__(self, console: Console | None = None, refresh_s: float = 0.2):
        self.console = console or Console(file=sys.stdout)
        self.refresh_s = refresh_s
        self.progress: Progress | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn(f"Epoch {epoch}/{trainer.epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task("train", total=trainer.steps_per_epoch, stats="")
        self.progress.start()
        self.last = time.perf_counter()

    def on_batch_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self.last < self.refresh_s and step + 1 < trainer.steps_per_epoch:
            return
        self.last = now
        loss, acc, rate = trainer.running_stats()
        stats = f"loss {loss:.4f} acc {acc:.2%} {rate:,.0f} samples/s"
        self.progress.update(self.task, completed=step + 1, stats=stats)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        self._stop()
        self.console.print(format_row(row, trainer.epochs), highlight=False, soft_wrap=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class TensorBoard(Callback):
    """Scalars per epoch, a grid of sample inputs, the model graph and weight histograms."""

    def __init__(self, log_dir: str, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir, purge_step=purge_step)

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.start_epoch > 0:
            return  # a resumed run already logged these
        samples = trainer.data.train.head(64)
        self.writer.add_images("samples/train", samples, 0, dataformats="NCHW")
        example = trainer.normalize(samples[:2].to(trainer.device))
        # Tracing runs the model once: keep it from touching the RNG the training run depends on.
        with torch.random.fork_rng(devices=[]):
            was_training = trainer.model.training
            trainer.model.eval()
            try:
                with warnings.catch_warnings():  # tracing is deprecated but TensorBoard needs it
                    warnings.simplefilter("ignore")
                    self.writer.add_graph(trainer.model, example)
            except Exception as exc:  # some models cannot be traced; the graph is optional
                print(f"note: model graph not written to TensorBoard ({exc})", file=sys.stderr)
            trainer.model.train(was_training)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        w = self.writer
        for split in ("train", "val"):
            w.add_scalar(f"loss/{split}", row[f"{split}_loss"], epoch)
            w.add_scalar(f"acc/{split}", row[f"{split}_acc"], epoch)
        w.add_scalar("lr", row["lr"], epoch)
        w.add_scalar("samples_per_s", row["samples_per_s"], epoch)
        for name, param in trainer.model.named_parameters():
            w.add_histogram(f"weights/{name}", param.detach().float().cpu(), epoch)
        w.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.writer.close()
