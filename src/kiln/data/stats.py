"""Per-channel mean and std of a training split, computed once and cached for file splits."""

from __future__ import annotations

import hashlib
import json
import math
import os

import torch

from kiln.data.registry import cache_root
from kiln.io import write_text_atomic


def channel_stats(
    images: torch.Tensor, chunk: int = 4096, rows: torch.Tensor | None = None
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) or volumes (N, C, D, H, W) in
    [0, 1] units (float tables and volumes: their own units), in chunks to bound memory.
    `rows`: of these images only (the rows of the decoded cache that a split holds)."""
    channels, n = images.shape[1], len(images) if rows is None else len(rows)
    count = n * math.prod(images.shape[2:])
    starts = range(0, n, chunk)
    chunks = (slice(b, b + chunk) if rows is None else rows[b : b + chunk] for b in starts)
    if images.dtype == torch.uint8:  # exact, from each channel's histogram: 5x faster than floats
        counts = torch.zeros(channels, 256, dtype=torch.float64)
        for picked in chunks:
            x = images[picked].transpose(0, 1).reshape(channels, -1)
            for c in range(channels):
                counts[c] += torch.bincount(x[c], minlength=256)
        values = torch.arange(256, dtype=torch.float64) / 255.0
        return _finish(counts @ values, counts @ values**2, count)
    others = [d for d in range(images.dim()) if d != 1]  # every axis but the channels'
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for picked in chunks:
        x = images[picked].to(torch.float64)
        total += x.sum(dim=others)
        total_sq += x.pow_(2).sum(dim=others)
    return _finish(total, total_sq, count)


def _finish(total, total_sq, count) -> tuple[list[float], list[float]]:
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def file_stats(split, workers: int) -> tuple[list[float], list[float]]:
    """Mean/std of a FileSplit, decoded in workers; cached by files, mtimes and preprocessing.
    From the decoded cache, read straight from its rows."""
    if split.decoded is not None:
        return channel_stats(split.decoded, rows=split.rows)
    key = hashlib.sha256()
    key.update(f"{split.channels}x{split.height}x{split.width}".encode())
    for path in split.paths:
        st = os.stat(path)
        key.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache = cache_root() / "stats" / f"{key.hexdigest()[:32]}.json"
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
