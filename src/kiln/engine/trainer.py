"""The training loop. Read it top to bottom: `fit` runs epochs, `run_epoch` runs batches.

What a batch does is the task's (`task.train_step(ctx, x, y)`, kiln/tasks/base.py): the trainer
hands it a small StepContext (the network, the device, autocast and `optimize`) and builds,
schedules and checkpoints the optimizers the task asks for (`task.optimizers`).

Everything a resumed run needs (weights, optimizers, schedules, RNG, early stopping, history and,
when interrupted mid-epoch, the position in the epoch) goes into `checkpoints/last.pt`, so that a
resumed run ends with exactly the weights an uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kiln import checkpoint
from kiln.config import RunConfig
from kiln.data import DataBundle, Normalize, describe_path, make_loader
from kiln.data.transforms import resolve_augment
from kiln.data.workers import default_workers
from kiln.engine import distributed
from kiln.engine.callbacks import Callback
from kiln.engine.distill import cache_outputs, load_teacher
from kiln.engine.lookahead import Lookahead
from kiln.engine.optim import (
    Plateau,
    build_optimizer,
    build_scheduler,
    end_of_epoch,
    restore_scheduler,
)
from kiln.engine.stopping import EarlyStopping, StopRequest, TrainingInterrupted
from kiln.errors import ConfigError
from kiln.models.resize import CONVS
from kiln.models.transfer import set_backbone_trainable
from kiln.rundir import RunDir
from kiln.tasks import StepContext, get_task

if TYPE_CHECKING:
    from kiln.engine.budget import TimeBudget

__all__ = ["EarlyStopping", "Trainer", "TrainingInterrupted"]

log = logging.getLogger("kiln.engine")


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        data: DataBundle,
        run: RunDir,
        device: torch.device,
        callbacks: list[Callback] = (),
    ):
        self.cfg, self.data, self.run, self.device = cfg, data, run, device
        self.epochs = cfg.train.epochs
        self.callbacks = list(callbacks)
        self.channels_last = cfg.train.channels_last is True
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt)
        self.main = distributed.is_main()  # rank 0 writes the files (always, with one process)

        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.normalize = Normalize(data.info.mean, data.info.std, device, self.channels_last)
        self.workers = default_workers(cfg.data.workers)
        self.task = get_task(cfg.task).build(cfg, data, device)
        self.teacher = load_teacher(cfg, data.info, device)  # distill.teacher, or None
        sample_weights = self.task.sample_weights(cfg, data)
        self.metric = self.task.metric  # rows log train_<metric> and val_<metric>
        steps = resolve_augment(cfg.data.augment)
        self.train_loader = make_loader(
            data.train,
            distributed.per_rank_batch(cfg.data.batch_size),  # the global batch, split
            self.normalize,
            device,
            shuffle=True,
            generator=self.generator,
            augment=steps,
            weights=sample_weights,
            workers=self.workers,
            placement=data.placement,
            shard=distributed.shard(),
            drop_last=cfg.data.drop_last,
        )
        self.data_path = describe_path(self.train_loader, data.placement, steps)
        self.val_loader = self.loader(data.val)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.drop_last=true with data.batch_size={cfg.data.batch_size} leaves no batch "
                f"of {len(data.train)} training images: lower the batch size or drop_last=false"
            )
        self.validates = len(data.val) > 0  # data.val_fraction=0: best.pt is the last epoch

        self.freeze = cfg.model.freeze == "backbone"
        es = cfg.train.early_stop
        logged = ("train_loss", f"train_{self.metric}", "val_loss", f"val_{self.metric}")
        if es.monitor not in logged:
            raise ConfigError(
                f"train.early_stop.monitor: task '{cfg.task}' logs {', '.join(logged)}, "
                f"not '{es.monitor}'"
            )
        check_without_validation(cfg, self.validates)
        mode = self.task.direction(es.monitor)
        self.early_stop = EarlyStopping(es.monitor, mode, es.patience)
        self.optimizers, self.schedulers, self.trains, self.base_lrs = {}, {}, {}, {}
        for name, wanted in self.task.optimizers(self.model, cfg).items():
            opt = build_optimizer(cfg.optim, wanted.module, self.freeze, **wanted.options)
            self.optimizers[name], self.trains[name] = opt, wanted.module
            self.base_lrs[name] = [group["lr"] for group in opt.param_groups]
            self.schedulers[name] = build_scheduler(
                cfg.sched, opt, self.steps_per_epoch, self.epochs, mode,
                cycle_momentum=cfg.optim.betas is None,  # optim.betas as set, not cycled
            )  # fmt: skip
        self.optimizer = next(iter(self.optimizers.values()))  # its lr is the one logged
        total_steps = self.steps_per_epoch * self.epochs
        self.lookahead = Lookahead(self.model, total_steps, enabled=cfg.train.lookahead)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
        self.net = self.wrap()
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0  # epochs already completed (non-zero when resuming)
        self.start_step = 0  # batches already done in the next epoch (mid-epoch resume)
        self.budget: TimeBudget | None = None  # train.time: set by kiln.train (engine/budget.py)
        self.val_seconds = 0.0  # the last validation's wall time
        self.last_epoch_steps: int | None = None  # a time budget may cut the last epoch short
        self._reset_totals()
        self.teacher_note = ""  # distill.teacher: outputs computed once, or on every batch
        if self.teacher is not None:

            def whole():  # built only when the outputs are cached (no augmentation)
                return make_loader(data.train, cfg.data.eval_batch_size, self.normalize, device,
                                   workers=self.workers, placement=data.placement)  # fmt: skip

            names = [name for step in steps for name in step]
            self.teacher_note = cache_outputs(self.teacher, whole, names, self.ctx.autocast)

    @property
    def ctx(self) -> StepContext:
        """What the task's steps see of the trainer."""
        return StepContext(
            net=self.net, model=self.model, device=self.device,
            precision=self.cfg.train.precision, tta=self.cfg.model.tta, optimize=self.optimize,
            normalize=self.normalize, data=self.data, run_path=self.run.path,
            teacher=self.teacher,
        )  # fmt: skip

    def loader(self, split):
        """An evaluation loader over any split, with the training normalization (each process
        evaluates its share; `evaluate_all` sums them)."""
        return make_loader(
            split,
            self.cfg.data.eval_batch_size,
            self.normalize,
            self.device,
            workers=self.workers,
            placement=self.data.placement,
            shard=distributed.shard(),
        )

    def wrap(self) -> nn.Module:
        """What steps and evaluates, sharing the model's weights: DistributedDataParallel when
        several processes train, compiled when train.compile=true."""
        self.trainable = [p.requires_grad for p in self.model.parameters()]
        net = distributed.wrap(self.model, self.device)
        return torch.compile(net) if self.cfg.train.compile is True else net

    # The loop ----------------------------------------------------------------------------------
    def fit(
        self, resume: dict[str, Any] | None = None, reschedule: bool = False
    ) -> list[dict[str, Any]]:
        """Train; `resume` is a last.pt state, `reschedule` when train.epochs has changed since."""
        if resume is not None:
            self.load_state(resume, reschedule)
        # train.keep_zeros (a pruned model): its zeros, also when resuming, stay zeros
        self.zeros = zero_masks(self.model) if self.cfg.train.keep_zeros else []
        if self.budget is not None:
            self.budget.start(self)
        with StopRequest() as stop:
            self.stop = stop
            self._call("on_fit_start")
            try:
                epoch = self.start_epoch
                while epoch < self.epochs:  # a time budget may move the end (self.reschedule)
                    epoch += 1
                    row = self.run_epoch(epoch)
                    if row is None:  # the time budget ran out during the epoch
                        break
                    self.end_epoch(epoch, row)
                    if self.budget is not None:
                        self.budget.after_epoch(self, epoch)
                    if self.early_stop.should_stop:  # the same on every process: same values
                        self.say_early_stop()
                        break
                    if distributed.any_rank(stop.requested):
                        self.interrupt(epoch, self.steps_per_epoch)
            finally:
                self._call("on_fit_end")
        return self.history

    def say_early_stop(self) -> None:
        es = self.early_stop
        if self.main:
            log.info(
                f"Early stopping: {es.monitor} has not improved for {es.bad_epochs} epochs "
                f"(best {es.best:.4f} at epoch {es.best_epoch})"
            )

    def run_epoch(self, epoch: int) -> dict[str, Any] | None:
        self._call("on_epoch_start", epoch)
        if self.freeze:
            self.thaw(epoch)
        epoch_rng = self.generator.get_state()  # replaying from here redraws this epoch's order
        order = self.train_loader.order()
        start, self.start_step = self.start_step, 0
        started = time.perf_counter() - self.seconds
        self.model.train()
        ctx = self.ctx
        batches = self.train_loader.indexed_batches(order, start)
        for step, (index, x, y) in enumerate(batches, start=start):
            ctx.index = index  # where a teacher's outputs computed ahead are looked up
            loss, out = self.task.train_step(ctx, x, y)
            self.lookahead.after_step((epoch - 1) * self.steps_per_epoch + step + 1)
            self.batch_loss = loss  # the step's mean loss (TensorBoard, run.log_every)
            self.loss_sum += loss * len(y)
            self.score_sum = self.score_sum + self.task.score(out, y)
            self.seen += len(y)
            self.seconds = time.perf_counter() - started
            self._call("on_batch_end", epoch, step)
            if distributed.any_rank(self.stop.requested):  # every process stops at this step
                self.interrupt(epoch, step + 1, epoch_rng)
            if self.budget is not None and self.budget.out_of_time(self, epoch, step):
                if self.history:
                    self._reset_totals()
                    return None  # this epoch is dropped: the run ends with best.pt evaluated
                break  # the first epoch ends here: validated, it is the run's one epoch
            if epoch == self.epochs and step + 1 == self.last_epoch_steps:
                break  # a time budget's plan ends this epoch early
        self.lookahead.end_epoch()  # validated and saved: the averaged weights (when on)
        train_seconds = time.perf_counter() - started
        loss_sum, score_sum, seen = distributed.sum_across(self.loss_sum, self.score_sum, self.seen)
        val = {}
        val_started = time.perf_counter()
        if self.validates:
            val_loss, val_scores = self.evaluate_all(self.val_loader)
            val = {"val_loss": val_loss, **{f"val_{k}": v for k, v in val_scores.items()}}
        self.val_seconds = time.perf_counter() - val_started
        row = {
            "epoch": epoch,
            "train_loss": float(loss_sum) / seen,
            **{f"train_{k}": v for k, v in self.task.summarize(score_sum, seen).items()},
            **val,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - started, 3),
            "samples_per_s": round(seen / train_seconds, 1),
        }
        self._reset_totals()
        return row

    def thaw(self, epoch: int) -> None:
        """model.freeze=backbone: only the head trains until model.unfreeze_epoch."""
        at = self.cfg.model.unfreeze_epoch
        set_backbone_trainable(self.model, at is not None and epoch >= at)
        trainable = [p.requires_grad for p in self.model.parameters()]
        if distributed.world_size() > 1 and trainable != self.trainable:
            self.net = self.wrap()  # DDP averages the gradients of the parameters that train
        if epoch == at and self.main:
            log.info(f"Epoch {epoch}: the backbone is unfrozen and trains from now on")

    def optimize(self, loss: torch.Tensor, name: str = "model") -> None:
        """Backpropagate a batch's loss (plus optim.l1) and step optimizer `name`, the loss
        scaler and its schedule: what a task's step calls, once per optimizer it uses."""
        optimizer, module = self.optimizers[name], self.trains[name]
        total = loss + self.l1_penalty(module) if self.cfg.optim.l1 else loss
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(module.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        self.schedulers[name].step()
        with torch.no_grad():
            for weight, mask in self.zeros:
                weight.mul_(mask)

    def reschedule(self, epochs: int, last_steps: int | None = None) -> None:
        """A new end for training (a time budget's plan): every schedule rebuilt for `epochs`
        (the last one `last_steps` batches long) and replayed to the step it had reached, as a
        resume with more epochs replays it."""
        step_scale = epochs / self.cfg.train.epochs  # sched=step: its decays keep their place
        total = (epochs - 1) * self.steps_per_epoch + (last_steps or self.steps_per_epoch)
        for name, optimizer in self.optimizers.items():
            if isinstance(self.schedulers[name], Plateau):
                continue  # stepped per epoch on the monitored value: no horizon to move
            done = self.schedulers[name].last_epoch
            for group, lr in zip(optimizer.param_groups, self.base_lrs[name], strict=True):
                group["lr"] = lr
            scheduler = build_scheduler(
                self.cfg.sched, optimizer, self.steps_per_epoch, epochs,
                cycle_momentum=self.cfg.optim.betas is None, step_scale=step_scale,
                total_steps=total,
            )  # fmt: skip
            replay(scheduler, done)
            self.schedulers[name] = scheduler
        self.epochs, self.last_epoch_steps = epochs, last_steps
        self.lookahead.total_steps = total  # its averaging follows the new end

    def l1_penalty(self, module: nn.Module) -> torch.Tensor:
        return self.cfg.optim.l1 * sum(
            p.abs().sum() for p in module.parameters() if p.requires_grad
        )

    def evaluate(self, loader) -> tuple[float, float]:
        """Mean loss and the task's metric over a split."""
        loss, scores = self.evaluate_all(loader)
        return loss, scores[self.metric]

    @torch.inference_mode()
    def evaluate_all(self, loader) -> tuple[float, dict[str, float]]:
        """Mean loss and every value the task logs (its metric first) over a split."""
        self.model.eval()
        distributed.broadcast_buffers(self.model)  # every process evaluates what rank 0 saves
        ctx = self.ctx
        loss_sum = torch.zeros((), device=self.device)
        score_sum = torch.zeros((), device=self.device)
        for x, y in loader:
            loss, out = self.task.eval_step(ctx, x, y)
            loss_sum += loss
            score_sum = score_sum + self.task.score(out, y)
        loss_sum, score_sum = distributed.sum_across(loss_sum, score_sum)  # the whole split
        n = max(loader.num_samples, 1)
        return float(loss_sum) / n, self.task.summarize(score_sum, n)

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        distributed.check_in_step(self.model, self.cfg.task)  # several processes, one model
        self.history.append(row)
        monitored = row.get(self.early_stop.monitor)  # None: no validation split
        for scheduler in self.schedulers.values():
            end_of_epoch(scheduler, monitored)  # sched.name=plateau steps here
        improved = self.early_stop.update(monitored, epoch) if monitored is not None else True
        if improved and self.main:
            best = {
                "model": self.model.state_dict(),
                "epoch": epoch,
                self.early_stop.monitor: monitored,
            }
            checkpoint.save(best, self.run.checkpoint("best"))
        last = self.state(epoch, step=0, epoch_rng=None)  # on every process: it gathers RNGs
        if self.main:
            checkpoint.save(last, self.run.checkpoint("last"))
            self.run.write_metrics(self.history)
        self._call("on_epoch_end", epoch, row)

    # Interrupt and resume ----------------------------------------------------------------------
    def interrupt(self, epoch: int, step: int, epoch_rng: torch.Tensor | None = None) -> None:
        """Save the exact position (mid-epoch when `epoch_rng` is given) and stop."""
        if epoch_rng is not None:
            totals = distributed.sum_across(self.loss_sum, self.score_sum, self.seen)
            self.loss_sum, self.score_sum, self.seen = totals  # rank 0 keeps the epoch's sums
            state = self.state(epoch - 1, step, epoch_rng)
            if self.main:
                checkpoint.save(state, self.run.checkpoint("last"))
            where = f"during epoch {epoch} (batch {step}/{self.steps_per_epoch})"
        else:
            where = f"after epoch {epoch}"
        raise TrainingInterrupted(
            f"Interrupted {where}; state saved to {self.run.checkpoint('last')}.\n"
            f"Resume with: kiln train --resume {self.run.path}"
        )

    def state(self, epochs_done: int, step: int, epoch_rng: torch.Tensor | None) -> dict[str, Any]:
        rng = checkpoint.rng_state(self.generator)
        ranks = distributed.rank_rng_states()  # several processes: each one's own
        if ranks is not None:
            rng["ranks"] = ranks
        if epoch_rng is not None:
            rng["data"] = epoch_rng
        partial = None
        if step:
            partial = {
                "loss_sum": self.loss_sum,
                "score_sum": self.score_sum,
                "seen": self.seen,
                "seconds": self.seconds,
            }
        return {
            "model": self.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "epoch": epochs_done,
            "planned_epochs": self.epochs,  # what the schedule is built for (see resume_config)
            "step": step,
            "partial": partial,
            "rng": rng,
            "early_stop": self.early_stop.state_dict(),
            "history": self.history,
            "task": self.task.state_dict(),
            **({"budget": self.budget.state_dict()} if self.budget is not None else {}),
            "lookahead": self.lookahead.state_dict(),
        }

    def load_state(self, state: dict[str, Any], reschedule: bool = False) -> None:
        self.model.load_state_dict(state["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        done = state["epoch"] * self.steps_per_epoch + state["step"]
        for name, scheduler in self.schedulers.items():  # a moved horizon replays to here
            restore_scheduler(scheduler, state["schedulers"][name], done, reschedule)
        self.scaler.load_state_dict(state["scaler"])
        self.early_stop.load_state_dict(state["early_stop"])
        self.history = list(state["history"])
        self.task.load_state_dict(state.get("task", {}))
        if self.budget is not None and state.get("budget"):
            self.budget.load_state_dict(state["budget"])
        self.lookahead.load_state_dict(state.get("lookahead"))
        self.start_epoch, self.start_step = state["epoch"], state["step"]
        if state["partial"] and self.main:  # the sums over every process (ranks > 0 start at 0)
            p = state["partial"]
            self.loss_sum = p["loss_sum"].to(self.device)
            self.score_sum = p["score_sum"].to(self.device, torch.float32)
            self.seen, self.seconds = p["seen"], p["seconds"]
        checkpoint.restore_rng(state["rng"], self.generator)
        distributed.restore_rank_rng(state["rng"].get("ranks"), self.cfg.train.seed)

    # Helpers -----------------------------------------------------------------------------------
    def running_stats(self) -> tuple[float, float, float]:
        """Loss, the task's metric and samples/s so far this epoch (for the progress bar)."""
        n = max(self.seen, 1)
        return (
            float(self.loss_sum) / n,
            self.task.summarize(self.score_sum, n)[self.metric],
            self.seen * distributed.world_size() / max(self.seconds, 1e-9),  # every process
        )

    def _reset_totals(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.score_sum = torch.zeros((), device=self.device)
        self.seen = 0
        self.seconds = 0.0

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)


def zero_masks(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, 1 where it is not zero) for every convolution and linear layer with zeros."""
    layers = [m for m in model.modules() if isinstance(m, (*CONVS, nn.Linear))]
    masks = [(m.weight, (m.weight != 0).to(m.weight.dtype)) for m in layers]
    return [(w, mask) for w, mask in masks if not bool(mask.all())]


def replay(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Step a fresh schedule `steps` times (to where training is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
        for _ in range(steps):
            scheduler.step()


def check_without_validation(cfg: RunConfig, validates: bool) -> None:
    """Without a validation split (data.val_fraction=0) nothing can stop early or lower the lr
    on a validation value: say which key to change."""
    monitor = cfg.train.early_stop.monitor
    if validates or not monitor.startswith("val_"):
        return
    for key, used in (("train.early_stop.patience", cfg.train.early_stop.patience is not None),
                      ("sched.name=plateau", cfg.sched.name == "plateau")):  # fmt: skip
        if used:
            raise ConfigError(
                f"{key} watches {monitor}, and this run has no validation split "
                f"(data.val_fraction={cfg.data.val_fraction}): set "
                f"train.early_stop.monitor=train_loss, or keep a validation split"
            )
