"""Model summaries: the torchsummary-style table (torchinfo) and the zoo's catalogue."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kiln.data.registry import DataInfo
from kiln.errors import ConfigError, KilnError
from kiln.models.registry import MODELS, create_model

DEFAULT_INPUT = (1, 28, 28)  # what `kiln list models` counts parameters for: an MNIST digit


def parse_input(text: str) -> tuple[int, int, int]:
    """`1x28x28` (channels x height x width) or `28x28` (one channel)."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) == 2:
        dims = (1, *dims)
    if len(dims) != 3 or min(dims) < 1:
        raise KilnError(f"--input '{text}': write channels x height x width, e.g. 1x28x28")
    return dims  # type: ignore[return-value]


def data_info(shape: tuple[int, int, int], classes: int = 10) -> DataInfo:
    c, h, w = shape
    return DataInfo("input", [str(i) for i in range(classes)], c, h, w, [0.0] * c, [1.0] * c)


def summary_table(model: nn.Module, shape: tuple[int, int, int], batch: int = 64) -> str:
    """Per layer: output shape, parameters, trainable, mult-adds; then sizes in MB (torchinfo)."""
    import torchinfo

    try:
        stats = torchinfo.summary(
            model,
            input_size=(batch, *shape),
            col_names=("output_size", "num_params", "trainable", "mult_adds"),
            row_settings=("var_names",),
            depth=4,
            device="cpu",
            verbose=0,
        )
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1][:300]
        raise KilnError(
            f"the model cannot take a {'x'.join(map(str, shape))} input ({detail}); pass the "
            "input the model is made for with --input CxHxW"
        ) from None
    return str(stats)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def catalogue() -> list[dict[str, Any]]:
    """Every registered model with its parameter count for a 1x28x28, 10-class input."""
    rows = []
    for name, entry in sorted(MODELS.items()):
        try:
            with torch.device("meta"):  # shapes only: no memory, no time
                params: int | None = parameter_count(create_model(name, data_info(DEFAULT_INPUT)))
        except ConfigError:  # needs options first (sequential needs its layers)
            params = None
        rows.append(
            {
                "name": name,
                "description": entry.description,
                "parameters": params,
                "options": entry.options(),
            }
        )
    return rows
