"""`kiln summary` and `kiln.summary`: the per-layer table of a model, by name (with model.*
overrides) or as a run trained it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import KilnError


@dataclass
class ModelSummary:
    """The layer table (torchinfo) and what it was made for."""

    model: str
    input: tuple[int, ...]
    batch: int
    classes: int
    parameters: int
    table: str

    def __str__(self) -> str:
        size = "x".join(map(str, (self.batch, *self.input)))
        return f"{self.model}: input {size}, {self.classes} classes\n{self.table}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input": list(self.input),
            "batch": self.batch,
            "classes": self.classes,
            "parameters": self.parameters,
            "table": self.table,
        }

    def _repr_html_(self) -> str:
        from html import escape

        from kiln.evaluate import notebook as nb

        sub = f"input {'x'.join(map(str, self.input))}, {self.parameters:,} parameters"
        return nb.view(self.model, f"<pre>{escape(self.table)}</pre>", subtitle=sub)


def summarize(
    target: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    input: str | None = None,
    batch: int = 64,
    classes: int = 10,
) -> ModelSummary:
    """A model name (overrides: model.* keys) or a run directory (as trained)."""
    from kiln.config import build_config
    from kiln.models import build_model, import_run_modules, import_user_modules
    from kiln.models.summary import (
        DEFAULT_INPUT,
        data_info,
        parameter_count,
        parse_input,
        summary_table,
    )  # fmt: skip

    path = Path(target)
    if (path / "config.yaml").is_file():
        from kiln.rundir import RunDir

        if overrides:
            raise KilnError("a run's model is summarised as trained: drop the key=value overrides")
        run = RunDir.open(path)
        cfg = run.load_config()
        if cfg.model.name == "custom":
            raise KilnError(
                f"{path} was trained with a model passed in Python: Kiln cannot rebuild it"
            )
        import_run_modules(cfg.imports, run.config_path)
        info = run.data_info()
        shape = parse_input(input) if input else info.input_shape
        if input:
            info = data_info(shape, info.num_classes)
    else:
        if isinstance(overrides, dict):
            cfg = build_config(None, {"model.name": str(target), **overrides})
        else:
            cfg = build_config(None, [f"model.name={target}", *(overrides or [])])
        import_user_modules(cfg.imports)
        shape = parse_input(input) if input else DEFAULT_INPUT
        info = data_info(shape, classes)
    model = build_model(cfg.model, info, load=False).model
    table = summary_table(model, shape, batch)
    return ModelSummary(cfg.model.name, tuple(shape), batch, info.num_classes,
                        parameter_count(model), table)  # fmt: skip
