"""Task registry: a task is one class (a `Task`, kiln/tasks/base.py) with one decorator;
`task=NAME` in a config picks it and `kiln list tasks` shows it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kiln.config import did_you_mean
from kiln.errors import ConfigError
from kiln.tasks.base import Task


@dataclass
class TaskEntry:
    name: str
    cls: type[Task]
    description: str


TASKS: dict[str, TaskEntry] = {}


def register_task(name: str, description: str = "") -> Callable[[type], type[Task]]:
    """`@register_task("name")` on a Task subclass. A plain class (with at least `metric` and
    `score`) gets the Task defaults for everything it does not define."""

    def wrap(cls: type) -> type[Task]:
        for attr in ("metric", "score"):
            if attr not in {k for c in cls.__mro__ if c is not Task for k in vars(c)}:
                raise TypeError(f"task '{name}' ({cls.__name__}) lacks '{attr}'")
        if not issubclass(cls, Task):
            cls = type(cls.__name__, (cls, Task), {"__module__": cls.__module__,
                                                   "__doc__": cls.__doc__})  # fmt: skip
        cls.name = name
        cls.description = description or (cls.__doc__ or "").strip().split("\n")[0]
        TASKS[name] = TaskEntry(name, cls, cls.description)
        return cls

    return wrap


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(
            f"task: unknown task '{name}'{did_you_mean(name, TASKS)}; "
            f"available: {', '.join(sorted(TASKS))} "
            "(your own: @kiln.tasks.register_task in a module listed under `imports:`)"
        )
    return TASKS[name].cls


def task_for_model(model: str) -> str | None:
    """The task a registered model is made for (model=unet -> segment), if one claims it."""
    for entry in TASKS.values():
        if model in entry.cls.models:
            return entry.name
    return None


def generative_names() -> list[str]:
    """The tasks whose predictions start from noise (kiln sample), in registration order."""
    return [name for name, entry in TASKS.items() if entry.cls.generates]


def direction(monitor: str) -> str:
    """'min' or 'max' for a logged key such as val_loss or val_acc."""
    if monitor.endswith("loss"):
        return "min"
    metric = monitor.split("_", 1)[-1]
    for entry in TASKS.values():
        if entry.cls.metric == metric:
            return "max" if entry.cls.higher_is_better else "min"
    return "max"
