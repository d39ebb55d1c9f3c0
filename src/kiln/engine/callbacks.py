"""Callbacks: things that watch training (progress, TensorBoard) without living in the loop.
The experiment trackers (MLflow, Weights & Biases) are in kiln/engine/loggers/."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from kiln.config import RunConfig
    from kiln.engine.results import Run
    from kiln.engine.trainer import Trainer

log = logging.getLogger("kiln.engine")


class Callback:
    """Override any of these; the trainer calls them in order."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_batch_end(self, trainer: Trainer, epoch: int, step: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_run_end(self, trainer: Trainer, run: Run) -> None:
        """After the test evaluation and the report (not after an interrupt)."""


class RecordConfig(Callback):
    """A resumed run's config (more epochs, other devices) is written to config.yaml once the
    first checkpoint made with it exists, never before (see RunDir.resume_config)."""

    def __init__(self, cfg: RunConfig):
        self.cfg, self.done = cfg, False

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        if not self.done and trainer.run.load_config() != self.cfg:
            trainer.run.write_config(self.cfg)
        self.done = True


def format_row(row: dict[str, Any], epochs: int, task) -> str:
    """The one summary line per epoch, Keras style (the task says how its metric reads)."""
    m = task.metric
    val = ""  # none without a validation split (data.val_fraction=0)
    if "val_loss" in row:
        val = f"val loss {row['val_loss']:.4f} {task.show(row[f'val_{m}'])}  "
    return (
        f"Epoch {row['epoch']}/{epochs}  "
        f"train loss {row['train_loss']:.4f} {task.show(row[f'train_{m}'])}  {val}"
        f"lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['samples_per_s']:,.0f} samples/s"
    )


class ProgressBar(Callback):
    """A live bar per epoch (loss, the task's metric, samples/s, ETA) on a terminal; a line per
    epoch (through logging: -q hides both)."""

    def __init__(self, console: Console | None = None, refresh_s: float = 0.2):
        self.console = console or Console(file=sys.stdout)
        self.refresh_s = refresh_s
        self.progress: Progress | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        quiet = logging.getLogger("kiln").level > logging.INFO  # -q
        if not self.console.is_terminal or quiet:
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
        loss, score, rate = trainer.running_stats()
        stats = f"loss {loss:.4f} {trainer.task.show(score)} {rate:,.0f} samples/s"
        self.progress.update(self.task, completed=step + 1, stats=stats)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        self._stop()
        log.info(format_row(row, trainer.epochs, trainer.task))

    def on_fit_end(self, trainer: Trainer) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def after_existing_events(log_dir: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with the second it
    was created in: a resumed run's file must sort after the earlier ones (same second, same
    process: the tie would fall to a counter compared as text) for its purge_step to apply."""
    seconds = [
        int(p.name.split(".")[3])
        for p in log_dir.glob("events.out.tfevents.*")
        if p.name.split(".")[3].isdigit()
    ]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


class TensorBoard(Callback):
    """Scalars per epoch, a grid of sample inputs, the model graph, weight histograms, the task's
    per-epoch images (`task.epoch_images(ctx, epoch)` -> {tag: CHW image})
    and, once training has finished, the run's hyperparameters against its final metrics.

    `log_every` (run.log_every): also the mean training loss and the lr of every N steps, by
    step, in tb/steps/ (the tutorials' `running_loss / N`).

    The writer (and TensorBoard's import), the sample grid and the graph are made at the end of the
    first epoch rather than before it: training starts without waiting for them."""

    HPARAMS_SUFFIX = ".hparams"  # the hparams file is rewritten when a finished run is extended

    def __init__(self, log_dir: str, purge_step: int | None = None, log_every: int | None = None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self._writer = None
        self.new_run = False  # this fit starts the run: it logs the samples and the graph
        self.log_every, self.steps = log_every, None
        self.loss_sum, self.losses = 0.0, 0

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self.purge_step is not None:
                after_existing_events(Path(self.log_dir))
            self._writer = SummaryWriter(self.log_dir, purge_step=self.purge_step)
        return self._writer

    def on_fit_start(self, trainer: Trainer) -> None:
        self.new_run = trainer.start_epoch == 0  # a resumed run already logged them
        if self.log_every:
            self.open_steps(trainer)

    def log_inputs(self, trainer: Trainer) -> None:
        """A grid of training images and the model graph, logged once per run."""
        samples = trainer.data.train.head(64)
        image_like = samples.dim() == 4 and samples.shape[1] in (1, 3)  # not tables, volumes
        if samples.dtype == torch.uint8 and image_like:
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
                log.warning(f"note: model graph not written to TensorBoard ({exc})")
            trainer.model.train(was_training)

    def open_steps(self, trainer: Trainer) -> None:
        """tb/steps/: its own event files, so that resuming purges by step there and by epoch
        in tb/ (a SummaryWriter purges every tag from one step on)."""
        from torch.utils.tensorboard import SummaryWriter

        done = trainer.start_epoch * trainer.steps_per_epoch + trainer.start_step
        folder = Path(self.log_dir) / "steps"
        if done:
            after_existing_events(folder)
        self.steps = SummaryWriter(str(folder), purge_step=done + 1 if done else None)

    def on_batch_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        if self.steps is None:
            return
        self.loss_sum = self.loss_sum + trainer.batch_loss.detach()  # no device sync here
        self.losses += 1
        global_step = (epoch - 1) * trainer.steps_per_epoch + step + 1
        if global_step % self.log_every == 0:
            self.steps.add_scalar(
                "step/train_loss", float(self.loss_sum) / self.losses, global_step
            )
            self.steps.add_scalar("step/lr", trainer.optimizer.param_groups[0]["lr"], global_step)
            self.loss_sum, self.losses = 0.0, 0

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        if self.new_run:
            self.log_inputs(trainer)
            self.new_run = False
        if self.steps is not None:
            self.steps.flush()
        w = self.writer
        for key, value in row.items():  # loss, the task's metric and any other value it logs
            split, _, name = key.partition("_")
            if split in ("train", "val") and name:
                w.add_scalar(f"{name}/{split}", value, epoch)
        w.add_scalar("lr", row["lr"], epoch)
        for tag, image in trainer.task.epoch_images(trainer.ctx, epoch).items():
            w.add_image(tag, image, epoch)  # e.g. a GAN's fixed-noise samples
        w.add_scalar("samples_per_s", row["samples_per_s"], epoch)
        for name, param in trainer.model.named_parameters():
            w.add_histogram(f"weights/{name}", param.detach().float().cpu(), epoch)
        w.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.steps is not None:
            self.steps.close()
        if self._writer is None:  # stopped before the end of an epoch: nothing was logged
            return
        try:
            if finished(trainer):  # not after an interrupt: the resumed run logs them at its end
                self.log_hparams(trainer)
        except Exception as exc:  # the run itself is saved; TensorBoard's summary is optional
            log.warning(f"note: hyperparameters not written to TensorBoard ({exc})")
        finally:
            self._writer.close()

    def log_hparams(self, trainer: Trainer) -> None:
        """What `SummaryWriter.add_hparams(..., run_name=".")` writes, into a file of its own in
        the same folder (so TensorBoard pairs it with the run's scalars), replacing the one an
        earlier fit of this run wrote: TensorBoard keeps the first hparams it reads for a run."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        hp = flat_hparams(trainer.cfg.to_dict())
        es = trainer.early_stop
        metrics = final_metrics(trainer.history, es.monitor, es.mode)
        step = trainer.history[-1]["epoch"]
        log_dir = self.writer.get_logdir()
        for old in Path(log_dir).glob(f"events.out.tfevents.*{self.HPARAMS_SUFFIX}"):
            old.unlink()
        with SummaryWriter(log_dir, filename_suffix=self.HPARAMS_SUFFIX) as w:
            for summary in hparams(hp, metrics):
                w.file_writer.add_summary(summary, step)
            for tag, value in metrics.items():
                w.add_scalar(tag, value, step)
        read_last(Path(log_dir), self.HPARAMS_SUFFIX)


def read_last(log_dir: Path, suffix: str) -> None:
    """Rename the event file ending in `suffix` so that TensorBoard, which reads a run's files in
    name order, reads it after the others: read before the scalars of the fit that wrote it, its
    metrics would be purged with the steps that fit's purge_step replays. Files made by one
    process in the same second are ordered by a counter compared as text ('10' before '9'), so
    it takes the name of the last of the others, plus `suffix`."""
    names = sorted(p.name for p in log_dir.glob("events.out.tfevents.*"))
    (written,) = [n for n in names if n.endswith(suffix)]
    others = [n for n in names if n != written]
    if others and written < others[-1]:
        (log_dir / written).rename(log_dir / (others[-1] + suffix))


def finished(trainer: Trainer) -> bool:
    """Training ran to its end (every epoch, or early stopping), rather than being interrupted."""
    if not trainer.history:
        return False
    return trainer.history[-1]["epoch"] >= trainer.epochs or trainer.early_stop.should_stop


def flat_hparams(tree: dict[str, Any], prefix: str = "") -> dict[str, str | int | float]:
    """The resolved config as dotted keys (`optim.lr`); lists as compact JSON, booleans as
    true/false, unset (None) values left out: TensorBoard's hparams take numbers and strings."""
    flat: dict[str, str | int | float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool):
            flat[name] = str(value).lower()
        elif isinstance(value, (int, float, str)):
            flat[name] = value
        elif value is not None:
            flat[name] = json.dumps(value, separators=(",", ":"))
    return flat


def final_metrics(
    history: list[dict[str, Any]], monitor: str = "val_loss", mode: str = "min"
) -> dict[str, float]:
    """The numbers to compare runs by: the best value of the monitored metric (best_val_acc for
    a classifier) and its epoch, and the last epoch's values."""
    last = history[-1]
    metrics: dict[str, float] = {}
    if monitor in last:
        pick = min if mode == "min" else max
        best = pick(history, key=lambda row: row[monitor])
        metrics[f"hparam/best_{monitor}"] = float(best[monitor])
        metrics["hparam/best_epoch"] = float(best["epoch"])
    for key in last:
        if key.startswith(("train_", "val_")):
            metrics[f"hparam/final_{key}"] = float(last[key])
    return metrics
