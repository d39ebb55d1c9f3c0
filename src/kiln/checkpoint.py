"""Checkpoints: plain tensors and plain data, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from kiln.errors import RunError, first_line
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


def load(
    path: Path, map_location: str | torch.device = "cpu", hint: str | None = None
) -> dict[str, Any]:
    """A Kiln checkpoint, opened with weights_only=True; `hint` says what to do when it cannot
    be read (the default: use the other checkpoint, or train again)."""
    path = Path(path)
    hint = hint or "use the other checkpoint (--checkpoint best|last) or train again"
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}: the run may not have finished an epoch yet")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc).upper():
            raise RunError(
                f"checkpoint {path} is corrupt, not a PyTorch checkpoint; {hint}"
            ) from None
        raise RunError(
            f"{path} holds pickled Python objects, not plain tensors and data; Kiln does not "
            "load code from checkpoints. Use a checkpoint written by Kiln"
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        detail = first_line(exc)
        raise RunError(f"checkpoint {path} is truncated or corrupt ({detail}); {hint}") from None
    if not isinstance(state, dict) or "model" not in state or state.get("format") != FORMAT:
        raise RunError(
            f"{path} is not a Kiln checkpoint (no model weights or unknown format); {hint}"
        )
    return state


# Resuming -------------------------------------------------------------------------------------

# What last.pt holds besides the weights so that a run can go on exactly where it stopped.
RESUME_KEYS = (
    "optimizers",
    "schedulers",
    "scaler",
    "epoch",
    "step",
    "rng",
    "early_stop",
    "history",
)


def restart_hint(run: Path) -> str:
    config = Path(run) / "config.yaml"
    return (
        f"start afresh with `kiln train {config}`, or from the weights it holds with "
        f"`kiln train {config} model.weights=PATH.pt`"
    )


def load_for_resume(run: Path) -> dict[str, Any]:
    """last.pt of an interrupted run, checked to hold everything resuming needs: one line saying
    what is wrong and what to do otherwise (a best.pt copied over it, a file of another kind)."""
    path = Path(run) / "checkpoints" / "last.pt"
    hint = f"it cannot be resumed: {restart_hint(run)}"
    state = load(path, hint=hint.replace("PATH.pt", str(Path(run) / "checkpoints" / "best.pt")))
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise RunError(
            f"{path} holds weights but not the training state a resume needs (no "
            f"{', '.join(missing)}): it looks like a best.pt or an exported file. "
            f"It{hint.replace('PATH.pt', str(path))[2:]}"
        )
    return state


def check_weights(state: dict[str, Any], model: torch.nn.Module, run: Path) -> None:
    """The checkpoint's weights fit the run's model (same layer names and shapes), else one line
    naming the first difference (a last.pt from another run)."""
    path = Path(run) / "checkpoints" / "last.pt"
    saved, expected = state["model"], model.state_dict()
    problems = [f"{k} is missing" for k in expected if k not in saved]
    problems += [f"{k} is not in the run's model" for k in saved if k not in expected]
    problems += [
        f"{k} is {'x'.join(map(str, saved[k].shape)) or 'a scalar'} in the file, "
        f"{'x'.join(map(str, v.shape)) or 'a scalar'} in the run's model"
        for k, v in expected.items()
        if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if problems:
        more = f" (and {len(problems) - 1} more differences)" if len(problems) > 1 else ""
        raise RunError(
            f"{path} does not belong to this run's model: {problems[0]}{more}. It cannot be "
            f"resumed: {restart_hint(run)}"
        )


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
