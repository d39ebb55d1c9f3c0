"""Prediction from a run directory: the run's own preprocessing, applied to any image."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from kiln import checkpoint
from kiln.data.builtin import IMAGE_SUFFIXES
from kiln.data.images import UNREADABLE, decode
from kiln.data.registry import DataInfo
from kiln.errors import KilnError, RunError
from kiln.models import build_model, import_run_modules
from kiln.models.tta import infer
from kiln.rundir import RunDir

ImageLike = str | Path | Image.Image | torch.Tensor


def load_model(
    run: RunDir,
    which: str = "best",
    device: str | torch.device = "cpu",
    model: torch.nn.Module | None = None,
):
    """Rebuild the model from the saved config and load its weights (never unpickled code)."""
    if which not in ("best", "last"):
        raise KilnError(f"--checkpoint must be 'best' or 'last', got '{which}'")
    cfg = run.load_config()
    if model is None:
        if cfg.model.name == "custom":
            raise RunError(
                f"{run.path} was trained with a model passed in Python "
                f"({cfg.model.kwargs().get('class')}); load it with "
                "kiln.load(run_dir, model=YourModel())"
            )
        import_run_modules(cfg.imports, run.config_path)
        model = build_model(cfg.model, run.data_info(), load=False).model
    state = checkpoint.load(run.checkpoint(which), map_location=device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise RunError(
            f"{run.checkpoint(which)} does not match the run's model ({first})"
        ) from None
    return model.to(device).eval(), state.get("epoch")


def expand_paths(
    paths: Iterable[str | Path], suffixes: Iterable[str] = IMAGE_SUFFIXES, kind: str = "images"
) -> list[Path]:
    """Files as given; folders expanded to the files inside them with one of `suffixes`
    (recursively, sorted)."""
    suffixes = tuple(suffixes)
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes)
            if not found:
                raise KilnError(f"folder {p} holds no {kind} ({', '.join(suffixes)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise KilnError(f"{p} does not exist")
    return out


class Predictor:
    """Made by `kiln.load(run_dir)`: `.predict(images)` gives top-k classes and probabilities."""

    def __init__(
        self,
        model: torch.nn.Module,
        info: DataInfo,
        device: str | torch.device = "cpu",
        tta: str = "none",
        task: str = "classify",
    ):
        self.model, self.info, self.device = model.eval(), info, torch.device(device)
        self.tta = tta  # model.tta of the run: the same answers as its evaluation
        self.task = task  # what an answer is: top-k classes, numbers, ...
        self.mean = torch.tensor(info.mean).view(-1, 1, 1)
        self.std = torch.tensor(info.std).view(-1, 1, 1)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        which: str = "best",
        device: str = "cpu",
        model: torch.nn.Module | None = None,
    ) -> Predictor:
        run = RunDir.open(run_dir)
        if run.load_config().task == "segment":  # a mask per image, at the image's own size
            from kiln.predict_masks import MaskPredictor

            return MaskPredictor.from_run(run_dir, which, device, model)
        model, _ = load_model(run, which, device, model)
        cfg = run.load_config()
        import_run_modules(cfg.imports, run.config_path)  # a task of your own answers too
        return cls(model, run.data_info(), device, cfg.model.tta, cfg.task)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """Any image -> normalized float tensor (C, H, W) in the run's channels and size."""
        return normalize(to_uint8(image, self.info.input_shape), self.mean, self.std)

    @torch.inference_mode()
    def outputs(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """The model's raw outputs (logits, standardized values, ...) for a list of images."""
        batch = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return infer(self.model, batch, self.tta).float().cpu()

    def predict_proba(self, images: Sequence[ImageLike]) -> torch.Tensor:
        return self.outputs(images).softmax(dim=1)

    def predict(
        self, images: ImageLike | Sequence[ImageLike], top_k: int = 3
    ) -> list[dict[str, Any]]:
        """One answer per image, as the run's task gives it (see the task's `predictions`)."""
        single = isinstance(images, (str, Path, Image.Image)) or (
            isinstance(images, torch.Tensor) and images.dim() <= 3
        )
        items = [images] if single else list(images)
        if self.info.features:
            raise KilnError(
                f"this run learned from table rows ({', '.join(self.info.features)}), not images:"
                " pass a CSV with those columns (kiln predict RUN rows.csv, or predict_table)"
            )
        return answers(self.task, items, self.outputs(items), self.info, top_k)

    @torch.inference_mode()
    def predict_table(self, csv_path: str | Path, top_k: int = 3) -> list[dict[str, Any]]:
        """A table run's answers for each row of a CSV holding its feature columns."""
        from kiln.data.tabular import read_feature_rows

        if not self.info.features:
            raise KilnError("this run learned from images: pass image files, not a CSV")
        rows, lines = read_feature_rows(Path(csv_path), self.info.features)
        x = ((rows.view(len(rows), -1, 1, 1) - self.mean) / self.std).to(self.device)
        outputs = infer(self.model, x, self.tta).float().cpu()
        found = answers(self.task, list(range(len(rows))), outputs, self.info, top_k)
        return [
            {"file": str(csv_path), "line": line, **row}
            for line, row in zip(lines, found, strict=True)
        ]


def to_uint8(image: ImageLike, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """Any image -> uint8 (C, H, W) in the model's channels and size (tensors are checked)."""
    if isinstance(image, (str, Path, Image.Image)):
        path = image if isinstance(image, (str, Path)) else None
        try:
            return decode(image, *input_shape)
        except UNREADABLE as exc:
            raise KilnError(f"cannot read image {path or 'given'}: {exc}") from None
    if isinstance(image, torch.Tensor):
        tensor = image.unsqueeze(0) if image.dim() == 2 else image
        if tuple(tensor.shape) != tuple(input_shape):
            raise KilnError(
                f"tensor of shape {tuple(tensor.shape)} does not match the run's input "
                f"{tuple(input_shape)}; pass an image or a tensor of that shape"
            )
        return tensor
    raise KilnError(f"cannot predict on {type(image).__name__}: pass a path, PIL image or tensor")


def normalize(tensor: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels are scaled to [0, 1] first; float tensors are taken as already scaled."""
    x = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    return (x - mean) / std


def answers(
    task: str, items: Sequence[Any], outputs: torch.Tensor, info: DataInfo, top_k: int
) -> list[dict[str, Any]]:
    """The task's answers for raw outputs, each with the file it came from (when a path)."""
    from kiln.tasks import get_task

    rows = get_task(task).predictions(outputs, info, top_k)
    return [
        {"file": str(item), **row} if isinstance(item, (str, Path)) else row
        for item, row in zip(items, rows, strict=True)
    ]


def format_predictions(
    items: Sequence[Any], probs: torch.Tensor, classes: list[str], top_k: int
) -> list[dict[str, Any]]:
    """One entry per item: the top label, its probability and the top-k list."""
    k = max(1, min(top_k, len(classes)))
    top_p, top_i = probs.topk(k, dim=1)
    results = []
    for item, ps, idx in zip(items, top_p.tolist(), top_i.tolist(), strict=True):
        top = [
            {"label": classes[i], "probability": round(p, 6)} for p, i in zip(ps, idx, strict=True)
        ]
        entry = {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
        if isinstance(item, (str, Path)):
            entry = {"file": str(item), **entry}
        results.append(entry)
    return results
