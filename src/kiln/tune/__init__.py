"""Hyperparameter search over a config's `tune.space` with Optuna (`kiln tune`), and the
learning-rate range test (`kiln tune --lr-find`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln.tune.run import StudyResult, tune

if TYPE_CHECKING:
    from kiln.tune.lr_find import LrFindResult

__all__ = ["StudyResult", "lr_find", "tune"]


def lr_find(*args: Any, **kwargs: Any) -> LrFindResult:
    """See kiln.tune.lr_find.lr_find (imported on use: it needs torch)."""
    from kiln.tune.lr_find import lr_find as run

    return run(*args, **kwargs)
