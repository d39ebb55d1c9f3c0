"""Transfer learning: start from other weights, rebuild the head, freeze and unfreeze the backbone.

The head is the last linear layer (resnet.fc, classifier[-1], ...): it maps features to classes,
so it is what must be rebuilt when the classes change. Everything before it is the backbone.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kiln.errors import ConfigError

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d layer to fit to the image channels")


def head_of(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last linear layer, by registration order (which is forward order in the zoo)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(
            f"{type(model).__name__} has no linear layer: Kiln cannot tell its head (the layer "
            "that outputs the classes) from its backbone"
        )
    return found[-1]


def replace_head(model: nn.Module, num_classes: int) -> None:
    name, head = head_of(model)
    if head.out_features != num_classes:
        model.set_submodule(
            name, nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
        )


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (or unfreeze) all but the head. Normalization layers stay trainable, as in fastai:
    their statistics must follow the new data even while the filters are kept."""
    head, _ = head_of(model)
    for name, module in model.named_modules():
        is_head = name == head or name.startswith(head + ".")
        for p in module.parameters(recurse=False):
            p.requires_grad_(trainable or is_head or isinstance(module, NORMS))


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(head_of(model)[1].parameters())


# Weights from a file -----------------------------------------------------------------------------
@dataclass
class WeightsReport:
    source: str
    loaded: int
    total: int
    reshaped: list[str] = field(default_factory=list)  # same name, other shape: kept fresh
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"Loaded {self.loaded} of {self.total} weight tensors from {self.source}"]
        if self.reshaped:
            lines.append(f"  other shape, trained from scratch: {_short(self.reshaped)}")
        if self.missing:
            lines.append(f"  missing from the file, trained from scratch: {_short(self.missing)}")
        if self.unexpected:
            lines.append(f"  in the file but not in this model, ignored: {_short(self.unexpected)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _short(names: list[str], n: int = 6) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a Kiln run or checkpoint, or a plain `torch.save(model.state_dict())`."""
    where = Path(path).expanduser()
    if where.is_dir():
        if not (where / "checkpoints" / "best.pt").is_file():
            raise ConfigError(f"model.weights: {where} is a folder but not a Kiln run (no best.pt)")
        where = where / "checkpoints" / "best.pt"
    if not where.is_file():
        raise ConfigError(f"model.weights: {where} does not exist")
    try:
        obj = torch.load(where, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc).upper():  # weights_only refused a class: pickled code
            raise ConfigError(
                f"model.weights: {where} holds pickled Python objects, not just tensors; Kiln "
                "never unpickles code. Save the weights with torch.save(model.state_dict(), PATH)"
            ) from None
        raise ConfigError(f"model.weights: {where} is not a PyTorch weights file") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise ConfigError(
            f"model.weights: {where} is not a PyTorch weights file, or it is truncated ({exc})"
        ) from None
    for key in ("model", "state_dict"):  # a Kiln or Lightning checkpoint
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"model.weights: {where} is not a state dict (names -> tensors)")
    return {_strip(k): v for k, v in obj.items()}


def _strip(key: str) -> str:
    """Names as saved by DistributedDataParallel or torch.compile name the same tensors."""
    for prefix in ("module.", "_orig_mod."):
        key = key.removeprefix(prefix)
    return key


def load_weights(model: nn.Module, path: str | Path) -> WeightsReport:
    """Load every tensor whose name and shape fit; the rest (e.g. a head for other classes) keeps
    its fresh initialisation, and the report says which."""
    state = read_state_dict(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise ConfigError(
            f"model.weights: none of the {len(state)} tensors in {path} fit this model. The file "
            f"has {_short(list(state), 3)}; the model has {_short(list(own), 3)}. Is it the "
            "weights of the same model.name with the same options?"
        )
    model.load_state_dict(fits, strict=False)
    return WeightsReport(
        source=str(path),
        loaded=len(fits),
        total=len(own),
        reshaped=[k for k in state if k in own and k not in fits],
        missing=[k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],
    )
