"""`kiln export`: a run's checkpoint as ONNX, TorchScript or a plain state_dict, checked.

The file is written beside its sidecar only after it has been loaded back through the runtime that
will serve it and its logits compared with the eager model's on validation images: an export that
disagrees (above 1e-4 for fp32) is deleted and the command fails, so a bad file never ships.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.deploy import quantize as q
from kiln.deploy.quantize import QUANTIZE, Calibration
from kiln.errors import ConfigError, KilnError, RunError, first_line, require
from kiln.infer import Predictor, open_export, spec_from_run
from kiln.infer.spec import FORMATS, SUFFIXES, ExportSpec, Parity, sha256, sidecar_path
from kiln.rundir import RunDir, load_model
from kiln.tasks import get_task

TOLERANCE = 1e-4
NAMES = {None: "", "dynamic": "-int8", "static": "-int8-static"}  # after the file's stem


class ExportError(KilnError):
    """The exported file does not answer like the model it came from."""


@dataclass
class Sample:
    """Inputs to check an export on, as the graph takes them (normalized images, or latent
    vectors for a generator), labels when they are real images."""

    inputs: torch.Tensor
    labels: torch.Tensor | None
    source: str


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    spec: ExportSpec
    quantized: dict[str, Any] = field(default_factory=dict)  # fp32 vs int8: size, latency, acc

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "sidecar": str(self.sidecar),
                "spec": self.spec.model_dump(mode="json"), "quantized": self.quantized}  # fmt: skip


def export_run(
    run_dir: str | Path,
    fmt: str = "onnx",
    *,
    quantize: str | None = None,
    output: str | Path | None = None,
    which: str = "best",
    parity_images: int = 256,
    calibration: Calibration | None = None,
    embed_preprocessing: bool = False,
    log: Callable[[str], None] = print,
    input_size: tuple[int, int] | None = None,
) -> ExportResult:
    """Export checkpoint `which` of a run; see the module docstring for the checks.
    `calibration`: how a static int8 export measures its activation ranges (--quantize static);
    `embed_preprocessing`: the graph takes decoded images (kiln/deploy/embed.py), of one
    `input_size` (height, width) for an ExecuTorch program."""
    check_options(fmt, quantize)
    calibration = calibration or Calibration()
    calibration.check()
    if parity_images < 1:
        raise ConfigError(f"--parity-images must be at least 1, got {parity_images}")
    if fmt == "onnx":  # written with onnxscript, checked with onnx, loaded back in onnxruntime
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module, "export", "kiln export --format onnx")
    run = RunDir.open(run_dir)
    if run.data_info().features:
        raise ConfigError(
            f"{run.path} learned from table rows: kiln export and kiln serve take image models; "
            "predict on a CSV of rows with `kiln predict RUN rows.csv`"
        )
    if embed_preprocessing:
        from kiln.deploy.embed import export_embedded

        if quantize:
            raise ConfigError(
                "--embed-preprocessing writes a float graph: drop --quantize, or export an int8 "
                "model without --embed-preprocessing"
            )
        return export_embedded(run, fmt, output, which, parity_images, log, input_size)
    if input_size is not None:
        raise ConfigError(
            "--input-size is the image size an export with --embed-preprocessing takes; without "
            "it the graph takes the model's own size: add --embed-preprocessing or drop it"
        )
    path = output_path(run, fmt, quantize, output)
    model, spec = model_and_spec(run, fmt, which, path)
    spec.quantize = quantize
    spec.tta_in_graph = fmt != "state_dict"
    n = parity_images if not quantize else max(parity_images, 2048)
    task = get_task(spec.task)
    eager = task.export_module(model, spec.tta).eval()  # what the graph computes
    sample = Sample(*task.export_inputs(run, n, spec))  # inputs as the graph takes them
    log(f"Checking on {len(sample.inputs)} {sample.source}")
    calibrate = None
    if quantize == "static":
        calibrate, calibration.source = task.calibration_inputs(run, calibration.images, spec)
        calibrate = q.whole_batches(calibrate)
        calibration.images_asked, calibration.images = calibration.images, len(calibrate)
        spec.calibration = calibration.to_dict()
        log(f"Calibrating on {len(calibrate)} {calibration.source} ({calibration.method}, "
            f"{'per channel' if calibration.per_channel else 'per tensor'})")  # fmt: skip

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_fp32 = path.with_name(f".{path.name}.{os.getpid()}.fp32.tmp")
    try:
        started = time.perf_counter()
        write = {"onnx": write_onnx, "torchscript": write_torchscript, "state_dict": write_state,
                 "executorch": write_executorch}  # fmt: skip
        write[fmt](eager, sample.inputs[:2], tmp_fp32 if quantize else tmp, spec)
        if quantize:
            try:
                quantize_file(fmt, eager, sample.inputs[:2], tmp_fp32, tmp, spec, calibrate)
            except (KilnError, KeyboardInterrupt):
                raise
            except Exception as exc:  # the quantizers raise many types: all mean "cannot"
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise ExportError(
                    f"int8 {quantize} quantization of model '{spec.model.name}' failed "
                    f"({first}); try another --calibration, or --quantize dynamic"
                ) from None
        log(f"Wrote {fmt}{f' (int8, {quantize})' if quantize else ''} in "
            f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        exported = load_file(tmp, spec, path)
        spec.parity = check_parity(eager, exported, sample, parity_images, quantize is None)
        result = ExportResult(path, sidecar_path(path), spec)
        if quantize:
            fp32 = load_file(tmp_fp32, spec, path)
            result.quantized = compare_quantized(fp32, exported, tmp_fp32, tmp, sample)
        os.replace(tmp, path)
        spec.sha256 = sha256(path)
        spec.write(result.sidecar)
        return result
    finally:
        tmp.unlink(missing_ok=True)
        tmp_fp32.unlink(missing_ok=True)


def model_and_spec(run: RunDir, fmt: str, which: str, path: Path) -> tuple[nn.Module, ExportSpec]:
    """Checkpoint `which` loaded on the CPU, and the sidecar for its export to `path`, with the
    checkpoint's hash taken before the model is loaded: a checkpoint replaced meanwhile makes
    the export look older than it is, never newer."""
    file = run.checkpoint(which)
    digest = sha256(file) if file.is_file() else None  # missing: load_model says so in one line
    model, epoch = load_model(run, which, "cpu")
    spec = spec_from_run(run, fmt, which, epoch, file=path.name)
    spec.model.checkpoint_sha256 = digest
    return model, spec


def check_options(fmt: str, quantize: str | None) -> None:
    """The format and the int8 method go together (one line when they do not)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE)}, got '{quantize}'")
    if quantize and fmt == "state_dict":
        raise ConfigError(
            "--quantize needs --format onnx, torchscript or executorch: int8 weights cannot be "
            "loaded back into the plain model a state_dict export rebuilds"
        )
    if quantize == "static" and fmt == "torchscript":
        raise ConfigError(
            "--quantize static writes ONNX (ONNX Runtime's QDQ int8) or ExecuTorch (XNNPACK "
            "int8): use --format onnx or --format executorch, or --quantize dynamic"
        )
    if quantize == "dynamic" and fmt == "executorch":
        raise ConfigError(
            "an ExecuTorch program's int8 is calibrated (XNNPACK runs static int8): use "
            "--quantize static with --format executorch"
        )


def output_path(
    run: RunDir, fmt: str, quantize: str | None, output: str | Path | None, stem: str = "model"
) -> Path:
    """-o FILE, -o FOLDER (existing, ending in /, or without a suffix), or RUN/exports/."""
    name = f"{stem}{NAMES[quantize]}{SUFFIXES[fmt]}"
    if output is None:
        return run.path / "exports" / name
    out = Path(output)
    if out.is_dir() or str(output).endswith(("/", os.sep)) or not out.suffix:
        return out / name
    if not out.name.endswith(SUFFIXES[fmt]):
        raise ConfigError(f"-o {output}: a {fmt} export's file name must end in {SUFFIXES[fmt]}")
    return out


# Writers ------------------------------------------------------------------------------------------


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, spec: ExportSpec) -> None:
    """torch.export-based exporter, batch dimension dynamic, checked by onnx.checker."""
    import onnx

    big = sum(p.numel() * p.element_size() for p in module.parameters()) > 1.5 * 2**30
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[spec.input.name],
                output_names=[spec.output.get("name", "logits")],
                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
                dynamo=True,
                verbose=False,
            )
        program.save(str(path), external_data=big)
    except Exception as exc:  # the exporter raises many types; all mean "cannot export this model"
        first = first_line(exc)
        raise ExportError(
            f"ONNX export of model '{spec.model.name}' failed ({first}); "
            "try --format torchscript or --format state_dict"
        ) from None
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the ONNX file fails onnx.checker: {exc}") from None


def write_torchscript(module: nn.Module, example: torch.Tensor, path: Path, spec) -> None:
    """Traced; PyTorch deprecates TorchScript, but libtorch (C++) still runs it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(
            f"TorchScript export of model '{spec.model.name}' failed ({first}); "
            "try --format onnx or --format state_dict"
        ) from None


def write_state(module: nn.Module, example: torch.Tensor, path: Path, spec) -> None:
    """The model's own state_dict and nothing else, as the tutorials save one, so that
    `model.load_state_dict(torch.load(path, weights_only=True))` loads it; what it is and how
    to rebuild it are in the sidecar (its config)."""
    state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    torch.save(state, path)  # `path` is a temporary file, renamed once checked


def write_executorch(module: nn.Module, example: torch.Tensor, path: Path, spec) -> None:
    """An ExecuTorch program (.pte) for phones and boards, delegated to XNNPACK."""
    from kiln.deploy.executorch import write_program

    write_program(module, example, path, spec)


def quantize_file(fmt: str, module: nn.Module, example, fp32: Path, out: Path, spec,
                  calibrate: torch.Tensor | None = None) -> None:  # fmt: skip
    """The int8 file, from the fp32 one just written (ONNX) or from the module: dynamic, or
    static with its activation ranges measured on `calibrate`."""
    if spec.quantize == "static" and fmt == "executorch":
        from kiln.deploy.executorch import write_program

        write_program(module, example, out, spec, calibrate=calibrate)
    elif spec.quantize == "static":
        q.onnx_static(fp32, out, calibrate, spec.input.name, Calibration(**spec.calibration))
    elif fmt == "onnx":
        q.onnx_dynamic(fp32, out)
    else:
        write_torchscript(q.torchscript_dynamic(module), example, out, spec)


def load_file(path: Path, spec: ExportSpec, final: Path | None = None) -> Predictor:
    """The file just written (`path`, a temporary name for `final`), opened as a user would."""
    try:
        return open_export(path, spec)
    except RunError as exc:
        message = str(exc).replace(str(path), str(final or path))
        raise ExportError(
            f"the written file does not load back ({message}); nothing was written: export "
            "without --quantize, or to another --format"
        ) from None


# Checks -------------------------------------------------------------------------------------------


def check_parity(
    eager: nn.Module, exported: Predictor, sample: Sample, n: int, gate: bool
) -> Parity:
    """Largest output difference over n inputs, in batches of 64 and one alone (batch sizes the
    graph was not traced with), against the eager model."""
    x = sample.inputs[:n]
    with torch.inference_mode():
        ref = eager(x).float()
    got = torch.cat([exported.logits(x[i : i + 64]) for i in range(0, len(x), 64)])
    single = exported.logits(x[:1])
    diff = max((got - ref).abs().max().item(), (single - ref[:1]).abs().max().item())
    agree = exported.task.agreement(ref, got)  # class scores: the top-1 answers must agree
    parity = Parity(
        images=len(x), source=sample.source, max_abs_logit_diff=diff,
        tolerance=TOLERANCE if gate else None, top1_agreement=agree,
    )  # fmt: skip
    if gate and not diff <= TOLERANCE:
        raise ExportError(
            f"the {exported.spec.format} export disagrees with the eager model: largest logit "
            f"difference {diff:.3g} > {TOLERANCE:g} on {len(x)} {sample.source}; "
            "nothing was written. Try another --format, and report the model if it persists"
        )
    return parity


def compare_quantized(
    fp32: Predictor, int8: Predictor, fp32_file: Path, int8_file: Path, sample
) -> dict[str, Any]:
    """Size, batch-1 latency and accuracy of the int8 file against the fp32 one, same runtime."""
    x = sample.inputs
    report: dict[str, Any] = {
        "fp32_bytes": fp32_file.stat().st_size,
        "int8_bytes": int8_file.stat().st_size,
        "fp32_latency_ms": latency_ms(fp32, x[:1]),
        "int8_latency_ms": latency_ms(int8, x[:1]),
        "images": len(x),
    }
    if sample.labels is not None:
        for name, s in (("fp32", fp32), ("int8", int8)):
            outputs = torch.cat([s.logits(x[i : i + 256]) for i in range(0, len(x), 256)])
            accuracy = s.task.accuracy(outputs, sample.labels)  # None: the task has none
            if accuracy is not None:
                report[f"{name}_accuracy"] = accuracy
    return report


def latency_ms(servable: Predictor, x: torch.Tensor, seconds: float = 1.0) -> float:
    """Median wall time of one call, over at least 20 calls or `seconds`."""
    for _ in range(3):
        servable.logits(x)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 20 or time.perf_counter() < deadline:
        t = time.perf_counter()
        servable.logits(x)
        times.append(time.perf_counter() - t)
        if len(times) >= 2000:
            break
    return sorted(times)[len(times) // 2] * 1000
