"""Checkpoints: plain tensors and plain data, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from kiln.errors import RunError
from kiln.io import NO_SPACE, DiskFull, atomic_open

FORMAT = 1


def save(state: dict[str, Any], path: Path) -> None:
    """Write to a fresh temporary file in the same folder, then rename (kiln.io.atomic_open): a
    kill or a full disk mid-save leaves the old file intact, never a half-written one."""
    try:
        with atomic_open(path, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
    except RuntimeError as exc:  # torch's zip writer turns a failed write into RuntimeError
        cause = exc.__cause__ or exc.__context__
        if not (isinstance(cause, OSError) and cause.errno in NO_SPACE):
            raise
        raise _disk_full(path, os.strerror(cause.errno)) from None
    except DiskFull:
        raise _disk_full(path, "disk full") from None


def _disk_full(path: Path, reason: str) -> DiskFull:
    run = path.parent.parent
    then = f"resume with `kiln train --resume {run}`" if path.parent.name == "checkpoints" else ""
    return DiskFull(
        f"no space left to write {path} ({reason}); the previous {path.name} is intact. Free "
        f"some space in {path.parent}, then {then or 'try again'}"
    )


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}: the run may not have finished an epoch yet")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc).upper():
            raise RunError(f"checkpoint {path} is corrupt: not a PyTorch checkpoint") from None
        raise RunError(
            f"{path} holds pickled Python objects, not plain tensors and data; Kiln does not "
            "load code from checkpoints. Use a checkpoint written by Kiln"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"checkpoint {path} is truncated or corrupt ({detail}); use the other checkpoint "
            "(--checkpoint best|last) or train again"
        ) from None
    if not isinstance(state, dict) or "model" not in state or state.get("format") != FORMAT:
        raise RunError(f"{path} is not a Kiln checkpoint (no model weights or unknown format)")
    return state


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
