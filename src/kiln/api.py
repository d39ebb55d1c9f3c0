"""The Python API: `kiln.train(...)` and `kiln.load(...)`. The CLI is a thin layer over these."""

from __future__ import annotations

import contextlib
from pathlib import Path

from torch import nn

from kiln.engine.run import Run, train
from kiln.engine.setup import resolve
from kiln.infer import Predictor, load_predictor
from kiln.models import trust_imports

__all__ = ["Run", "load", "resolve", "train"]


def load(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "cpu",
    model: nn.Module | None = None,
    trust_imports: bool = False,
) -> Predictor:
    """A Predictor for a finished (or interrupted) run, or an export: `.predict(images)`. Pass
    `model=` (a fresh instance of the same class) for runs trained with a model of your own,
    `trust_imports=True` to import the modules the run's config.yaml names under `imports:`."""
    with trusting(trust_imports):
        return load_predictor(run_dir, checkpoint, device, model)


def trusting(trusted: bool):
    """`trust_imports=True` of an API call; False leaves an enclosing `kiln.trust_imports()`."""
    return trust_imports() if trusted else contextlib.nullcontext()
