"""A study: settings from `tune:` and the flags, the study in its storage, and the worker loop
that runs trials (each one a normal `kiln.train` run under runs/<study>/trial-NNNN).

What counts towards `--trials N`: every trial that completed, was pruned or failed for a reason
of its own (a bad combination of values, a metric that came out NaN), and every trial running.
A trial whose worker went away (killed, Ctrl-C, a machine lost) is marked failed without an error
and does not count: re-running the same command starts a fresh trial in its place.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.config import RunConfig, build_config
from kiln.engine.callbacks import Callback
from kiln.errors import ConfigError, KilnError, RunError
from kiln.tune import storage as kstorage
from kiln.tune.space import Param, check_space, parse_space

if TYPE_CHECKING:
    import optuna

# Keys a resumed study may change (how long it runs, where its files go); any other difference
# in the config means another experiment, which should be another study.
MAY_CHANGE = {
    "tune": ("trials", "timeout", "storage", "study"),
    "data": ("root", "workers"),
    "train": ("device",),
}


class TrialFailed(Exception):
    """A trial that failed for a reason of its own (recorded on it); the study goes on."""


class MetricMissing(ConfigError):
    """tune.metric is not among the values the runs log: no trial can succeed."""


class TuneInterrupted(KilnError):
    exit_code = 130


@dataclass
class Settings:
    """A study's settings: tune.* from the config with the command line's flags on top."""

    name: str
    folder: Path
    storage: str
    trials: int
    timeout: float | None
    metric: str
    direction: str  # minimize | maximize
    pruner: str
    sampler: str
    seed: int | None
    startup_trials: int
    warmup_epochs: int
    params: list[Param] = field(default_factory=list)
    default_storage: bool = True


def study_name(cfg: RunConfig, config_path: str | Path | None, name: str | None) -> str:
    """--study, else tune.study, else run.name, else the config file's name, else DATA-MODEL."""
    if name is None:
        name = cfg.tune.study or cfg.run.name
    if name is None and config_path is not None:
        name = Path(config_path).stem
    name = name or f"{cfg.data.name}-{cfg.model.name}".replace(":", "-")
    if "/" in name or name in (".", "..") or not name.strip():
        raise ConfigError(f"study name '{name}' must be a plain folder name, without '/'")
    return name


def resolve_metric(cfg: RunConfig, metric: str) -> str:
    """tune.metric=auto -> the run's early-stopping monitor (val_<the task's metric>)."""
    from kiln.models import import_user_modules
    from kiln.tasks import get_task

    import_user_modules(cfg.imports)
    task = get_task(cfg.task)
    if metric == "auto":
        monitor = cfg.train.early_stop.monitor
        metric = f"val_{task.metric}" if monitor == "auto" else monitor
    import re

    if not re.fullmatch(r"(train|val)_[a-z][a-z0-9_]*", metric):
        raise ConfigError(
            f"tune.metric: '{metric}' is not a logged value; use auto, val_loss or "
            f"val_{task.metric} (task '{cfg.task}')"
        )
    return metric


def make_settings(
    cfg: RunConfig,
    config_path: str | Path | None = None,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
) -> Settings:
    """Everything a worker needs, checked: the search space against the config, the metric
    against the task, the storage URL against SQLAlchemy."""
    from kiln.tasks import direction as metric_direction

    t = cfg.tune
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be positive seconds, got {timeout}")
    params = parse_space(t.space)
    base = cfg.to_dict()
    check_space(base, params)
    name = study_name(cfg, config_path, study)
    folder = Path(cfg.run.dir).expanduser() / name
    url = storage or t.storage
    metric = resolve_metric(cfg, t.metric)
    direction = t.direction
    if direction == "auto":
        direction = "minimize" if metric_direction(metric) == "min" else "maximize"
    return Settings(
        name=name,
        folder=folder,
        storage=kstorage.check_url(url or kstorage.default_url(folder)),
        trials=trials if trials is not None else t.trials,
        timeout=timeout if timeout is not None else t.timeout,
        metric=metric,
        direction=direction,
        pruner=t.pruner,
        sampler=t.sampler,
        seed=t.seed,
        startup_trials=t.startup_trials,
        warmup_epochs=t.warmup_epochs,
        params=params,
        default_storage=url is None,
    )


def identity(tree: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that make a study what it is (see MAY_CHANGE)."""
    tree = json.loads(json.dumps(tree))
    tree.pop("run", None)
    for section, keys in MAY_CHANGE.items():
        for key in keys:
            tree.get(section, {}).pop(key, None)
    return tree


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ; a key only one side has (a newer Kiln's new option, at
    its default) is not a difference."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) & set(b), key=str):
            out += differences(a[key], b[key], f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def open_study(
    s: Settings, cfg: RunConfig, worker_index: int = 0, create: bool = True
) -> tuple[optuna.Study, kstorage.StudyLock]:
    """Create the study, or load it to continue; a study of another config is refused."""
    import optuna

    from kiln.api import resolve

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # Kiln prints one line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    s.folder.mkdir(parents=True, exist_ok=True)
    lock = kstorage.StudyLock(s.storage, s.name)
    with lock:  # tables and study created once, even by workers started together
        store = kstorage.open_storage(s.storage)
        existing = {st.study_name: st.n_trials for st in optuna.get_all_study_summaries(store)}
        if s.name not in existing and not create:
            raise RunError(f"no study '{s.name}' in {kstorage.redact(s.storage)}")
        study = optuna.create_study(
            storage=store,
            study_name=s.name,
            direction=s.direction,
            load_if_exists=True,
            sampler=make_sampler(s, worker_index, existing.get(s.name, 0)),
            pruner=make_pruner(s),
        )
        mine = identity(resolve(cfg).to_dict())  # model options with their defaults
        if s.name not in existing:
            study.set_user_attr("kiln_config", mine)
            study.set_user_attr("kiln_metric", s.metric)
        else:
            _check_same(study, s, mine)
    return study, lock


def _check_same(study, s: Settings, mine: dict[str, Any]) -> None:
    where = f"study '{s.name}' in {kstorage.redact(s.storage)}"
    wanted = study.direction.name.lower()
    if wanted != s.direction or study.user_attrs.get("kiln_metric", s.metric) != s.metric:
        raise ConfigError(
            f"{where} {wanted}s {study.user_attrs.get('kiln_metric')}, not {s.direction} "
            f"{s.metric}; pass --study NEW_NAME for a new study"
        )
    keys = differences(study.user_attrs.get("kiln_config") or {}, mine)
    if keys:
        shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
        raise ConfigError(
            f"{where} was started with another config (differs in {shown}); continue it with "
            "the same config, or pass --study NEW_NAME to start a new study"
        )


def make_sampler(s: Settings, worker_index: int, done: int) -> optuna.samplers.BaseSampler:
    """Seeded per worker and per restart: workers and resumed runs do not redraw the same values
    (tune.seed makes a single worker's study repeatable; with shared storage the process id is
    mixed in, since workers on other machines count from 0 too)."""
    import optuna

    seed = s.seed
    if seed is not None:
        seed = seed + 7919 * worker_index + done
        if not s.default_storage and worker_index == 0:
            seed += os.getpid()
        seed %= 2**32
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(s.startup_trials, 1))


def make_pruner(s: Settings) -> optuna.pruners.BasePruner:
    import optuna

    first = s.warmup_epochs + 1  # epochs are steps 1, 2, ...: the first epoch that may be pruned
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials, n_warmup_steps=first)
    if s.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first)
    return optuna.pruners.NopPruner()


def counts(trial) -> bool:
    """Whether a trial counts towards --trials (see the module's docstring)."""
    from optuna.trial import TrialState

    return trial.state != TrialState.FAIL or "error" in trial.user_attrs


def fail_dead_trials(study) -> list[int]:
    """RUNNING trials of workers of this machine whose process is gone: failed, not counted."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if kstorage.is_dead_here(worker):
            try:
                study._storage.set_trial_user_attr(
                    trial._trial_id, "abandoned", f"worker {worker} stopped during the trial"
                )
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                failed.append(trial.number)
            except UpdateFinishedTrialError:
                pass
    return failed


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

        from kiln.api import train

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
        print(f"{self.tag}{text}", flush=True)


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
        print(
            f"note: {kstorage.redact(s.storage)} has no lock Kiln can take: with several "
            "workers the study may end with a trial or two more than --trials",
            file=sys.stderr,
        )
    objective = Objective(s, cfg.to_dict(), lock, verbose, tag)
    deadline = None if s.timeout is None else time.monotonic() + s.timeout
    ran = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            lock.acquire()
            try:
                for number in fail_dead_trials(study):
                    print(f"{tag}Trial {number}: its worker is gone; marked failed, not counted")
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
        print(
            f"{tag}Trial {trial.number} finished: {s.metric} {trial.value:.4f} in {seconds:.1f}s "
            f"(best {best.value:.4f}, trial {best.number})",
            flush=True,
        )
    elif trial.state == TrialState.PRUNED:
        step = trial.last_step
        value = trial.intermediate_values.get(step, math.nan) if step is not None else math.nan
        print(
            f"{tag}Trial {trial.number} pruned after epoch {step}: {s.metric} {value:.4f}",
            flush=True,
        )


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
    return "kiln " + " ".join(shlex.quote(a) for a in sys.argv[1:])
