"""Per-channel mean and std of a training split, computed once and cached for file splits."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from kiln.data.registry import default_root
from kiln.io import write_text_atomic


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) or volumes (N, C, D, H, W) in
    [0, 1] units (float tables and volumes: their own units), in chunks to bound memory."""
    others = [d for d in range(images.dim()) if d != 1]  # every axis but the channels'
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros(images.shape[1], dtype=torch.float64)
    for begin in range(0, len(images), chunk):
        x = images[begin : begin + chunk].to(torch.float64)
        if images.dtype == torch.uint8:
            x.div_(255.0)
        total += x.sum(dim=others)
        total_sq += x.pow_(2).sum(dim=others)
    count = images.numel() // images.shape[1]
    return _finish(total, total_sq, count)


def _finish(total, total_sq, count) -> tuple[list[float], list[float]]:
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def file_stats(split, workers: int) -> tuple[list[float], list[float]]:
    """Mean/std of a FileSplit, decoded in workers; cached by files, mtimes and preprocessing."""
    key = hashlib.sha256()
    key.update(f"{split.channels}x{split.height}x{split.width}".encode())
    for path in split.paths:
        st = os.stat(path)
        key.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache = (
        Path(os.environ.get("KILN_CACHE", default_root().parent))
        / "stats"
        / f"{key.hexdigest()[:32]}.json"
    )
    if cache.is_file():
        saved = json.loads(cache.read_text())
        return saved["mean"], saved["std"]
    from kiln.data.files import WorkerLoader
    from kiln.data.memory import Normalize

    identity = Normalize([0.0] * split.channels, [1 / 255] * split.channels, "cpu")  # keeps 0..255
    loader = WorkerLoader(split, 256, identity, workers=workers)
    total = torch.zeros(split.channels, dtype=torch.float64)
    total_sq = torch.zeros(split.channels, dtype=torch.float64)
    for x, _ in loader:
        x = x.to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.pow_(2).sum(dim=(0, 2, 3))
    mean, std = _finish(total, total_sq, len(split) * split.height * split.width)
    write_text_atomic(cache, json.dumps({"mean": mean, "std": std}))
    return mean, std
