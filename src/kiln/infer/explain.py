"""Explanations of a run's answers as files and JSON: `kiln predict RUN FILES --explain -o OUT/`
and `POST /explain`. The heat maps come from the task (`Task.explain`, through the eager model:
gradients need the run's checkpoint, not an export)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import torch

from kiln.data.images import normalize
from kiln.errors import KilnError
from kiln.evaluate.explain import Explanation, check_method, overlay
from kiln.evaluate.images import png_bytes, save_png


def explain_items(predictor, items: list[Any], top_k: int = 3, method: str = "auto"):
    """[(the input as the model saw it, uint8 (C, H, W); its explanations)] per item."""
    check_method(method)
    if predictor.model is None:
        raise KilnError(
            f"{predictor.source} is an export: explanations follow gradients through the model, "
            "so they need the run directory (kiln predict RUN --explain, kiln serve RUN)"
        )
    if predictor.info.features:
        raise KilnError("this run learned from table rows: explanations are heat maps on images")
    results = []
    for item in items:
        pixels = predictor.task.read_input(item, predictor.info)
        x = normalize(pixels, predictor.mean, predictor.std).unsqueeze(0).to(predictor.device)
        with predictor._lock:
            (explained,) = predictor.task.explain(predictor.model, x, predictor.info, top_k, method)
        results.append((pixels, explained))
    return results


def file_name(stem: str, rank: int, label: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "class"
    return f"{stem}.explain-{rank}-{safe}.png"


def explain_files(predictor, files: list[Path], output: Path, top_k: int = 3,
                  method: str = "auto") -> list[dict[str, Any]]:  # fmt: skip
    """For each file and each of its top-k classes: OUTPUT/<name>.explain-<rank>-<label>.png
    (the image as the model saw it, its heat map over it). Returns the answers as JSON."""
    output.mkdir(parents=True, exist_ok=True)
    answers = []
    for path, (pixels, explained) in zip(files, explain_items(predictor, files, top_k, method),
                                         strict=True):  # fmt: skip
        rows = []
        for rank, e in enumerate(explained, start=1):
            name = file_name(path.stem, rank, e.label)
            written = save_png(overlay(pixels, e.heat), output / name)
            rows.append({"label": e.label, "score": e.score, "map": str(written)})
        answers.append({"file": str(path), "method": explained[0].method if explained else "",
                        "explanations": rows})  # fmt: skip
    return answers


def show(answer: dict[str, Any]) -> str:
    """One line of `kiln predict --explain`."""
    items = answer["explanations"]
    shown = ", ".join(f"{e['label']} {e['score']:.1%} -> {e['map']}" for e in items)
    return f"{answer['file']}: {shown}"


def as_json(explained: list[Explanation], pixels: torch.Tensor) -> list[dict[str, Any]]:
    """POST /explain's items: the map over the image and the map alone, as base64 PNGs."""

    def b64(image: torch.Tensor) -> str:
        return base64.b64encode(png_bytes(image)).decode("ascii")

    return [
        {"label": e.label, "score": e.score, "method": e.method,
         "overlay_png": b64(overlay(pixels, e.heat, min_side=1)),
         "heat_png": b64((e.heat * 255).round().to(torch.uint8).unsqueeze(0))}
        for e in explained
    ]  # fmt: skip
