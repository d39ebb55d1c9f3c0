"""The worker loop: run trials until the study holds N counted trials, each one a normal
`kiln.train` run under runs/<study>/trial-NNNN whose epochs are reported to Optuna's pruner."""

from __future__ import annotations

import json
import logging
import math
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any

from kiln.config import RunConfig, build_config
from kiln.engine.callbacks import Callback
from kiln.errors import ConfigError, KilnError
from kiln.secrets import mask
from kiln.tune import storage as kstorage
from kiln.tune.study import Settings, counts, fail_dead_trials, open_study

log = logging.getLogger("kiln.tune")

if TYPE_CHECKING:
    import optuna


class TrialFailed(Exception):
    """A trial that failed for a reason of its own (recorded on it); the study goes on."""


class MetricMissing(ConfigError):
    """tune.metric is not among the values the runs log: no trial can succeed."""


class TuneInterrupted(KilnError):
    exit_code = 130


class ReportEpochs(Callback):
    """Reports each epoch's metric to the trial, so that the pruner can stop a bad trial early."""

    def __init__(self, trial: optuna.Trial, metric: str, direction: str) -> None:
        self.trial, self.metric, self.direction = trial, metric, direction
        self.values: list[float] = []

    def on_fit_start(self, trainer) -> None:
        self.trial.set_user_attr("run", str(trainer.run.path))

    def on_epoch_end(self, trainer, epoch: int, row: dict[str, Any]) -> None:
        import optuna

        if self.metric not in row:
            logged = ", ".join(k for k in row if k.startswith(("train_", "val_")))
            raise MetricMissing(f"tune.metric: the runs log {logged}, not '{self.metric}'")
        value = float(row[self.metric])
        self.values.append(value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"after epoch {epoch}: {self.metric} {value:.4f}")

    def best(self) -> tuple[float, int]:
        """The best value over the epochs (what best.pt holds) and its epoch."""
        finite = [(v, i + 1) for i, v in enumerate(self.values) if math.isfinite(v)]
        if not finite:
            return math.nan, 0
        pick = min if self.direction == "minimize" else max
        return pick(finite, key=lambda pair: pair[0])


class Objective:
    """One trial: sample the space, train a normal run in the study's folder, return its best
    value of the metric. Releases the study's lock once optuna has opened the trial."""

    def __init__(
        self, s: Settings, base: dict[str, Any], lock: kstorage.StudyLock, verbose: bool, tag: str
    ) -> None:
        self.s, self.base, self.lock, self.verbose, self.tag = s, base, lock, verbose, tag
        self.number = -1

    def __call__(self, trial) -> float:
        import optuna
        import torch

        from kiln.engine.run import train

        trial.set_user_attr("worker", kstorage.worker_id())  # before others may look at it
        self.lock.release()
        self.number = trial.number
        values = {p.key: p.suggest(trial) for p in self.s.params}
        name = f"trial-{trial.number:04d}"
        shown = "  ".join(f"{k}={_short(v)}" for k, v in values.items())
        self.say(f"Trial {trial.number} started: {shown}")
        overrides = {
            **values,
            "run.dir": str(self.s.folder),
            "run.name": name,
            "run.report": False,  # per-trial plots cost more than small trials; best.yaml has them
        }
        report = ReportEpochs(trial, self.s.metric, self.s.direction)
        started = time.perf_counter()
        try:
            cfg = build_config(self.base, overrides)
            train(cfg, callbacks=[report], progress=self.verbose)
        except (MetricMissing, optuna.TrialPruned):
            raise
        except (KilnError, ValueError, torch.OutOfMemoryError) as exc:
            # A combination of values that cannot work (torch says ValueError for a dropout of
            # 1.5, say): the trial failed, the study goes on.
            if getattr(exc, "exit_code", 1) == 130:  # Ctrl-C while training: not its fault
                raise
            what = "" if isinstance(exc, KilnError) else f"{type(exc).__name__}: "
            return self.fail(trial, f"{what}{exc}")
        except Exception as exc:  # a bug: record it, then stop with the traceback
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        value, epoch = report.best()
        if not math.isfinite(value):
            return self.fail(trial, f"{self.s.metric} was {value} at every epoch (diverged?)")
        trial.set_user_attr("best_epoch", epoch)
        trial.set_user_attr("epochs", len(report.values))
        return value

    def fail(self, trial, message: str) -> float:
        trial.set_user_attr("error", message[:2000])
        first = message.strip().splitlines()[0] if message.strip() else message
        self.say(f"Trial {trial.number} failed: {first}")
        raise TrialFailed(message)

    def say(self, text: str) -> None:
        log.info(f"{self.tag}{text}")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def run_worker(
    s: Settings,
    cfg: RunConfig,
    *,
    worker_index: int = 0,
    verbose: bool = False,
    resume_hint: str = "",
    tag: str = "",
) -> int:
    """Run trials until the study holds N counted trials (or the timeout passes); returns how
    many this worker ran."""
    from optuna.trial import TrialState

    study, lock = open_study(s, cfg, worker_index)
    if not lock.exact and worker_index == 0:
        log.warning(
            f"note: {kstorage.redact(s.storage)} has no lock Kiln can take: with several "
            "workers the study may end with a trial or two more than --trials"
        )
    objective = Objective(s, cfg.to_dict(), lock, verbose, tag)
    deadline = None if s.timeout is None else time.monotonic() + s.timeout
    ran = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            lock.acquire()
            try:
                for number in fail_dead_trials(study):
                    log.info(f"{tag}Trial {number}: its worker is gone; marked failed, not counted")
                trials = study.get_trials(deepcopy=False)
                waiting = any(t.state == TrialState.WAITING for t in trials)
                if sum(map(counts, trials)) >= s.trials and not waiting:
                    break
                study.optimize(objective, n_trials=1, catch=(TrialFailed,))
                ran += 1
            finally:
                lock.release()
            mine = [t for t in study.get_trials(deepcopy=False) if t.number == objective.number]
            _say_end(mine[0], study, s, tag)
    except KeyboardInterrupt:
        raise TuneInterrupted(interrupted_message(study, s, resume_hint)) from None
    except KilnError as exc:
        if exc.exit_code == 130:  # Ctrl-C during training: the trainer stopped cleanly
            raise TuneInterrupted(interrupted_message(study, s, resume_hint)) from None
        raise
    return ran


def _say_end(trial, study, s: Settings, tag: str) -> None:
    from optuna.trial import TrialState

    seconds = trial.user_attrs.get("seconds", 0.0)
    if trial.state == TrialState.COMPLETE:
        best = study.best_trial
        log.info(
            f"{tag}Trial {trial.number} finished: {s.metric} {trial.value:.4f} in {seconds:.1f}s "
            f"(best {best.value:.4f}, trial {best.number})"
        )
    elif trial.state == TrialState.PRUNED:
        step = trial.last_step
        value = trial.intermediate_values.get(step, math.nan) if step is not None else math.nan
        log.info(f"{tag}Trial {trial.number} pruned after epoch {step}: {s.metric} {value:.4f}")


def interrupted_message(study, s: Settings, resume_hint: str) -> str:
    done = sum(map(counts, study.get_trials(deepcopy=False)))
    hint = resume_hint or f"the same command (study '{s.name}')"
    return (
        f"Interrupted: study '{s.name}' holds {done} of {s.trials} trials in "
        f"{kstorage.redact(s.storage)}; the interrupted trial does not count.\n"
        f"Resume with: {hint}"
    )


def command_line() -> str:
    """The `kiln ...` command this process runs, to print as the way to resume."""
    return mask("kiln " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
