"""A module Kiln did not write runs as written: one trial forward pass before the run starts.

Kiln knows its own models, torchvision's and timm's run on channels-last inputs. A module of the
user's (passed to `kiln.train(model=...)`, registered from `imports:`, or any layer of one) may
not: the PyTorch MNIST example's `x.view(-1, 320)` fails on a channels-last tensor. So such a
module is run once, on two training images normalized as training will, before the run folder
exists: channels-last is kept only when that works (else one line says so and training uses the
default layout), and an exception raised inside its `forward` becomes one KilnError naming the
module, the input shape it got, the line that failed and what to try.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import torch
from torch import nn

from kiln.data import DataBundle, Normalize
from kiln.engine.device import autocast
from kiln.errors import ConfigError, KilnError, first_line

log = logging.getLogger("kiln.engine")

LIBRARIES = ("torch", "torchvision", "timm", "kiln")  # their modules run on channels-last inputs
TRIAL_IMAGES = 2


def own_classes(model: nn.Module) -> list[str]:
    """The classes among the model's modules that a library did not write (the user's)."""
    names = []
    for module in model.modules():
        cls = type(module)
        if cls.__module__.split(".")[0] not in LIBRARIES and cls.__qualname__ not in names:
            names.append(cls.__qualname__)
    return names


def check_user_model(
    model: nn.Module,
    bundle: DataBundle,
    device: torch.device,
    train: dict,
    task,
    passed_in: bool,
    explicit: bool = False,
) -> dict:
    """`train` (the settled train section) with channels_last as the module allows; raises a
    KilnError when the module fails on the training inputs. `passed_in`: the module came from
    `kiln.train(model=...)`; `explicit`: train.channels_last=true was asked for, not auto.
    Modules Kiln knows are not run."""
    if not passed_in and not own_classes(model):
        return train
    precision = train["precision"]
    if train["channels_last"]:
        on_channels_last = trial(model, bundle, device, precision, task, channels_last=True)
        if on_channels_last is None:
            return train
    error = trial(model, bundle, device, precision, task, channels_last=False)
    if error is not None:
        raise KilnError(f"{describe(model, error)}. {advice(bundle)}")
    if not train["channels_last"]:
        return train
    if explicit:  # it runs, but not on channels-last inputs
        raise ConfigError(
            f"train.channels_last=true: {describe(model, on_channels_last)}; it runs in the "
            "default memory format: set train.channels_last=false (or auto)"
        )
    where = user_frame(on_channels_last)
    log.info(
        f"note: {type(model).__qualname__} does not run on channels-last inputs "
        f"({f'{where}: ' if where else ''}{first_line(on_channels_last)}): training in the "
        "default memory format (train.channels_last=false)"
    )
    return {**train, "channels_last": False}


def trial(
    model: nn.Module,
    bundle: DataBundle,
    device: torch.device,
    precision: str,
    task,
    channels_last: bool,
) -> Exception | None:
    """Run the module once on two training images (no gradients, the RNG untouched); the
    exception it raises, if any, or the task's objection to its outputs."""
    info = bundle.info
    images = bundle.train.head(TRIAL_IMAGES).to(device)
    x = Normalize(info.mean, info.std, device, channels_last)(images)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        model.to(device, memory_format=fmt)
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            with autocast(precision, device):
                outputs = model(x)
        task.check_outputs(outputs, len(images), info, type(model).__qualname__)
    except KilnError:
        raise
    except Exception as exc:  # whatever the user's forward raises
        exc.trial_shape = tuple(x.shape)  # type: ignore[attr-defined]
        return exc
    finally:
        model.train(was_training)
        model.to(memory_format=torch.contiguous_format)
    return None


def describe(model: nn.Module, error: Exception) -> str:
    """`Net.forward failed on input (2, 1, 8, 8) at net.py:14 (x = x.view(-1, 320)): ...`"""
    shape = getattr(error, "trial_shape", None)
    where = user_frame(error)
    at = f" at {where}" if where else ""
    return (
        f"{type(model).__qualname__}.forward failed on an input of shape {shape}{at}: "
        f"{type(error).__name__}: {first_line(error)}"
    )


def advice(bundle: DataBundle) -> str:
    info = bundle.info
    c, *size = info.input_shape
    shown = "x".join(map(str, size))
    return (
        f"Kiln feeds it batches of shape (N, {', '.join(map(str, info.input_shape))}): make its "
        f"first layer take {c} channel(s) and its sizes after flattening fit {shown} images, or "
        "set data.channels and data.size to the images it was written for (e.g. data.size=28 "
        "for the MNIST tutorials' modules)"
    )


def user_frame(error: BaseException) -> str | None:
    """file:line (the code) of the innermost frame outside torch, Kiln and installed packages:
    the user's line."""
    libraries = [Path(__file__).resolve().parents[1], Path(torch.__file__).parent]  # kiln, torch
    found = None
    for frame in traceback.extract_tb(error.__traceback__):
        path = Path(frame.filename)
        inside = any(path.is_relative_to(lib) for lib in libraries)
        if inside or "site-packages" in path.parts or frame.filename.startswith("<"):
            continue
        code = f" ({frame.line.strip()})" if frame.line else ""
        found = f"{Path(frame.filename).name}:{frame.lineno}{code}"
    return found
