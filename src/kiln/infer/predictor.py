"""One predictor for every task and every source: a run's checkpoint run eagerly, or an export
run by its own runtime. The task decides what an input is (`read_input`) and what an answer is
(`predictions`); the predictor does the rest: preprocessing from the run or the sidecar,
batching, the forward pass, and the file name beside each answer.

`Predictor.predict` answers in Python objects (`kiln.load(RUN).predict(images)`); `Servable`
answers in JSON-ready dicts (`kiln serve`, `kiln predict --json`, and anything that sends answers
on), from the same outputs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from kiln.data.images import ImageLike, normalize, to_uint8
from kiln.data.registry import DataInfo
from kiln.errors import KilnError
from kiln.infer.backends import Forward
from kiln.infer.raw import by_size, ragged, raw_rgb
from kiln.infer.spec import ExportSpec
from kiln.tasks import Task, get_task


class Predictor:
    """`.predict(images)`: the run's task's answers, through the run's own preprocessing."""

    def __init__(
        self,
        spec: ExportSpec,
        forward: Forward,
        runtime: str,
        source: Path,
        info: DataInfo,
        model: torch.nn.Module | None = None,
        device: str | torch.device = "cpu",
    ):
        self.spec, self.runtime, self.source, self.info = spec, runtime, Path(source), info
        self.model = model  # the eager model, when the source is a run (None for an export)
        self.device = torch.device(device)
        self.task: type[Task] = get_task(spec.task)  # its prediction hooks need no training
        self._logits = forward
        self._lock = threading.Lock()  # one inference at a time: CPU threads are already all used
        shape = (-1,) + (1,) * (len(self.input_shape) - 1)
        self.mean = torch.tensor(spec.input.mean).view(shape)
        self.std = torch.tensor(spec.input.std).view(shape)

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    @property
    def tta(self) -> str:
        return self.spec.tta

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The image shape (C, H, W), (C, D, H, W) for volumes."""
        i = self.spec.input
        return (i.channels, i.height, i.width) if i.depth is None else (
            i.channels, i.depth, i.height, i.width)  # fmt: skip

    @property
    def raw(self) -> bool:
        """The graph takes decoded images as they are and preprocesses them itself."""
        return self.spec.raw_input is not None

    # Inputs -----------------------------------------------------------------------------------
    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """Any image -> what the graph takes and `kiln serve` sends it: normalized float
        (C, H, W) at the model's input size, or uint8 RGB (H, W, 3) at its own size for an export
        that carries its preprocessing."""
        if self.raw:
            return self.fixed_size(raw_rgb(image))
        return normalize(to_uint8(image, self.input_shape, self.info.resize), self.mean, self.std)

    def read(self, item: Any) -> torch.Tensor:
        """One input as the task reads it (a segmentation run: at the image's own size),
        normalized (or as it is, for an export that carries its preprocessing)."""
        if self.raw:
            return self.fixed_size(raw_rgb(item))
        return normalize(self.task.read_input(item, self.info), self.mean, self.std)

    def fixed_size(self, pixels: torch.Tensor) -> torch.Tensor:
        """Decoded pixels as they are, refused (one line) when the graph takes one size only."""
        raw = self.spec.raw_input
        if raw.height is not None and tuple(pixels.shape[:2]) != (raw.height, raw.width):
            raise KilnError(
                f"this export takes images of exactly {raw.height}x{raw.width} pixels (height x "
                f"width), not {pixels.shape[0]}x{pixels.shape[1]}: resize them first, or export "
                "ONNX or TorchScript with --embed-preprocessing (any size)"
            )
        return pixels

    def example(self, n: int = 1) -> torch.Tensor:
        """Zeros shaped like the graph's input: images, or latent vectors for a generator."""
        if self.spec.latent is not None:
            return torch.zeros(n, self.spec.latent)
        if self.raw:
            raw = self.spec.raw_input
            size = (raw.height, raw.width) if raw.height is not None else self.input_shape[1:]
            return torch.zeros(n, *size, 3, dtype=torch.uint8)
        return torch.zeros(n, *self.input_shape)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Preprocessed inputs -> one batch for `logits`: a tensor, or a list when they are raw
        images of several sizes."""
        return ragged(items) if self.raw else torch.stack(items)

    def join(self, batches: list) -> torch.Tensor | list[torch.Tensor]:
        """Several batches -> one (what `kiln serve` does with requests that arrive together)."""
        return ragged([x for b in batches for x in b]) if self.raw else torch.cat(batches)

    # The model --------------------------------------------------------------------------------
    def logits(self, batch: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """A batch as `collate` makes it -> the model's raw outputs, float32 on the CPU."""
        if isinstance(batch, list):  # raw images of several sizes: one pass per size
            return by_size(self.logits, batch)
        with self._lock, torch.inference_mode():
            x = batch.contiguous() if self.raw else batch.float().contiguous()
            return self._logits(x).float().cpu()

    def outputs(self, images: Sequence[Any]) -> torch.Tensor:
        """The raw outputs for inputs of one size (logits, standardized values, ...)."""
        return self.logits(self.collate([self.read(im) for im in images]))

    def predict_proba(self, images: Sequence[Any]) -> torch.Tensor:
        return self.outputs(images).softmax(dim=1)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """A generator's n images as uint8 (n, C, H, W): the same draws as `kiln sample`."""
        return self.task.sample(self.logits, n, seed, self.spec.latent)

    # Answers ----------------------------------------------------------------------------------
    def answers(
        self, items: Sequence[Any], outputs: torch.Tensor | None = None, top_k: int = 5
    ) -> list[dict[str, Any]]:
        """The task's JSON-ready answers, each with the file it came from (when a path)."""
        if outputs is None:
            outputs = self._outputs_each(items)
        rows = []
        for item, out in zip(items, outputs, strict=True):
            (row,) = self.task.predictions(out.unsqueeze(0), self.info, top_k)
            rows.append({"file": str(item), **row} if isinstance(item, (str, Path)) else row)
        return rows

    def predict(self, images: Any, top_k: int = 3) -> Any:
        """One answer per image, as the run's task gives them in Python (a list of dicts, or a
        mask tensor per image for segmentation)."""
        single = isinstance(images, (str, Path, Image.Image)) or (
            isinstance(images, torch.Tensor) and images.dim() <= len(self.input_shape)
        ) or not isinstance(images, (list, tuple, torch.Tensor))  # fmt: skip
        items = [images] if single else list(images)
        outputs = self._outputs_each(items)
        return self.task.python_answer(self.answers(items, outputs, top_k), outputs, single)

    def _outputs_each(self, items: Sequence[Any]) -> list[torch.Tensor]:
        """Outputs per input: one batch when the inputs share a size, else one pass each."""
        if self.info.features:
            raise KilnError(
                f"this run learned from table rows ({', '.join(self.info.features)}), not images:"
                " pass a CSV with those columns (kiln predict RUN rows.csv, or predict_table)"
            )
        tensors = [self.read(item) for item in items]
        if len({tuple(t.shape) for t in tensors}) <= 1 and tensors:
            return list(self.logits(torch.stack(tensors)))
        return [self.logits(t.unsqueeze(0))[0] for t in tensors]

    @torch.inference_mode()
    def predict_table(self, csv_path: str | Path, top_k: int = 3) -> list[dict[str, Any]]:
        """A table run's answers for each row of a CSV holding its feature columns."""
        from kiln.data.tabular import read_feature_rows

        if not self.info.features:
            raise KilnError("this run learned from images: pass image files, not a CSV")
        rows, lines = read_feature_rows(Path(csv_path), self.info.features)
        outputs = self.logits((rows.view(len(rows), -1, 1, 1) - self.mean) / self.std)
        found = self.task.predictions(outputs, self.info, top_k)
        return [
            {"file": str(csv_path), "line": line, **row}
            for line, row in zip(lines, found, strict=True)
        ]

    def metadata(self) -> dict[str, Any]:
        s = self.spec
        return {
            "model": s.model.model_dump(),
            "format": s.format,
            "runtime": self.runtime,
            "quantize": s.quantize,
            "task": s.task,
            "classes": s.classes,
            "input": s.input.model_dump(),
            "raw_input": s.raw_input.model_dump() if s.raw_input else None,
            "tta": s.tta,
            "parity": s.parity.model_dump() if s.parity else None,
            "explain": self.model is not None and self.task.explains,  # POST /explain answers
        }

    def __repr__(self) -> str:
        return f"Predictor('{self.source}', task={self.spec.task}, runtime={self.runtime})"

    def _repr_html_(self) -> str:
        from kiln.evaluate import notebook as nb

        s = self.spec
        classes = ", ".join(s.classes[:12]) + (", ..." if len(s.classes) > 12 else "")
        items = [
            ("task", s.task),
            ("model", s.model.name),
            ("runtime", self.runtime),
            ("input", "x".join(map(str, self.input_shape))),
            ("classes", f"{len(s.classes)}: {classes}" if s.classes else None),
            ("checkpoint", f"{s.model.checkpoint} (epoch {s.model.epoch})"),
        ]
        return nb.view(
            f"Predictor {self.source.name}",
            nb.key_values(items),
            '<p class="sub">.predict(images) answers; images are paths, PIL images or tensors</p>',
            subtitle=str(self.source),
        )


class Servable(Predictor):
    """A predictor whose `predict` answers in JSON-ready dicts (what `kiln serve` sends)."""

    def predict(self, images: Sequence[Any], top_k: int = 5) -> list[dict[str, Any]]:
        return self.answers(list(images), top_k=top_k)
