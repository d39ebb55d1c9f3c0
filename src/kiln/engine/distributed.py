"""Several processes training one model: torchrun starts them, this module joins them up.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each
process; `setup` joins them into one process group (NCCL between GPUs, gloo on the CPU) and gives
each process its device. The trainer needs only a few small things from here: the model wrapped in
DistributedDataParallel, each process's share of the data, sums over every process, one decision
taken by all, and rank 0 alone writing files. With one process every helper is a no-op.

The choices (README, "Multi-process and multi-node training"):
- data.batch_size is the global batch: each of W processes takes batch_size / W of every batch, so
  the learning rate and the schedule mean the same thing with one process or eight.
- Every process draws the same shuffled order from the shared seed and takes every W-th position
  of it (kiln.data.memory.shard_positions): batch b of the W processes together is batch b of a
  one-process run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from kiln.errors import ConfigError, RunError

T = TypeVar("T")
_control: Any = None  # a gloo group for small CPU messages when the training group is NCCL
_sigterm: Any = None  # the SIGTERM handler before `setup`, back after `teardown`


# Who am I -----------------------------------------------------------------------------------
def under_torchrun() -> bool:
    """Started by torchrun (or another launcher that sets its environment variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that prints, writes the run directory and evaluates the test split."""
    return rank() == 0


def shard() -> tuple[int, int]:
    """(rank, world size): which share of every split this process takes."""
    return rank(), world_size()


def requested_devices(devices: int | str) -> int:
    """train.devices -> a number of processes; auto: one per GPU, one without a GPU."""
    if devices == "auto":
        return max(torch.cuda.device_count(), 1)
    return int(devices)


def per_rank_batch(batch_size: int, world: int | None = None) -> int:
    """The share of the global batch (data.batch_size) that each process steps on."""
    world = world or world_size()
    if batch_size % world:
        near = max(world, round(batch_size / world) * world)
        raise ConfigError(
            f"data.batch_size={batch_size} does not split evenly over {world} processes: set "
            f"data.batch_size to a multiple of {world} (e.g. {near}). It is the global batch; "
            f"each process takes data.batch_size / {world} of every batch"
        )
    return batch_size // world


# Joining and leaving --------------------------------------------------------------------------
def setup(device: torch.device, timeout_s: float) -> torch.device:
    """Join torchrun's process group when there is one (several processes), and return this
    process's device: cuda:LOCAL_RANK on GPUs, the CPU otherwise. A collective that waits longer
    than `timeout_s` (train.dist_timeout) fails instead of hanging."""
    global _control, _sigterm
    world = int(os.environ.get("WORLD_SIZE", "1")) if under_torchrun() else 1
    if world == 1 or (dist.is_available() and dist.is_initialized()):
        return device
    local = int(os.environ["LOCAL_RANK"])
    if device.type == "mps":
        raise ConfigError("train.device=mps: several processes need cuda or cpu (gloo)")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"{os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this machine but only "
                f"{torch.cuda.device_count()} GPU(s): set --nproc-per-node (or train.devices) to "
                "at most the number of GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(backend, timeout=timeout)
    if threading.current_thread() is threading.main_thread():
        _sigterm = signal.signal(signal.SIGTERM, _stopped_by_launcher)
    if backend == "nccl":  # the stop flag and RNG states travel on the CPU, never syncing the GPU
        _control = dist.new_group(backend="gloo", timeout=timeout)
    return device


def _stopped_by_launcher(signum: int, frame: Any) -> None:
    """torchrun stops the other processes when one fails: each says so, in one line."""
    print(
        f"rank {rank()} of {world_size()}: stopped by torchrun (SIGTERM) because another process "
        "of this job failed or the job was stopped; torchrun's summary names the process",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(128 + signum)


def teardown() -> None:
    """Leave the process group: what follows (the test evaluation, the report) is rank 0's."""
    global _control, _sigterm
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if _sigterm is not None:
        signal.signal(signal.SIGTERM, _sigterm)
    _control = _sigterm = None


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the model when several processes train: gradients are
    averaged across them in backward. Buffers (BatchNorm statistics) start as rank 0's, stay each
    process's own while training and are taken from rank 0 before every evaluation
    (`broadcast_buffers`), rather than broadcast before every step."""
    if world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


# Talking to each other ------------------------------------------------------------------------
def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across(*values: Any) -> tuple[Any, ...]:
    """Each value (a tensor of any shape, e.g. a task's vector of score sums, or a number) summed
    over every process, returned as the same kind on the same device."""
    if world_size() == 1:
        return values
    summed = []
    for value in values:
        is_tensor = isinstance(value, torch.Tensor)
        t = value.detach() if is_tensor else torch.tensor(value, dtype=torch.float64)
        t = t.to(_comm_device(), copy=True)
        dist.all_reduce(t)
        summed.append(t.to(value.device) if is_tensor else type(value)(t.item()))
    return tuple(summed)


def any_rank(flag: bool) -> bool:
    """True on every process when it is True on any: a Ctrl-C one process saw stops them all
    at the same step."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return bool(t.item())


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Every process takes rank 0's buffers (BatchNorm running statistics), so that what each
    evaluates is exactly the model rank 0 saves."""
    if world_size() == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def check_in_step(model: nn.Module, task: str) -> None:
    """After an epoch every process must hold the same weights. They drift apart when a task's
    own train_step updates trainer.model rather than stepping through trainer.net (DDP)."""
    if world_size() == 1:
        return
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    spread = torch.stack([total, -total]).cpu()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX, group=_control)
    high, low = spread[0].item(), -spread[1].item()
    if abs(high - low) > 1e-6 * max(1.0, abs(high)):
        raise RunError(
            f"rank {rank()} of {world_size()}: the processes' weights differ after an epoch: "
            f"task '{task}' updates the model outside trainer.net (DistributedDataParallel), so "
            "its gradients are not averaged. Train it in one process (train.devices=1)"
        )


def on_main(fn: Callable[[], T]) -> T:
    """fn() run on rank 0 alone (creating the run directory); every process gets its result."""
    if world_size() == 1:
        return fn()
    payload: list[Any] = [None]
    error: BaseException | None = None
    if is_main():
        try:
            payload = [("ok", fn())]
        except Exception as exc:  # the other ranks must hear of it, or they wait for the timeout
            error, payload = exc, [("error", str(exc))]
    dist.broadcast_object_list(payload, src=0, group=_control)
    if error is not None:
        raise error
    kind, value = payload[0]
    if kind == "error":
        raise RunError(f"rank {rank()} of {world_size()}: rank 0 stopped: {value}")
    return value


def rank_rng_states() -> list[dict[str, torch.Tensor]] | None:
    """Every process's RNG state (dropout differs per process), for the checkpoint."""
    if world_size() == 1:
        return None
    mine = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine["cuda"] = torch.cuda.get_rng_state()
    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, mine, group=_control)
    return states


def restore_rank_rng(states: list[dict[str, torch.Tensor]] | None, seed: int) -> None:
    """Each process's own RNG back (rank 0's is the checkpoint's main one). Resumed with another
    number of processes, ranks above 0 start fresh streams: the run goes on correctly but is not
    bitwise the run it would have been."""
    r = rank()
    if r == 0:
        return
    if states is not None and len(states) == world_size():
        torch.set_rng_state(states[r]["torch"])
        if "cuda" in states[r] and torch.cuda.is_available():
            torch.cuda.set_rng_state(states[r]["cuda"])
    else:
        torch.manual_seed(seed + r)


@contextmanager
def peer_failures(timeout_s: float) -> Iterator[None]:
    """A collective that fails because another process died or stopped answering becomes one
    clear error (and a non-zero exit) instead of a hang or a backend traceback."""
    try:
        yield
    except (dist.DistError, RuntimeError) as exc:
        if world_size() == 1 or not _lost_contact(exc):
            raise
        r, w = rank(), world_size()
        who = f"rank {1 - r} of 2" if w == 2 else f"another of the {w} processes"
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"rank {r} of {w}: {who} stopped or stopped answering ({detail}). Its own error, if "
            f"it printed one, is above, and torchrun's summary names it; a process that hangs "
            f"fails after train.dist_timeout={timeout_s:g}s. checkpoints/last.pt holds the last "
            "finished epoch: continue with kiln train --resume RUN_DIR"
        ) from None


def _lost_contact(exc: BaseException) -> bool:
    """A backend's error about the others (gloo raises plain RuntimeErrors: "Connection reset by
    peer", "Timed out waiting ..."), not one of this process's own."""
    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection", "timed out")
    )


# Launching -----------------------------------------------------------------------------------
def launch(processes: int, argv: list[str]) -> int:
    """`kiln train ... train.devices=N`: the same command again under torchrun, N processes on
    this machine (--standalone picks a free port). Returns torchrun's exit code."""
    from kiln.data.workers import cpu_count

    cmd = [
        *(sys.executable, "-m", "kiln.engine.torchrun", "--standalone"),
        *(f"--nproc-per-node={processes}", "-m", "kiln", *argv),
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // processes)))
    shown = " ".join(["torchrun", *cmd[3:]])
    print(f"Starting {processes} processes: {shown}", flush=True)
    # Ctrl-C reaches torchrun as well, which passes it on to every rank: they stop together at
    # the same step and rank 0 saves it. This process just waits for them. (A Python handler,
    # not SIG_IGN, which torchrun and the ranks would inherit.)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return subprocess.call(cmd, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
