"""Tasks: what is learned (loss) and how it is scored (metrics). `get(cfg.task)` is the door in."""

from __future__ import annotations

from collections.abc import Callable

from kiln.errors import ConfigError
from kiln.tasks.classify import ClassifyTask

TASKS: dict[str, Callable[..., object]] = {"classify": ClassifyTask}


def get(name: str) -> type[ClassifyTask]:
    if name not in TASKS:
        raise ConfigError(f"task: unknown task '{name}'; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "ClassifyTask", "get"]
