"""`kiln predict` and `kiln.predict`: answers for files, folders, CSVs of table rows or
in-memory images, as the run's task gives them, with an HTML view for notebooks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.infer.predictor import Predictor
from kiln.tasks import Task


@dataclass
class Predictions:
    """One JSON-ready answer per input (what `kiln predict --json` prints), in order."""

    answers: list[dict[str, Any]]
    task: type[Task]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.answers)

    def __len__(self) -> int:
        return len(self.answers)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.answers[index]

    def lines(self) -> list[str]:
        """One line per answer, as `kiln predict` prints them."""
        return [self.task.show_answer(a) for a in self.answers]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task.name, "answers": self.answers}

    def __repr__(self) -> str:
        return f"Predictions({len(self.answers)} answers, task={self.task.name})"

    def _repr_html_(self) -> str:
        from kiln.evaluate import notebook as nb

        rows = [line.split(": ", 1) if ": " in line else ["-", line] for line in self.lines()]
        return nb.view(f"{len(rows)} predictions", nb.table(["input", "answer"], rows, 99))


def predict_inputs(
    predictor: Predictor,
    inputs: Any,
    *,
    top_k: int = 3,
    output: str | Path | None = None,
    overlay: bool = False,
) -> Predictions:
    """Paths (files, folders, CSVs of rows for a table run) as `kiln predict` reads them, or
    images in memory (PIL images, tensors)."""
    task, info = predictor.task, predictor.info
    items = [inputs] if isinstance(inputs, (str, Path)) or not isinstance(inputs, Sequence) \
        else list(inputs)  # fmt: skip
    if not all(isinstance(item, (str, Path)) for item in items):  # in memory
        return Predictions(predictor.answers(items, top_k=top_k), task)
    if info.features:  # a table run: CSV files of rows
        answers: list[dict[str, Any]] = []
        for table in task.input_files(items, info):
            answers += predictor.predict_table(table, top_k=top_k)
        return Predictions(answers, task)
    files = task.input_files(items, info)
    out = Path(output) if output is not None else None
    return Predictions(task.predict_files(predictor, files, out, overlay, top_k), task)
