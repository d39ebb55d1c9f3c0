"""Training to a time budget (`train.time=10m`): the epochs and the schedule fitted to end by then.

The clock starts when `kiln.train` starts (reading the data counts) and stops once the report is
written; a resumed run adds to what it spent before. What the budget does:

    early in the first epoch   a first plan from the speed of its first batches; when not even
                               one epoch fits, the run is the first epoch's batches that do
    after every epoch          what still fits in the time left, less what the end costs, at the
                               last epoch's pace: whole epochs, then part of one more when a
                               quarter of it fits; the schedules are rebuilt for that and replayed
                               to this step (Trainer.reschedule), so that one-cycle and cosine
                               finish their decay at the last batch and step decays keep their
                               place in the run; when nothing fits, training ends here
    during an epoch            if even stopping now would end past the budget (the machine slowed
                               down), training stops: the epoch is dropped, best.pt is evaluated

What the end costs: best.pt on the test split once (the summary line, eval-test.json and, for
classification, the report's figures) and, with run.report, the figures and page: estimated as one
more pass over the test split (what other tasks' reports predict) at this run's own validation
speed plus REPORT_SECONDS. The plans, the time spent and why training ended
go into info.json ("budget") and the log.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from kiln.engine import distributed
from kiln.errors import ConfigError, RunError

if TYPE_CHECKING:
    from kiln.engine.trainer import Trainer
    from kiln.rundir import RunDir

REPORT_SECONDS = 1.0  # the report's figures and page beyond predicting (measured: 1.1 s on digits)
END_SECONDS = 0.5  # loading best.pt, writing eval files
EARLY_BATCHES = 5  # batches of the first epoch timed before the first plan (the first is skipped)
MARGIN = 0.25  # a plan grows only by more than this share of an epoch
MIN_PART = 0.25  # a last epoch cut short is planned when at least this share of it fits
EVAL_COST = 0.4  # an evaluated sample costs about this share of a trained one (first plan only)


def now() -> float:
    """The budget's clock: wall time, in seconds (a test may replace it)."""
    return time.perf_counter()


def batches_that_fit(
    seconds: float, epoch_seconds: float, step_seconds: float, val_seconds: float, per_epoch: int
) -> int:
    """Batches that fit in `seconds`: whole epochs (each validated), then part of one more (also
    validated) when at least MIN_PART of it fits."""
    if seconds <= 0 or epoch_seconds <= 0:
        return 0
    whole = math.floor(seconds / epoch_seconds)
    rest = seconds - whole * epoch_seconds - val_seconds
    part = min(math.floor(rest / step_seconds), per_epoch - 1) if rest > 0 else 0
    return whole * per_epoch + (part if part >= MIN_PART * per_epoch else 0)


def show(seconds: float) -> str:
    """90.0 -> '1m 30s', 5400 -> '1h 30m', 12.34 -> '12.3s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


class TimeBudget:
    """The plan for one run (see the module docstring). The trainer calls `start`, `out_of_time`
    after each batch and `after_epoch`; `kiln.train` calls `finish` after the report."""

    def __init__(self, seconds: float, started: float, report: bool = True, say=print):
        self.seconds, self.started, self.report, self.say = seconds, started, report, say
        self.spent_before = 0.0  # what earlier sessions of this run spent (resume)
        self.planned: int | None = None
        self.last_steps: int | None = None  # the first epoch cut to this many batches
        self.epoch_seconds: float | None = None  # the last epoch's wall time
        self.val_seconds_per_sample: float | None = None
        self.plans: list[dict[str, Any]] = []
        self.reason = ""
        self.mark = started  # when the current epoch began
        self.timing_first_batches = True  # until the first plan, early in the first epoch
        self.batches = 0
        self.first_batch_end = 0.0
        self.training_ended: float | None = None

    def spent(self) -> float:
        return self.spent_before + now() - self.started

    # The trainer's hooks -------------------------------------------------------------------------
    def start(self, trainer: Trainer) -> None:
        """Fit start (after a resume's state is loaded): a resumed run plans at once from the
        epoch time it measured before."""
        self.mark = now()
        if self.planned is not None:
            trainer.epochs = self.planned  # the horizon its schedules were saved with
            trainer.last_epoch_steps = self.last_steps
        if self.epoch_seconds is not None:
            self.timing_first_batches = False
            part = trainer.start_step / trainer.steps_per_epoch  # resumed mid-epoch
            pending = self.epoch_seconds * (1 - part) if part else 0.0
            counted = trainer.start_epoch + (1 if part else 0)
            val = (self.val_seconds_per_sample or 0.0) * trainer.val_loader.num_samples
            self.plan(trainer, counted, self.epoch_seconds, val, "resumed", pending)

    def out_of_time(self, trainer: Trainer, epoch: int, step: int) -> bool:
        """After each batch: a first plan early in the first epoch; True when even stopping now
        would end past the budget (the trainer drops the epoch, or ends the first one here)."""
        if self.timing_first_batches:
            self.batches += 1
            at = now()
            if self.batches == 1:
                self.first_batch_end = at  # the first batch pays for warming up: not timed
            elif self.batches > EARLY_BATCHES or step + 1 == trainer.steps_per_epoch:
                self.first_plan(trainer, epoch, step, at)
        over = self.spent() + self.end_seconds(trainer) >= self.seconds
        over = distributed.any_rank(over and distributed.is_main())  # rank 0's clock decides
        if over and trainer.history:
            self.reason = (
                f"the budget ran out during epoch {epoch} (batch {step + 1} of "
                f"{trainer.steps_per_epoch}): that epoch was dropped"
            )
            trainer.epochs = epoch - 1
        elif over:  # the run needs one epoch (best.pt) to end with: the first one ends here
            self.reason = f"the budget ran out during epoch {epoch}: it ended at batch {step + 1}"
            trainer.epochs = epoch
        return over

    def after_epoch(self, trainer: Trainer, epoch: int) -> None:
        """Each epoch's end (its checkpoints written): plan again from its measured time."""
        at = now()
        seconds, self.mark = at - self.mark, at
        n_val = max(trainer.val_loader.num_samples, 1)
        self.val_seconds_per_sample = trainer.val_seconds / n_val
        self.timing_first_batches = False
        if epoch == trainer.epochs and trainer.last_epoch_steps:  # the plan's cut epoch has run
            self.reason = self.reason or (
                f"the plan ran: {epoch} epochs, the last cut to {trainer.last_epoch_steps} "
                f"of {trainer.steps_per_epoch} batches"
            )
            return
        self.plan(trainer, epoch, seconds, trainer.val_seconds, f"after epoch {epoch}")

    # Planning ----------------------------------------------------------------------------------
    def end_seconds(self, trainer: Trainer) -> float:
        """What the end will cost: the test split once, and again with the figures for the
        report (classification's draws from the first pass: an overestimate there)."""
        per_sample = self.val_seconds_per_sample or 0.0
        passes = len(trainer.data.test) * (2 if self.report else 1)
        return END_SECONDS + per_sample * passes + (REPORT_SECONDS if self.report else 0.0)

    def first_plan(self, trainer: Trainer, epoch: int, step: int, at: float) -> None:
        """From the batches timed so far: the epoch's training and an estimate of validation."""
        self.timing_first_batches = False
        per_batch = (at - self.first_batch_end) / (self.batches - 1)
        self.val_seconds_per_sample = EVAL_COST * per_batch / max(trainer.cfg.data.batch_size, 1)
        n_val = max(trainer.val_loader.num_samples, 1)
        epoch_seconds = per_batch * trainer.steps_per_epoch + self.val_seconds_per_sample * n_val
        pending = epoch_seconds * (1 - (step + 1) / trainer.steps_per_epoch)
        when = f"epoch {epoch}, batch {step + 1}"
        left = self.seconds - self.spent() - self.end_seconds(trainer)
        val = self.val_seconds_per_sample * n_val
        if epoch == 1 and left < pending:  # not even one epoch fits: the first one is cut short
            steps = step + 1 + max(0, math.floor((left - val) / per_batch))
            self.cut_first_epoch(trainer, min(steps, trainer.steps_per_epoch - 1), when)
            return
        self.plan(trainer, epoch, epoch_seconds, val, when, pending)

    def cut_first_epoch(self, trainer: Trainer, steps: int, when: str) -> None:
        """The budget is shorter than one epoch: the run is its first `steps` batches, with the
        schedule over them, then validation."""
        (steps,) = distributed.sum_across(steps if distributed.is_main() else 0)
        steps = max(int(steps), 1)
        self.plans.append({"when": when, "epochs": 1, "steps": steps})
        self.say(
            f"Time budget {show(self.seconds)} ({when}): less than one epoch fits: the run is "
            f"the first {steps} of its {trainer.steps_per_epoch} batches; the schedule now ends "
            "there"
        )
        trainer.reschedule(1, last_steps=steps)
        self.planned, self.last_steps = 1, steps
        self.reason = f"less than one epoch fits ({when}): epoch 1 was cut to {steps} batches"

    def plan(self, trainer: Trainer, counted: int, epoch_seconds: float, val_seconds: float,
             when: str, pending: float = 0.0) -> None:  # fmt: skip
        """The batches to train: the `counted` epochs (done, or done once the `pending` seconds
        of the current one have run), then the whole epochs that fit and part of one more when
        a quarter of it fits; the same on every process. The schedules are set to end there."""
        per_epoch = trainer.steps_per_epoch
        self.epoch_seconds = epoch_seconds
        step_seconds = max(epoch_seconds - val_seconds, 1e-9) / per_epoch
        left = self.seconds - self.spent() - pending
        end = self.end_seconds(trainer)
        counted = max(counted, 1)
        planned = (trainer.epochs - 1) * per_epoch + (trainer.last_epoch_steps or per_epoch)

        def fit(spare: float) -> int:
            more = batches_that_fit(left - end - spare, epoch_seconds, step_seconds, val_seconds,
                                    per_epoch)  # fmt: skip
            return counted * per_epoch + more

        if fit(MARGIN * epoch_seconds) > planned:  # grows only with a margin: no back and forth
            planned = fit(MARGIN * epoch_seconds)
        elif fit(0.0) < planned or planned < counted * per_epoch:  # the plan no longer fits
            planned = fit(0.0)
        (planned,) = distributed.sum_across(planned if distributed.is_main() else 0)
        epochs, part = divmod(int(planned), per_epoch)
        epochs, last = (epochs + 1, part) if part else (epochs, None)
        self.plans.append({
            "when": when, "epochs": epochs, "last_epoch_batches": last or per_epoch,
            "epoch_seconds": round(epoch_seconds, 3), "end_seconds": round(end, 3),
            "left_seconds": round(left, 3),
        })  # fmt: skip
        if (epochs, last) != (trainer.epochs, trainer.last_epoch_steps):
            cut = f", the last one {last} of its {per_epoch} batches" if last else ""
            self.say(
                f"Time budget {show(self.seconds)} ({when}): an epoch takes {show(epoch_seconds)}, "
                f"the test and report about {show(end)}, {show(max(left, 0))} left: "
                f"{epochs} epoch{'s' if epochs != 1 else ''} in all{cut}; the schedule now ends "
                "there"
            )
            trainer.reschedule(epochs, last)
        self.planned, self.last_steps = epochs, last
        if epochs > counted:
            self.reason = ""
        elif not self.reason:  # keep why it ended, when it did (cut short, out of time)
            self.reason = f"no further epoch fits ({when})"

    # The end and the record --------------------------------------------------------------------
    def end_training(self) -> None:
        self.training_ended = now()

    def finish(self, run: RunDir, trainer: Trainer) -> dict[str, Any]:
        """After the report: the record in info.json and one line on the log."""
        spent = self.spent()
        ended = self.training_ended or now()
        reason = self.reason or (
            "early stopping" if trainer.early_stop.should_stop else "the planned epochs ran"
        )
        record = {
            "seconds": self.seconds,
            "spent_seconds": round(spent, 3),
            "over_seconds": round(spent - self.seconds, 3),
            "epochs": len(trainer.history),
            "planned_epochs": self.planned,
            "end_seconds_estimate": round(self.end_seconds(trainer), 3),
            "end_seconds": round(now() - ended, 3),
            "last_epoch_batches": self.last_steps,
            "reason": reason,
            "plans": self.plans,
        }
        info = run.load_info()
        info["budget"] = record
        run.write_json("info.json", info)
        over = spent - self.seconds
        self.say(
            f"Time budget {show(self.seconds)}: spent {show(spent)} "
            f"({'over' if over > 0 else 'under'} by {abs(over):.1f}s), {record['epochs']} epochs; "
            f"{reason}"
        )
        return record

    # Resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds, "spent": self.spent(), "planned": self.planned,
            "epoch_seconds": self.epoch_seconds, "val_seconds_per_sample":
            self.val_seconds_per_sample, "plans": list(self.plans), "last_steps": self.last_steps,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spent_before = float(state["spent"])
        self.planned = state.get("planned")
        self.epoch_seconds = state.get("epoch_seconds")
        self.val_seconds_per_sample = state.get("val_seconds_per_sample")
        self.plans = list(state.get("plans", []))
        self.last_steps = state.get("last_steps")


def check_resume(seconds: float | None, state: dict[str, Any], time_changed: bool, run) -> None:
    """A budget run that ended (its plan ran, or its time is spent) resumes only with more time."""
    saved = state.get("budget")
    if seconds is None or saved is None:
        return
    if time_changed and seconds <= saved["spent"]:
        raise ConfigError(
            f"train.time={show(seconds)}: {run.path} already spent {show(saved['spent'])}; "
            "give it more time than that"
        )
    if not time_changed and state["epoch"] >= (saved.get("planned") or 0):
        raise RunError(
            f"{run.path} used its time budget of {show(seconds)} ({state['epoch']} epochs); "
            "to train on, give it more: kiln train --resume RUN train.time=..."
        )
