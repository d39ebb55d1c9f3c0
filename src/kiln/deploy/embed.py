"""`kiln export RUN --embed-preprocessing`: an export whose graph takes decoded images as they are.

The graph takes uint8 RGB images (N, H, W, 3) of any height and width (an ExecuTorch program: of
one size, `--input-size HxW`, the model's own by default: its memory is planned ahead), does
Kiln's whole preprocessing (kiln/deploy/preprocess.py: channels, Pillow's bilinear cover-resize
and center-crop, scaling, mean/std), runs the model with its test-time views, and ends with the
task's head (`Task.export_head`: class probabilities for classification). A client decodes an
image and passes its bytes; nothing of Kiln's preprocessing is left to re-implement.

Before the file is kept it is loaded back through its runtime and checked, as every export is,
against Kiln's own path (Pillow decode, normalize, the eager model, the head) on validation images
at the model's size and on the same images resized to other sizes: above 1e-4 nothing is written.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from kiln.data.images import decode, normalize
from kiln.deploy.export import (
    TOLERANCE,
    ExportError,
    ExportResult,
    load_file,
    model_and_spec,
    output_path,
)  # fmt: skip
from kiln.deploy.preprocess import RESIZE_MODES, ImagePreprocess
from kiln.errors import ConfigError, first_line
from kiln.infer import Predictor, spec_from_run
from kiln.infer.spec import ExportSpec, Parity, RawInput, sha256, sidecar_path
from kiln.rundir import RunDir
from kiln.tasks import get_task

FORMATS = ("onnx", "torchscript", "executorch")
MAX_SIDE = 8192  # the largest height or width the ONNX graph declares
PROGRAM_BATCH = 8  # an ExecuTorch program's largest batch (its buffers are planned for it)
# Sizes the parity check resizes validation images to, relative to the model's (height, width):
# larger and smaller, square and not, so that both the cover-resize and the crop are exercised.
RESIZED = ((1.5, 1.5), (0.75, 0.75), (2.0, 1.25), (0.6, 1.4), (3.1, 2.3), (1.0, 1.7))


class Embedded(nn.Module):
    """Decoded images -> preprocessing -> the model (with its test-time views) -> the head."""

    def __init__(self, preprocess: nn.Module, model: nn.Module, head: nn.Module):
        super().__init__()
        self.preprocess, self.model, self.head = preprocess, model, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(self.preprocess(images)))


def resize_mode(cfg) -> str:
    """How the run fits images to its size: `data.resize` where the config has it, else cover."""
    return str(cfg.data.model_dump().get("resize", "cover"))


def export_embedded(
    run: RunDir,
    fmt: str,
    output: str | Path | None,
    which: str,
    parity_images: int,
    log: Callable[[str], None] = print,
    input_size: tuple[int, int] | None = None,
) -> ExportResult:
    """Write, load back and check an export that carries its preprocessing (module docstring).
    `input_size`: the (height, width) an ExecuTorch program takes."""
    if fmt not in FORMATS:
        raise ConfigError(
            f"--embed-preprocessing puts the preprocessing in a graph: use --format onnx, "
            f"torchscript or executorch, not {fmt}"
        )
    if input_size is not None and fmt != "executorch":
        raise ConfigError(
            f"--input-size fixes the image size of an ExecuTorch program; a {fmt} graph with "
            "its preprocessing takes images of any size: drop --input-size"
        )
    if input_size is not None and min(input_size) < 1:
        raise ConfigError(f"--input-size must be HEIGHTxWIDTH in pixels, got {input_size}")
    cfg, info = run.load_config(), run.data_info()
    task = get_task(cfg.task)
    if task.generates or info.depth is not None:
        what = "generates images from noise" if task.generates else "takes volumes (.npy)"
        raise ConfigError(
            f"{run.path} {what}: --embed-preprocessing is for models that take images"
        )
    if resize_mode(cfg) not in RESIZE_MODES:  # fit's letterbox is not in the graph (yet)
        raise ConfigError(
            f"{run.path} was trained with data.resize={resize_mode(cfg)}: --embed-preprocessing "
            f"builds {' and '.join(RESIZE_MODES)} into the graph only; export without it (the "
            "sidecar records the resize for the client)"
        )
    path = output_path(run, fmt, None, output, stem="model-embedded")
    model, spec = model_and_spec(run, fmt, which, path)
    spec.tta_in_graph = True
    head, output_name = task.export_head()
    spec.raw_input = RawInput(resize=resize_mode(cfg))
    if fmt == "executorch":  # one size, a batch of at most PROGRAM_BATCH
        height, width = input_size or (spec.input.height, spec.input.width)
        spec.raw_input = RawInput(
            resize=resize_mode(cfg), height=height, width=width, max_batch=PROGRAM_BATCH,
            size=f"exactly {height}x{width} pixels (height x width), 1 to {PROGRAM_BATCH} a call",
        )  # fmt: skip
    spec.output = {**spec.output, "name": output_name}
    i, mode = spec.input, spec.raw_input.resize
    preprocess = ImagePreprocess(i.channels, i.height, i.width, i.mean, i.std, mode)
    model_part = task.export_module(model, spec.tta).eval()
    eager = Embedded(preprocess, model_part, head).eval()
    images, source = validation_images(run, parity_images)
    log(f"Checking on {len(images)} {source}, at the model's size and resized")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        started = time.perf_counter()
        write = {"onnx": write_onnx, "torchscript": write_torchscript,
                 "executorch": write_executorch}[fmt]  # fmt: skip
        write(eager, tmp, spec)
        log(f"Wrote {fmt} with the preprocessing inside in {time.perf_counter() - started:.1f} s")
        exported = load_file(tmp, spec, path)
        spec.parity, spec.parity_resized = check(eager, exported, images, source, spec)
        os.replace(tmp, path)
        spec.sha256 = sha256(path)
        result = ExportResult(path, sidecar_path(path), spec)
        spec.write(result.sidecar)
        return result
    finally:
        tmp.unlink(missing_ok=True)


# Writers ------------------------------------------------------------------------------------------


def example(spec: ExportSpec) -> torch.Tensor:
    """Two images of a size unlike the model's and unlike each other's sides (so the exporter
    cannot tie height to width or to a constant)."""
    generator = torch.Generator().manual_seed(0)
    shape = (2, spec.input.height + 3, spec.input.width + 5, 3)
    return torch.randint(0, 256, shape, generator=generator).to(torch.uint8)


def write_onnx(module: Embedded, path: Path, spec: ExportSpec) -> None:
    """Batch, height and width dynamic (1 to MAX_SIDE pixels), checked by onnx.checker."""
    import onnx

    dims = {
        0: torch.export.Dim.DYNAMIC,
        1: torch.export.Dim("height", min=1, max=MAX_SIDE),
        2: torch.export.Dim("width", min=1, max=MAX_SIDE),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example(spec),), input_names=[spec.raw_input.name],
                output_names=[spec.output["name"]], dynamic_shapes=(dims,), dynamo=True,
                verbose=False,
            )  # fmt: skip
        program.save(str(path))
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # the exporter raises many types; all mean "cannot export this"
        first = first_line(exc)
        raise ExportError(
            f"ONNX export of model '{spec.model.name}' with its preprocessing failed ({first}); "
            "try --format torchscript, or export without --embed-preprocessing"
        ) from None


def write_torchscript(module: Embedded, path: Path, spec: ExportSpec) -> None:
    """The model traced (as a plain TorchScript export), the preprocessing scripted (its sizes
    depend on the input's), both in one scripted module."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            normalized = module.preprocess(example(spec))
            traced = torch.jit.trace(module.model, normalized, check_trace=False)
            scripted = torch.jit.script(Embedded(module.preprocess, traced, module.head))
            torch.jit.save(scripted, str(path))
    except Exception as exc:
        first = first_line(exc)
        raise ExportError(
            f"TorchScript export of model '{spec.model.name}' with its preprocessing failed "
            f"({first}); try --format onnx, or export without --embed-preprocessing"
        ) from None


def write_executorch(module: Embedded, path: Path, spec: ExportSpec) -> None:
    """A .pte taking uint8 (N, height, width, 3) at the one size the sidecar names; the model's
    operators delegated to XNNPACK, the preprocessing run by ExecuTorch's portable kernels."""
    from kiln.deploy.executorch import write_program

    raw = spec.raw_input
    example = torch.zeros(1, raw.height, raw.width, 3, dtype=torch.uint8)
    write_program(module, example, path, spec, max_batch=raw.max_batch)


# Checks -------------------------------------------------------------------------------------------


def validation_images(run: RunDir, n: int) -> tuple[list[torch.Tensor], str]:
    """The run's first n validation images as uint8 RGB (H, W, 3); random pixels when the data is
    gone (the graph can still be checked against Kiln's path)."""
    from kiln.tasks.common import validation_inputs

    spec = spec_from_run(run, "run", "best", None, file="-")
    # validation_inputs gives normalized images: undo it exactly (they were uint8)
    normalized, _, source = validation_inputs(run, n, spec)
    shape = (1, -1) + (1,) * (normalized.dim() - 2)
    mean = torch.tensor(spec.input.mean).view(shape)
    std = torch.tensor(spec.input.std).view(shape)
    pixels = ((normalized * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
    rgb = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
    return list(rgb.permute(0, 2, 3, 1).contiguous()), source


def resized(images: list[torch.Tensor], height: int, width: int) -> list[torch.Tensor]:
    """Each image at one of the RESIZED sizes (Pillow bicubic): new 'original files'."""
    out = []
    for k, image in enumerate(images):
        fy, fx = RESIZED[k % len(RESIZED)]
        out.append(bicubic(image, max(1, round(height * fy)), max(1, round(width * fx))))
    return out


def bicubic(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (H, W, 3) resized with Pillow's bicubic: the file a camera of that size gives."""
    pil = Image.fromarray(image.numpy()).resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(pil).copy())


@torch.inference_mode()
def kiln_path(eager: Embedded, images: list[torch.Tensor], spec: ExportSpec) -> torch.Tensor:
    """What Kiln answers for decoded images: Pillow decode to the model's size, normalize, the
    eager model, the head."""
    i = spec.input
    shape = (-1, 1, 1)
    mean, std = torch.tensor(i.mean).view(shape), torch.tensor(i.std).view(shape)
    x = torch.stack([
        normalize(decode(Image.fromarray(im.numpy()), i.channels, i.height, i.width), mean, std)
        for im in images
    ])  # fmt: skip
    return eager.head(eager.model(x)).float()


def check(
    eager: Embedded, exported: Predictor, images: list[torch.Tensor], source: str, spec: ExportSpec
) -> tuple[Parity, Parity]:
    """The graph's answers against Kiln's path, at the model's size (plus one image alone: a
    batch size the graph was not traced with) and at other sizes; above TOLERANCE it fails."""
    head = eager.head
    results = []
    checks = (("", images), ("resized to other sizes ", resized(images, *size(spec))))
    raw = spec.raw_input
    if raw.height is not None and (raw.height, raw.width) != size(spec):  # one size: only that
        fixed = f"resized to the program's {raw.height}x{raw.width} "
        others = resized(images, *size(spec))
        checks = (("", [bicubic(im, raw.height, raw.width) for im in images]),
                  (fixed, [bicubic(im, raw.height, raw.width) for im in others]))  # fmt: skip
    elif raw.height is not None:  # the model's own size: the images as they are, twice
        checks = (("", images), ("", images))
    for label, batch in checks:
        ref = kiln_path(eager, batch, spec)
        got = head(exported.logits(exported.collate(batch))).float()
        diff = (got - ref).abs().max().item()
        if not label:
            single = head(exported.logits(batch[0].unsqueeze(0))).float()
            diff = max(diff, (single - ref[:1]).abs().max().item())
        agree = exported.task.agreement(ref, got)
        where = f"{source}, {label}".rstrip(", ") if label else source
        parity = Parity(images=len(batch), source=where, max_abs_logit_diff=diff,
                        tolerance=TOLERANCE, top1_agreement=agree)  # fmt: skip
        if not diff <= TOLERANCE:
            raise ExportError(
                f"the {spec.format} export with its preprocessing disagrees with Kiln's own "
                f"preprocessing and model: largest output difference {diff:.3g} > {TOLERANCE:g} "
                f"on {len(batch)} {where}; nothing was written. Export without "
                "--embed-preprocessing, and report the model and Pillow version if it persists"
            )
        results.append(parity)
    return results[0], results[1]


def size(spec: ExportSpec) -> tuple[int, int]:
    return spec.input.height, spec.input.width
