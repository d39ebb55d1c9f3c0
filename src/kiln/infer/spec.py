"""The export's sidecar (`model.onnx.json`): everything a server needs besides the weights.

An exported graph takes normalized float tensors; the sidecar says how a raw image becomes one
(channels, size, scale, mean/std), what the outputs mean (classes) and where the model came from,
so `kiln serve model.onnx` answers exactly what `kiln predict RUN` answers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kiln.errors import RunError

FORMATS = ("onnx", "torchscript", "state_dict", "executorch")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "state_dict": ".state_dict.pt",
            "executorch": ".pte"}  # fmt: skip
SIDECAR_SUFFIX = ".json"


class InputSpec(BaseModel):
    """How an image becomes the model's input: decode, convert, resize, scale, normalize."""

    model_config = ConfigDict(extra="forbid")
    name: str = "input"
    layout: Literal["NCHW", "NCDHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    channels: int = Field(ge=1)
    depth: int | None = Field(None, ge=1)  # volumes (N, C, D, H, W): .npy input, no image file
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    color: Literal["L", "RGB"]
    resize: str = "scale to cover height x width (bilinear), then center-crop"
    scale: float = 1 / 255
    mean: list[float]
    std: list[float]


class RawInput(BaseModel):
    """The input of an export that carries its preprocessing (`--embed-preprocessing`): decoded
    images as they are, the graph does the rest (what InputSpec describes)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "image"
    layout: Literal["NHWC"] = "NHWC"
    dtype: Literal["uint8"] = "uint8"
    channels: Literal[3] = 3
    color: Literal["RGB"] = "RGB"
    size: str = "any height and width from 1 to 8192 pixels; one size per batch"
    resize: str = "cover"  # kiln.deploy.preprocess.RESIZE_MODES
    height: int | None = None  # set (with width): the only size the graph takes (ExecuTorch)
    width: int | None = None
    max_batch: int | None = None  # set: the most images one call takes (ExecuTorch)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    run: str
    checkpoint: str
    epoch: int | None = None
    checkpoint_sha256: str | None = None  # the file exported: is this export still the run's?
    kiln_version: str
    torch_version: str
    created: str


class Parity(BaseModel):
    """The export's answers against the eager model's on the same images."""

    model_config = ConfigDict(extra="forbid")
    images: int
    source: str
    max_abs_logit_diff: float
    tolerance: float | None = None  # None for a quantized export: it is measured, not gated
    top1_agreement: float | None = None  # classification only


class ExportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kiln_export: Literal[1] = 1
    format: Literal["onnx", "torchscript", "state_dict", "executorch", "run"]
    file: str  # the model file, relative to the sidecar's folder
    sha256: str | None = None
    quantize: Literal["dynamic", "static"] | None = None
    calibration: dict[str, Any] | None = None  # static int8: method, per_channel, images, source
    task: str = "classify"  # what an answer is (kiln.tasks): top-k classes, numbers, ...
    tta: Literal["none", "flip", "flip_translate"] = "none"
    tta_in_graph: bool = False  # True: the exported graph already averages over the flips
    classes: list[str]  # the class names; for task=regress the target names
    target_mean: list[float] | None = None  # task=regress: outputs are standardized targets
    target_std: list[float] | None = None
    latent: int | None = None  # task=vae|gan: the graph takes z (N, latent), gives images
    input: InputSpec  # for a generator: the images it makes (channels, size)
    raw_input: RawInput | None = None  # set: the graph takes decoded images and preprocesses them
    output: dict[str, Any] = Field(default_factory=lambda: {"name": "logits", "softmax": False})
    model: ModelSpec
    parity: Parity | None = None
    parity_resized: Parity | None = None  # raw_input: the same images at other sizes
    config: dict[str, Any] = Field(default_factory=dict)  # the run's resolved config

    def write(self, path: Path) -> None:
        from kiln.io import write_text_atomic

        write_text_atomic(path, json.dumps(self.model_dump(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> ExportSpec:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"cannot read the export sidecar {path}: {exc}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()
            )
            raise RunError(
                f"{path} is not a Kiln export sidecar ({problems}); re-run `kiln export`"
            ) from None


def check_beside(side: Path, name: str) -> None:
    """A sidecar names its model file beside it: a plain name, no folder, no '..', so that a
    sidecar someone sends cannot point Kiln at any other file on the machine."""
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise RunError(
            f"{side} names the model file '{name}', which is not a file name beside it (no "
            "folders, no '..', not absolute): keep the sidecar next to its model file and name "
            "it alone, as `kiln export` writes it"
        )


def sidecar_path(model_file: Path) -> Path:
    """model.onnx -> model.onnx.json (one sidecar per file, so formats can share a folder)."""
    return model_file.with_name(model_file.name + SIDECAR_SUFFIX)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_export(path: Path) -> tuple[Path, ExportSpec]:
    """A model file, its sidecar, or a folder holding exactly one export -> (model file, spec)."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path} does not exist: pass a run directory or a file made by kiln export")
    if path.is_dir():
        sidecars = sorted(path.glob(f"*{SIDECAR_SUFFIX}"))
        sidecars = [s for s in sidecars if s.name != "info.json"]
        if len(sidecars) != 1:
            found = ", ".join(s.name for s in sidecars) or "none"
            raise RunError(
                f"{path} must hold exactly one export sidecar (*.onnx.json, *.torchscript.pt.json,"
                f" *.state_dict.pt.json); found {found}: pass the model file itself"
            )
        side = sidecars[0]
    elif path.name.endswith(SIDECAR_SUFFIX):
        side = path
    else:
        side = sidecar_path(path)
    if not side.is_file():
        raise RunError(
            f"{path} has no sidecar {side.name} beside it (classes, input size, normalization): "
            "export with `kiln export RUN` and keep both files together"
        )
    spec = ExportSpec.read(side)
    check_beside(side, spec.file)
    model_file = side.parent / spec.file
    if not model_file.is_file():
        raise RunError(f"{side} names the model file {spec.file}, which is not in {side.parent}")
    if spec.sha256 and sha256(model_file) != spec.sha256:
        raise RunError(
            f"{model_file} has changed since it was exported (its SHA-256 no longer matches "
            f"{side.name}); export again rather than serve a file that may be damaged"
        )
    return model_file, spec
