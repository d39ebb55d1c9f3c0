"""Answers from a trained model: a run directory or an export, one predictor per task."""
