"""Which training options pay off on this machine: bf16 autocast, torch.compile, channels_last.

Times training steps (forward, loss, backward, optimizer step) of Kiln's default small-image
models on random data already in memory, for each option against plain fp32 eager, and prints
samples/s, the ratio to the plain run and, for torch.compile, the seconds its first step took.
Kiln's defaults (train.precision, train.compile, train.channels_last = auto) follow these
figures; `--write-readme` records them in benchmarks/README.md.

    python benchmarks/cpu_options.py [--steps 30] [--device cpu] [--write-readme]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from readme_block import cpu_name, write_block
from torch import nn

from kiln.data.registry import DataInfo
from kiln.models import create_model

CASES = {  # name: (model, options, (channels, size), batch)
    "convnet, MNIST 1x28x28": ("convnet", {}, (1, 28), 128),
    "fastnet, CIFAR 3x32x32": ("fastnet", {"widths": [32, 64, 128]}, (3, 32), 256),
}
VARIANTS = {  # name: (precision, compile, channels_last)
    "fp32": ("fp32", False, False),
    "fp32 channels_last": ("fp32", False, True),
    "bf16 autocast": ("bf16", False, False),
    "bf16 channels_last": ("bf16", False, True),
    "fp32 compile": ("fp32", True, False),
    "fp32 compile channels_last": ("fp32", True, True),
}


def measure(case: str, variant: str, steps: int, device: torch.device) -> tuple[float, float]:
    """(samples/s over `steps` steps after warm-up, seconds of the first step)."""
    model_name, options, (channels, size), batch = CASES[case]
    precision, compiled, channels_last = VARIANTS[variant]
    torch.manual_seed(0)
    info = DataInfo("bench", [str(i) for i in range(10)], channels, size, size, [0.0], [1.0])
    model = create_model(model_name, info, **options).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=device.type in ("cpu", "cuda"))
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, channels, size, size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    cast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )

    def step():
        with cast:
            loss = loss_fn(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - started
    for _ in range(3):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch / (time.perf_counter() - started), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for case in CASES:
        base = None
        for variant in VARIANTS:
            runs = [measure(case, variant, args.steps, device) for _ in range(args.repeats)]
            rate = statistics.median(r[0] for r in runs)
            first = statistics.median(r[1] for r in runs)
            base = base or rate
            rows.append((case, variant, rate, rate / base, first))
            print(
                f"{case:26s} {variant:28s} {rate:9,.0f} samples/s  {rate / base:5.2f}x  "
                f"first step {first:6.2f}s",
                flush=True,
            )
    table = [
        "| model, input | options | samples/s | vs fp32 | first step (s) |",
        "| --- | --- | ---: | ---: | ---: |",
        *(f"| {c} | {v} | {r:,.0f} | {x:.2f}x | {f:.2f} |" for c, v, r, x, f in rows),
    ]
    cpu = cpu_name()
    where = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{cpu}, {torch.get_num_threads()} threads"
    )
    text = (
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/cpu_options.py "
        f"--steps {args.steps} --repeats {args.repeats} --device {args.device}` on {where}, "
        f"torch {torch.__version__}; median of {args.repeats}, batch 128 (convnet) and 256 "
        "(fastnet), random data in memory.\n\n" + "\n".join(table)
    )
    print("\n" + text)
    if args.write_readme:
        write_block(f"cpu-options-{device.type}", text)


if __name__ == "__main__":
    main()
