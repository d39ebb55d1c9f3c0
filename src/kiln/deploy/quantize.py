"""Int8 exports: dynamic (weights int8, activations quantized per batch at run time) and static
(weights and activations int8, the activations' ranges measured beforehand on calibration images).

Static quantization runs every layer in int8, so it is the faster of the two on a CPU, but its
ranges are only as good as the images it was calibrated on: Kiln calibrates on a few hundred of
the run's own training images, preprocessed exactly as in training (Task.calibration_inputs).
ONNX files are quantized by ONNX Runtime (QDQ format); ExecuTorch programs by the XNNPACK
quantizer (kiln/deploy/executorch.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kiln.errors import ConfigError

QUANTIZE = ("dynamic", "static")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class Calibration:
    """How a static export measured its activation ranges (recorded in the sidecar)."""

    method: str = "minmax"  # minmax, entropy or percentile (ONNX Runtime's calibrators)
    per_channel: bool = True  # one scale per output channel of each weight, not one per tensor
    images: int = 512  # asked for; once calibrated, how many it was (whole batches, at most these)
    source: str = ""
    images_asked: int | None = None  # once calibrated: what `images` was before

    def check(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"--calibration must be one of {', '.join(CALIBRATION_METHODS)}, got "
                f"'{self.method}'"
            )
        if self.images < 1:
            raise ConfigError(f"--calibration-images must be at least 1, got {self.images}")

    def to_dict(self) -> dict:
        return asdict(self)


def onnx_dynamic(fp32: Path, out: Path) -> None:
    """Weights stored as int8, activations quantized on the fly per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with preprocessed(fp32, out) as prepared, root_log_quiet():
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)


def onnx_static(fp32: Path, out: Path, inputs: torch.Tensor, input_name: str,
                calibration: Calibration) -> None:  # fmt: skip
    """QDQ int8 (activations uint8, weights int8: the pairing x86 CPUs run fastest), the
    activations' ranges measured on `inputs` with the chosen calibrator."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}  # fmt: skip
    quiet = contextlib.redirect_stdout(io.StringIO())  # the entropy calibrator prints its bins
    with preprocessed(fp32, out) as prepared, warnings.catch_warnings(), quiet, root_log_quiet():
        warnings.simplefilter("ignore")
        quantize_static(
            str(prepared), str(out), Batches(inputs, input_name),
            quant_format=QuantFormat.QDQ, per_channel=calibration.per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[calibration.method],
        )  # fmt: skip


@contextlib.contextmanager
def root_log_quiet():
    """ONNX Runtime's quantizer logs notes for its developers on the root logger (a batch norm's
    weight has no channel axis, so it is quantized per tensor): not the user's to read. The null
    handler also keeps logging from installing its stderr handler on the first such note."""
    root, handler = logging.getLogger(), logging.NullHandler()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def torchscript_dynamic(module: nn.Module) -> nn.Module:
    """Linear layers with int8 weights (torch.ao's eager API: deprecated, still what works)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(module), {nn.Linear}, torch.qint8
        )


CALIBRATION_BATCH = 32


def whole_batches(inputs: torch.Tensor) -> torch.Tensor:
    """The calibration inputs cut to whole batches of 32 (ONNX Runtime's histogram calibrators,
    entropy and percentile, stack the batches' outputs: they must all be the same size)."""
    n = len(inputs)
    return inputs[: n - n % CALIBRATION_BATCH] if n >= CALIBRATION_BATCH else inputs


class Batches:
    """ONNX Runtime's CalibrationDataReader protocol over a tensor of inputs, 32 at a time."""

    def __init__(self, inputs: torch.Tensor, name: str, batch: int = CALIBRATION_BATCH):
        self.parts = [inputs[i : i + batch] for i in range(0, len(inputs), batch)]
        self.name, self.at = name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.at >= len(self.parts):
            return None
        self.at += 1
        return {self.name: np.ascontiguousarray(self.parts[self.at - 1].numpy())}

    def rewind(self) -> None:
        self.at = 0


class preprocessed:
    """ONNX Runtime's recommended shape inference and graph clean-up before quantizing, into a
    temporary file removed afterwards."""

    def __init__(self, fp32: Path, out: Path):
        self.fp32, self.path = fp32, out.with_name(out.name + ".pre")

    def __enter__(self) -> Path:
        from onnxruntime.quantization import quant_pre_process

        quant_pre_process(str(self.fp32), str(self.path), skip_symbolic_shape=True)
        return self.path

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
        for extra in self.path.parent.glob(f"{self.path.name}*"):  # calibration's side files
            extra.unlink(missing_ok=True)
