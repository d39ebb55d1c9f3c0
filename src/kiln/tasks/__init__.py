"""Tasks: what is learned (loss) and how it is scored (metrics). `get_task(cfg.task)` is the door
in; `register_task` adds one (see registry.py)."""

from __future__ import annotations

from kiln.tasks.classify import ClassifyTask
from kiln.tasks.gan import GANTask
from kiln.tasks.registry import TASKS, direction, get_task, register_task
from kiln.tasks.regress import RegressTask
from kiln.tasks.segment import SegmentTask
from kiln.tasks.vae import VAETask

__all__ = [
    "TASKS",
    "ClassifyTask",
    "GANTask",
    "RegressTask",
    "SegmentTask",
    "VAETask",
    "direction",
    "get_task",
    "register_task",
]
