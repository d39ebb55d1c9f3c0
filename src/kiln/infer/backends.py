"""Model files to forward functions: an export read by the runtime its format needs (ONNX by
onnxruntime, TorchScript, a state_dict rebuilt from the sidecar's config), or a run's checkpoint
run eagerly. A forward function maps a normalized float batch (or, for an export that carries its
preprocessing, uint8 images (N, H, W, 3)) to the model's raw outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kiln.errors import RunError, first_line, require
from kiln.infer.spec import ExportSpec

Forward = Callable[[torch.Tensor], torch.Tensor]


def open_file(model_file: Path, spec: ExportSpec, device: str = "cpu") -> tuple[Forward, str]:
    """(forward, runtime name) for an export file (the spec is trusted as given)."""
    backends = {"onnx": _onnx, "torchscript": _torchscript, "state_dict": _state_dict,
                "executorch": _executorch}  # fmt: skip
    forward, runtime = backends[spec.format](model_file, spec, device)
    if spec.raw_input is None:
        return forward, runtime
    from kiln.tasks import get_task

    back = get_task(spec.task).from_export_head  # e.g. probabilities -> log-probabilities
    return (lambda images: back(forward(images))), runtime


def onnx_session(model_file: Path):
    """An onnxruntime CPU session with one intra-op thread per usable core."""
    ort = require("onnxruntime", "export", "running an ONNX export")
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


def _executorch(model_file: Path, spec: ExportSpec, device: str) -> tuple[Forward, str]:
    """ExecuTorch's Python runtime (the C++ runtime a phone runs, with its XNNPACK kernels); a
    program takes at most its planned batch (64) per call, so larger batches go in parts."""
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import warning
    try:
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise RunError(
            f"{model_file} is an ExecuTorch program and ExecuTorch cannot be imported here "
            f"({exc}): pip install 'executorch==1.5.1' (the release for torch 2.14.1)"
        ) from None
    try:
        with native_stderr_quiet():  # XNNPACK's start-up probes the CPU and logs each step
            method = Runtime.get().load_program(str(model_file)).load_method("forward")
    except Exception as exc:  # the runtime raises RuntimeError or ValueError with a code
        raise RunError(f"ExecuTorch cannot load {model_file}: {exc}") from None
    raw = spec.raw_input
    part = raw.max_batch if raw is not None and raw.max_batch else 64

    def logits(x: torch.Tensor) -> torch.Tensor:
        x = (x if raw is not None else x.float()).contiguous()  # raw: uint8 (Predictor.fixed_size)
        # outputs live in the program's planned memory: copy them before the next call
        outs = [method.execute([x[i : i + part]])[0].clone() for i in range(0, len(x), part)]
        return torch.cat(outs)

    return logits, "executorch (xnnpack)"


@contextlib.contextmanager
def native_stderr_quiet():
    """Silence what native code writes to file descriptor 2 (Python's own errors still raise)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
    from kiln.infer.spec import sidecar_path
    from kiln.models import build_model, import_run_modules
    from kiln.tasks import get_task

    cfg = RunConfig.model_validate(spec.config)
    import_run_modules(cfg.imports, sidecar_path(model_file))
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
        first = first_line(exc)
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
