"""Where the training data lives: decoded in memory (on the training device when it fits) and
batched by index, or decoded per sample by DataLoader workers. Decided once, said in one line.

`data.memory`:
  auto     in memory when the decoded uint8 images take at most a quarter of the free RAM, and on
           a GPU, at most half of its free memory (else they stay in RAM and each batch is copied)
  true     always in memory; false: always the DataLoader
  "2GB"    in memory up to this many bytes (also "500MB", "1.5G"), on the training device
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from kiln.config import parse_size

RAM_FRACTION = 0.25  # of the free RAM, for data.memory=auto
DEVICE_FRACTION = 0.5  # of a GPU's free memory, for data.memory=auto
NORMALIZED_LIMIT = 512 * 2**20  # the largest float32 copy of a split kept normalized in advance


@dataclass
class Placement:
    in_memory: bool  # batches are taken by index from a uint8 tensor
    store: torch.device  # where that tensor lives (the training device, or the CPU)
    reason: str  # the log line's "why"


def free_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**31


def free_device_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None  # CPU (RAM is counted separately) or a device that does not say


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def decoded_bytes(splits) -> int:
    """Bytes of the splits once decoded (in memory already, or as uint8 files)."""
    total = 0
    for s in splits:
        if hasattr(s, "images"):
            total += s.images.numel() * s.images.element_size()  # float tables: 4 bytes each
        else:
            total += len(s) * s.channels * s.height * s.width
    return total


def place(memory: str | bool, splits, device: torch.device) -> Placement:
    """Decide the path for `splits` (all of a run's splits) trained on `device`."""
    cpu = torch.device("cpu")
    needed = decoded_bytes(splits)
    size = f"{human(needed)} decoded"
    if memory is False:
        return Placement(False, cpu, "data.memory=false")
    if memory is True:
        return Placement(True, device, f"data.memory=true ({size})")
    if memory != "auto":
        budget = parse_size(memory)
        if needed > budget:
            return Placement(False, cpu, f"{size} > data.memory={memory}")
        return Placement(True, device, f"{size} <= data.memory={memory}")
    ram = RAM_FRACTION * free_ram()
    if needed > ram:
        return Placement(
            False,
            cpu,
            f"{size} > {human(ram)} (data.memory=auto: {RAM_FRACTION:.0%} of free RAM; "
            "set data.memory=SIZE to allow more)",
        )
    on_device = free_device_memory(device)
    if on_device is not None and needed > DEVICE_FRACTION * on_device:
        return Placement(
            True,
            cpu,
            f"{size} > {human(DEVICE_FRACTION * on_device)} ({DEVICE_FRACTION:.0%} of free "
            f"{device.type} memory): kept in RAM, each batch copied",
        )
    return Placement(True, device, f"{size} fits the budget (data.memory=auto)")


def fits_normalized(images: torch.Tensor) -> bool:
    """Whether a float32 copy of `images` (where they are) is small enough to keep normalized in
    advance: at most NORMALIZED_LIMIT, a quarter of the free RAM, or half of a GPU's free memory.
    Then each batch is one index, as in the compute bound, instead of three more ops per batch."""
    needed = images.numel() * 4
    free = free_device_memory(images.device)
    room = DEVICE_FRACTION * free if free is not None else RAM_FRACTION * free_ram()
    return needed <= min(NORMALIZED_LIMIT, room)
