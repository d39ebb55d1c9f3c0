"""Tasks: what is learned (loss) and how it is scored (metrics). `get_task(cfg.task)` is the door
in; `register_task` adds one (see registry.py)."""

from __future__ import annotations

from kiln.tasks.classify import ClassifyTask
from kiln.tasks.registry import TASKS, direction, get_task, register_task
from kiln.tasks.regress import RegressTask

__all__ = ["TASKS", "ClassifyTask", "RegressTask", "direction", "get_task", "register_task"]
