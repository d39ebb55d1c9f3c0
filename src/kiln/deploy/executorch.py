"""`kiln export --format executorch`: an ExecuTorch program (.pte) for phones and boards.

The model is captured with torch.export (batch size dynamic up to MAX_BATCH), lowered to the
XNNPACK delegate (the CPU backend ExecuTorch ships for ARM and x86) and serialized; int8 is
static: the XNNPACK quantizer's observers measure the activations on the run's own training
images (--quantize static), then the program is lowered the same way. The file is checked like
every export, by ExecuTorch's own Python runtime (kiln/infer/backends.py).

ExecuTorch is an optional dependency: `pip install 'kiln[executorch]'` (executorch 1.5.1, the
release built for torch 2.14.1).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from kiln.errors import ConfigError, first_line

MAX_BATCH = 64  # the largest batch the program takes in one call; the runtime splits bigger ones
INSTALL = "pip install 'executorch==1.5.1' (the ExecuTorch release for torch 2.14.1)"


def require() -> None:
    """One line naming what to install when ExecuTorch is missing or broken."""
    # torchao (ExecuTorch's quantizer) warns about torch's own API on import: not the user's
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"--format executorch needs ExecuTorch, which cannot be imported here ({exc}): "
            f"{INSTALL}"
        ) from None


def write_program(module: nn.Module, example: torch.Tensor, path: Path, spec,
                  calibrate: torch.Tensor | None = None,
                  max_batch: int = MAX_BATCH) -> None:  # fmt: skip
    """`module` (inputs as the graph takes them) as a .pte with its work delegated to XNNPACK;
    int8 when `calibrate` holds calibration inputs. Batches of 1 to `max_batch`."""
    require()
    from kiln.deploy.export import ExportError

    # The program's buffers are planned for the example's batch: give it the largest one.
    example = example[:1].expand(max_batch, *example.shape[1:]).contiguous()
    shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    kind = "int8 " if calibrate is not None else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = core_aten(torch.export.export(module, (example,), dynamic_shapes=shapes))
            if calibrate is not None:
                per_channel = bool((spec.calibration or {}).get("per_channel", True))
                graph = quantized(program.module(), calibrate, per_channel)
                program = torch.export.export(graph, (example,), dynamic_shapes=shapes)
            buffer = lower(program)
    except Exception as exc:  # torch.export and the lowering raise many types: all mean "cannot"
        first = first_line(exc)
        raise ExportError(
            f"ExecuTorch {kind}export of model '{spec.model.name}' failed ({first}); "
            "try --format onnx"
        ) from None
    path.write_bytes(buffer)


def core_aten(program):
    """Operators outside ATen's core set that ExecuTorch has no kernel for, written in core ones:
    a global max pool (convnet's head) is a max over the flattened pixels."""

    def global_max_pool(x: torch.Tensor, output_size):
        if list(output_size) != [1, 1]:
            raise NotImplementedError("adaptive max pooling to a size other than 1x1")
        values, indices = x.flatten(-2).max(dim=-1, keepdim=True)
        return values.unsqueeze(-1), indices.unsqueeze(-1)

    aten = torch.ops.aten
    return program.run_decompositions({aten.adaptive_max_pool2d.default: global_max_pool})


def quantized(graph: nn.Module, calibrate: torch.Tensor, per_channel: bool) -> nn.Module:
    """PT2E static int8 with the XNNPACK quantizer: observers inserted, calibrated, converted."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=per_channel)
    prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(config))
    with torch.no_grad():
        for begin in range(0, len(calibrate), MAX_BATCH):
            prepared(calibrate[begin : begin + MAX_BATCH])
    return convert_pt2e(prepared)


def lower(program) -> bytes:
    """An exported program -> the bytes of a .pte whose operators XNNPACK runs."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    config = ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass())
    return edge.to_executorch(config).buffer
