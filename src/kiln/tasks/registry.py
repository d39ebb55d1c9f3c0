"""Task registry: what is learned (the loss) and how it is scored (one headline metric).

A task is one class with one decorator; `task=NAME` in a config picks it, `kiln list tasks` shows
it. The trainer only calls the methods below, so a new task needs no change to the loop:

    @register_task("mytask", "what it learns")
    class MyTask:
        metric = "acc"              # logged as train_acc / val_acc, monitored as val_acc
        higher_is_better = True

        @classmethod
        def build(cls, cfg, data, device): ...      # -> an instance, from the run's config
        def train_loss(self, outputs, targets): ... # mean over the batch, to backpropagate
        def eval_loss(self, outputs, targets): ...  # sum over the batch
        def score(self, outputs, targets): ...      # sum over the batch of the per-sample metric

Optional, for tasks that need more than "outputs = model(inputs)":

        def finish(self, mean): ...                 # mean score -> the metric (MSE -> RMSE)
        def summarize(self, score_sum, n): ...      # summed scores (any shape) -> {metric: v, ...}
                                                    # every key is logged as train_/val_<key>
        def train_step(self, trainer, x, y): ...    # -> (mean loss, outputs for score); replaces
                                                    # Trainer.train_step (e.g. a GAN's two steps)
        def eval_step(self, trainer, x, y): ...     # -> (summed loss, outputs for score)
        def state_dict(self) / load_state_dict(s)   # extra state kept in last.pt (resume)
        def after_fit(self, run, model, bundle, device): ...  # plots/report -> {label: path}
        def report(run, model, bundle, device): ...  # `kiln report RUN` -> report.html's path
        def evaluate(outputs, targets, info): ...   # kiln eval's metrics from collected outputs
        def evaluate_loader(model, loader, info, cfg): ...  # the same, streaming over a loader
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kiln.errors import ConfigError


@dataclass
class TaskEntry:
    name: str
    cls: type
    description: str


TASKS: dict[str, TaskEntry] = {}


def register_task(name: str, description: str = "") -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        for attr in ("metric", "higher_is_better", "build", "score"):  # losses may be set in init
            if not hasattr(cls, attr):
                raise TypeError(f"task '{name}' ({cls.__name__}) lacks '{attr}'")
        cls.name = name
        TASKS[name] = TaskEntry(name, cls, description or (cls.__doc__ or "").split("\n")[0])
        return cls

    return wrap


def get_task(name: str) -> type:
    if name not in TASKS:
        raise ConfigError(
            f"task: unknown task '{name}'; available: {', '.join(sorted(TASKS))} "
            "(your own: @kiln.tasks.register_task in a module listed under `imports:`)"
        )
    return TASKS[name].cls


def direction(monitor: str) -> str:
    """'min' or 'max' for a logged key such as val_loss or val_acc."""
    if monitor.endswith("loss"):
        return "min"
    metric = monitor.split("_", 1)[-1]
    for entry in TASKS.values():
        if entry.cls.metric == metric:
            return "max" if entry.cls.higher_is_better else "min"
    return "max"
