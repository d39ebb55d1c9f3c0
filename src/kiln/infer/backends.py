"""Model files to forward functions: an export read by the runtime its format needs (ONNX by
onnxruntime, TorchScript, a state_dict rebuilt from the sidecar's config), or a run's checkpoint
run eagerly. A forward function maps a normalized float batch to the model's raw outputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kiln.errors import RunError
from kiln.infer.spec import ExportSpec

Forward = Callable[[torch.Tensor], torch.Tensor]


def open_file(model_file: Path, spec: ExportSpec, device: str = "cpu") -> tuple[Forward, str]:
    """(forward, runtime name) for an export file (the spec is trusted as given)."""
    backends = {"onnx": _onnx, "torchscript": _torchscript, "state_dict": _state_dict}
    return backends[spec.format](model_file, spec, device)


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


def _onnx(model_file: Path, spec: ExportSpec, device: str) -> tuple[Forward, str]:
    session = onnx_session(model_file)
    name = session.get_inputs()[0].name

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x.numpy())})[0])

    return logits, "onnxruntime"


def _torchscript(model_file: Path, spec: ExportSpec, device: str) -> tuple[Forward, str]:
    try:
        with warnings.catch_warnings():  # deprecated by PyTorch, still what libtorch runs
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(model_file), map_location=device).eval()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunError(f"{model_file} is not a TorchScript archive ({first})") from None
    return (lambda x: module(x.to(device))), f"torchscript ({device})"


def _state_dict(model_file: Path, spec: ExportSpec, device: str) -> tuple[Forward, str]:
    """Rebuild the model from the config in the sidecar, then load plain tensors into it."""
    from kiln.config import RunConfig
    from kiln.models import build_model, import_user_modules
    from kiln.tasks import get_task

    cfg = RunConfig.model_validate(spec.config)
    import_user_modules(cfg.imports)
    model = build_model(cfg.model, data_info(spec), load=False).model
    state = read_state_dict(model_file, device)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunError(f"{model_file} does not match the model in its sidecar ({first})") from None
    model.to(device).eval()
    forward = get_task(spec.task).export_module(model, spec.tta)
    return (lambda x: forward(x.to(device))), f"torch ({device})"


def read_state_dict(model_file: Path, device: str) -> dict[str, torch.Tensor]:
    """A plain state_dict (weights_only), or one inside a Kiln checkpoint (older exports)."""
    import pickle
    from zipfile import BadZipFile

    try:
        state = torch.load(model_file, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{model_file} is not a plain state_dict ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "format" in state:
        state = state["model"]  # written by Kiln before exports held the bare state_dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{model_file} is not a state_dict (names to tensors)")
    return state


def data_info(spec: ExportSpec):
    from kiln.data.registry import DataInfo

    i = spec.input
    data = spec.config.get("data", {})
    return DataInfo(
        data.get("name", "export"),
        spec.classes, i.channels, i.height, i.width, i.mean, i.std,
        target_mean=spec.target_mean, target_std=spec.target_std, depth=i.depth,
        resize=data.get("resize", "cover"),
        outputs=spec.output.get("outputs"), thresholds=spec.output.get("thresholds"),
    )  # fmt: skip
