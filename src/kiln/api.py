"""The Python API: `kiln.train(...)` and `kiln.load(...)`. The CLI is a thin layer over these."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from kiln.engine.run import Run, train
from kiln.engine.setup import resolve
from kiln.infer import Predictor, load_predictor

__all__ = ["Run", "load", "resolve", "train"]


def load(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "cpu",
    model: nn.Module | None = None,
) -> Predictor:
    """A Predictor for a finished (or interrupted) run, or an export: `.predict(images)`. Pass
    `model=` (a fresh instance of the same class) for runs trained with a model of your own."""
    return load_predictor(run_dir, checkpoint, device, model)
