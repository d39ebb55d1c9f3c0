"""Tasks: everything that differs between kinds of learning, one package each, behind the `Task`
class (base.py). `get_task(cfg.task)` is the door in; `@register_task` adds one."""

from __future__ import annotations

# The built-in tasks register on import, in this order.
# isort: off
from kiln.tasks import classify, generate, multilabel, regress, segment  # noqa: E402,F401
from kiln.tasks.base import Needed, Optimizes, StepContext, Task, Teacher
from kiln.tasks.registry import (
    TASKS,
    direction,
    generative_names,
    get_task,
    register_task,
    task_for_model,
)

# isort: on

__all__ = [
    "TASKS",
    "Needed",
    "Optimizes",
    "StepContext",
    "Teacher",
    "Task",
    "direction",
    "generative_names",
    "get_task",
    "register_task",
    "task_for_model",
]
