"""A study: its settings from `tune:` and the flags, the study in its storage (created, or
resumed when the config is the same), its sampler and pruner, and which trials count.

What counts towards `--trials N`: every trial that completed, was pruned or failed for a reason
of its own (a bad combination of values, a metric that came out NaN), and every trial running.
A trial whose worker went away (killed, Ctrl-C, a machine lost) is marked failed without an error
and does not count: re-running the same command starts a fresh trial in its place.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.config import RunConfig
from kiln.errors import ConfigError, RunError
from kiln.secrets import expand
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
    url = storage or (expand(t.storage) if t.storage else None)  # ${VARIABLE}s filled in
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

    from kiln.engine.setup import resolve

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
