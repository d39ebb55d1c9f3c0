"""A model ready to answer requests: a run directory or an export, behind one interface.

`load_servable(path)` reads a run directory (eager PyTorch), an ONNX export (onnxruntime), a
TorchScript export or a state_dict export. Preprocessing always comes from the spec, and goes
through the same `decode` that training and `kiln predict` use.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.errors import RunError
from kiln.infer.spec import ExportSpec, InputSpec, ModelSpec, find_export, sidecar_path
from kiln.predict import ImageLike, answers, normalize, to_uint8

Logits = Callable[[torch.Tensor], torch.Tensor]  # normalized float (N, C, H, W) -> (N, classes)
GENERATIVE = ("vae", "gan")  # their exports take latent vectors z and give images


class Generates(torch.nn.Module):
    """The part of a VAE or GAN that makes images: z (N, latent) -> pixels in [0, 1]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.pixels(z)


def eager_forward(model: torch.nn.Module, spec: ExportSpec) -> Logits:
    """What the graph of an export of this model computes, run eagerly."""
    from kiln.models.tta import infer

    if spec.task in GENERATIVE:
        return Generates(model)
    return lambda x: infer(model, x, spec.tta)


class Servable:
    """Preprocessing from the spec plus a backend's logits function."""

    def __init__(self, spec: ExportSpec, logits: Logits, runtime: str, source: Path):
        self.spec, self.runtime, self.source = spec, runtime, Path(source)
        self._logits = logits
        self._lock = threading.Lock()  # one inference at a time: CPU threads are already all used
        shape = (-1, 1, 1)
        self.mean = torch.tensor(spec.input.mean).view(shape)
        self.std = torch.tensor(spec.input.std).view(shape)
        self.info = data_info(spec)

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The image shape (C, H, W), (C, D, H, W) for volumes."""
        i = self.spec.input
        return (i.channels, i.height, i.width) if i.depth is None else (
            i.channels, i.depth, i.height, i.width)  # fmt: skip

    def example(self, n: int = 1) -> torch.Tensor:
        """Zeros shaped like the graph's input: images, or latent vectors for a generator."""
        if self.spec.latent is not None:
            return torch.zeros(n, self.spec.latent)
        return torch.zeros(n, *self.input_shape)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """A generator's n images as uint8 (n, C, H, W): the same draws as `kiln sample`."""
        from kiln.sample import to_uint8 as pixels_to_uint8
        from kiln.tasks.generate import fixed_noise

        if self.spec.latent is None:
            raise RunError(f"a task={self.spec.task} model does not generate images")
        return pixels_to_uint8(self.logits(fixed_noise(self.spec.latent, seed, n)))

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        return normalize(to_uint8(image, self.input_shape), self.mean, self.std)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalized float batch -> float32 logits on the CPU."""
        with self._lock, torch.inference_mode():
            return self._logits(batch.float().contiguous()).float().cpu()

    def predict_proba(self, images: Sequence[ImageLike]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(im) for im in images])
        return self.logits(batch).softmax(dim=1)

    def outputs(self, images: Sequence[ImageLike]) -> torch.Tensor:
        return self.logits(torch.stack([self.preprocess(im) for im in images]))

    def predict(self, images: Sequence[ImageLike], top_k: int = 5) -> list[dict[str, Any]]:
        """One answer per image, as the exported run's task gives it."""
        items = list(images)
        return self.answers(items, self.outputs(items), top_k)

    def answers(self, items: Sequence[Any], outputs: torch.Tensor, top_k: int) -> list[dict]:
        return answers(self.spec.task, items, outputs, self.info, top_k)

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
            "tta": s.tta,
            "parity": s.parity.model_dump() if s.parity else None,
        }


def load_servable(path: str | Path, device: str = "cpu") -> Servable:
    """A run directory, an export file, its sidecar, or a folder with one export."""
    path = Path(path)
    if path.is_dir() and (path / "config.yaml").is_file():
        return _from_run(path, device)
    model_file, spec = find_export(path)
    return open_export(model_file, spec, device)


def open_export(model_file: Path, spec: ExportSpec, device: str = "cpu") -> Servable:
    """A model file read with the runtime its format needs (the spec is trusted as given)."""
    backends = {"onnx": _onnx, "torchscript": _torchscript, "state_dict": _state_dict}
    logits, runtime = backends[spec.format](model_file, spec, device)
    return Servable(spec, logits, runtime, model_file)


# Backends ---------------------------------------------------------------------------------------


def onnx_session(model_file: Path):
    """An onnxruntime CPU session with one intra-op thread per usable core."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a dependency of kiln
        raise RunError("serving ONNX needs onnxruntime: pip install onnxruntime") from None
    from kiln.data.workers import cpu_count

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_count()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise RunError(f"onnxruntime cannot load {model_file}: {exc}") from None


def _onnx(model_file: Path, spec: ExportSpec, device: str) -> tuple[Logits, str]:
    session = onnx_session(model_file)
    name = session.get_inputs()[0].name

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])

    return logits, "onnxruntime"


def _torchscript(model_file: Path, spec: ExportSpec, device: str) -> tuple[Logits, str]:
    try:
        with warnings.catch_warnings():  # deprecated by PyTorch, still what libtorch runs
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(model_file), map_location=device).eval()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunError(f"{model_file} is not a TorchScript archive ({first})") from None
    return (lambda x: module(x.to(device))), f"torchscript ({device})"


def _state_dict(model_file: Path, spec: ExportSpec, device: str) -> tuple[Logits, str]:
    """Rebuild the model from the config in the sidecar, then load plain tensors into it."""
    from kiln import checkpoint
    from kiln.config import RunConfig
    from kiln.models import build_model, import_run_modules

    cfg = RunConfig.model_validate(spec.config)
    import_run_modules(cfg.imports, sidecar_path(model_file))
    model = build_model(cfg.model, data_info(spec), load=False).model
    state = checkpoint.load(model_file, map_location=device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise RunError(f"{model_file} does not match the model in its sidecar ({exc})") from None
    model.to(device).eval()
    forward = eager_forward(model, spec)
    return (lambda x: forward(x.to(device))), f"torch ({device})"


def _from_run(path: Path, device: str) -> Servable:
    from kiln.predict import load_model
    from kiln.rundir import RunDir

    run = RunDir.open(path)
    model, epoch = load_model(run, "best", device)
    spec = spec_from_run(run, "run", "best", epoch, file=str(run.checkpoint("best")))
    forward = eager_forward(model, spec)
    return Servable(spec, lambda x: forward(x.to(device)), f"torch ({device})", path)


# Specs --------------------------------------------------------------------------------------------


def data_info(spec: ExportSpec):
    from kiln.data.registry import DataInfo

    i = spec.input
    return DataInfo(
        spec.config.get("data", {}).get("name", "export"),
        spec.classes, i.channels, i.height, i.width, i.mean, i.std,
        target_mean=spec.target_mean, target_std=spec.target_std, depth=i.depth,
    )  # fmt: skip


def spec_from_run(run, fmt: str, which: str, epoch: int | None, file: str) -> ExportSpec:
    """The sidecar for a run's checkpoint `which`; parity and hash are filled in by the export."""
    from datetime import datetime, timezone

    from kiln import __version__

    cfg = run.load_config()
    info = run.data_info()
    return ExportSpec(
        format=fmt,
        file=file,
        tta=cfg.model.tta,
        task=cfg.task,
        classes=info.classes,
        target_mean=info.target_mean,
        target_std=info.target_std,
        latent=cfg.model.kwargs().get("latent") if cfg.task in GENERATIVE else None,
        input=InputSpec(
            channels=info.channels,
            depth=info.depth,
            layout="NCHW" if info.depth is None else "NCDHW",
            height=info.height,
            width=info.width,
            color="L" if info.channels == 1 else "RGB",
            mean=info.mean,
            std=info.std,
        ),
        output=output_spec(cfg.task, info),
        model=ModelSpec(
            name=cfg.model.name,
            run=run.path.name,
            checkpoint=which,
            epoch=epoch,
            kiln_version=__version__,
            torch_version=torch.__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ),
        config=cfg.model_dump(mode="json"),
    )


def output_spec(task: str, info) -> dict[str, Any]:
    """What the graph's output holds, in words a person integrating it needs."""
    if task in GENERATIVE:
        return {"name": "images", "shape": ["batch", *info.input_shape], "range": [0, 1]}
    if task == "segment":
        return {"name": "logits", "shape": ["batch", len(info.classes), *info.input_shape[1:]],
                "softmax": False, "per": "pixel"}  # fmt: skip
    if task == "regress":
        return {"name": "standardized_targets", "shape": ["batch", len(info.classes)],
                "to_units": "output * target_std + target_mean"}  # fmt: skip
    return {"name": "logits", "shape": ["batch", len(info.classes)], "softmax": False}
