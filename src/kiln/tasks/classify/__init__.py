"""task=classify: one label per image (cross-entropy, accuracy)."""

from kiln.tasks.classify.task import ClassifyTask, balance

__all__ = ["ClassifyTask", "balance"]
