"""Hyperparameter search over a config's `tune.space` with Optuna (`kiln tune`), and the
learning-rate range test (`kiln tune --lr-find`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.tune.lr_find import lr_find
    from kiln.tune.run import StudyResult, tune

__all__ = ["StudyResult", "lr_find", "tune"]


def __getattr__(name: str) -> Any:
    # Imported on first use (they need torch and Optuna), so that `kiln --help` stays quick.
    if name in ("StudyResult", "tune"):
        from kiln.tune import run

        return getattr(run, name)
    if name == "lr_find":
        from kiln.tune.lr_find import lr_find

        globals()["lr_find"] = lr_find  # the function, not the submodule of the same name
        return lr_find
    raise AttributeError(f"module 'kiln.tune' has no attribute '{name}'")
