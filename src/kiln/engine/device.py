"""Device, precision and determinism settings, chosen once before training."""

from __future__ import annotations

import contextlib
import os

import torch

from kiln.data.workers import cpu_count
from kiln.errors import ConfigError
from kiln.process import is_command

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}, but no CUDA device is available; use cpu or auto")
    if name.startswith("mps") and not torch.backends.mps.is_available():
        raise ConfigError("train.device=mps, but MPS is not available here; use cpu or auto")
    return torch.device(name)


def flush_denormals(setting: str | bool) -> None:
    """train.flush_denormal: CPU numbers below about 1e-38 (denormals) computed as zero. Adam's
    moving average of a weight whose gradient is zero (a ReLU unit that stopped firing) shrinks
    by a constant factor every step and is denormal after several hundred steps; x86 CPUs compute
    on denormals many times slower (the FashionMNIST MLP's epochs: 1.8 s each with it, 1.8 s
    growing to 2.5 s by the fourth without). Set before any parallel work: torch's worker threads
    take the mode of the thread that starts them, and keep it. The mode is process-wide and
    outlives the run, so `auto` sets it only in the kiln command's own process (kiln/process.py);
    true or false set it wherever Kiln runs."""
    if setting == "auto":
        if not is_command():
            return  # the user's process: their mode, as they left it
        setting = True
    torch.set_flush_denormal(bool(setting))  # False where the CPU cannot: nothing to do then


def set_threads() -> int:
    """One intra-op thread per available core (torch's default counts the machine's cores, which
    oversubscribes a container that may use fewer), shared among the processes torchrun started
    on this machine (LOCAL_WORLD_SIZE)."""
    threads = max(1, cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def settle(train: dict, device: torch.device, model: torch.nn.Module) -> dict:
    """Replace `auto` in train.precision / compile / channels_last with what wins on `device`.

    Measured (benchmarks/cpu_options.py, benchmarks/README.md): on a CPU without native bf16,
    bf16 autocast trains about 10x slower and torch.compile spends 15-40 s compiling to gain less
    than channels_last does alone, while channels_last speeds small CNNs up about 1.5x. On an
    H100 the compiled small models stepped slower than eager ones after 7-24 s of compiling, so
    compile stays opt-in (train.compile=true) everywhere.
    """
    train = dict(train)
    cuda = device.type == "cuda"
    if train["precision"] == "auto":
        train["precision"] = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if train["compile"] == "auto":
        train["compile"] = False
    if train["channels_last"] == "auto":
        convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        train["channels_last"] = convolutional and device.type in ("cpu", "cuda")
    return train


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 needs a GPU; on the CPU use bf16 or fp32")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision in ("fp32", "auto"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
