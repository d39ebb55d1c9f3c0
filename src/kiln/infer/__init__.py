"""Answers from a trained model: a run directory or an export behind one Predictor, the run's task
deciding what an input and an answer are."""

from kiln.infer.load import (
    load_predictor,
    load_servable,
    open_export,
    sample_images,
    spec_from_run,
)
from kiln.infer.predictor import Predictor, Servable

__all__ = [
    "Predictor",
    "Servable",
    "load_predictor",
    "load_servable",
    "open_export",
    "sample_images",
    "spec_from_run",
]
