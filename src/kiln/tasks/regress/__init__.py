"""task=regress: numbers per image or table row (MSE/L1/Huber, RMSE, MAE, R2)."""

from kiln.tasks.regress.task import RegressTask, in_units, regression_metrics

__all__ = ["RegressTask", "in_units", "regression_metrics"]
