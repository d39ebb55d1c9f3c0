"""`build_model(cfg.model, info)`: the registered model, initialised, with any starting weights."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kiln.config import ModelConfig
from kiln.data.registry import DataInfo
from kiln.errors import ConfigError, RunError
from kiln.models.init import init_weights
from kiln.models.registry import create_model
from kiln.models.resize import resize_layers
from kiln.models.transfer import WeightsReport, head_of, load_weights, set_backbone_trainable


@dataclass
class Built:
    model: nn.Module
    weights: WeightsReport | None = None


def build_model(cfg: ModelConfig, info: DataInfo, *, load: bool = True) -> Built:
    """`load=False` builds the same network without fetching weights: for resuming, evaluating or
    predicting, where a checkpoint supplies them."""
    options = cfg.kwargs()
    pretrained = bool(options.get("pretrained"))
    if not load and pretrained:
        options["pretrained"] = False
    model = create_model(cfg.name, info, **options)
    if cfg.layer_sizes:  # a structurally pruned model (kiln prune --structured channels)
        resize_layers(model, cfg.layer_sizes)
    return prepare_model(model, cfg, pretrained=pretrained and load, load=load)


def prepare_model(
    model: nn.Module, cfg: ModelConfig, *, pretrained: bool = False, load: bool = True
) -> Built:
    """model.init, model.weights and model.freeze, for a zoo model or one passed in Python."""
    if cfg.init != "default":
        # Pretrained filters are the point of pretraining: only the new head is initialised.
        init_weights(head_of(model)[1] if pretrained else model, cfg.init)
    report = load_weights(model, cfg.weights) if cfg.weights and load else None
    if cfg.freeze == "backbone":
        set_backbone_trainable(model, False)
    return Built(model, report)


def import_user_modules(names: list[str]) -> None:
    """Import the modules named in `imports:` of a config the user wrote (`kiln train my.yaml`),
    so their `@kiln.models.register` models exist. The current folder is searched first, as
    `python -m` would. A config found in a run folder or an export goes through
    `import_run_modules` instead."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    _import_all(names)


# Code from data: `imports:` in a run folder's config.yaml or an export's sidecar names modules
# that someone else may have written. Kiln imports them only when told to (--trust-imports,
# trust_imports=True, or `with kiln.trust_imports():`); modules already imported run nothing.
_trusted = False


@contextlib.contextmanager
def trust_imports(trusted: bool = True) -> Iterator[None]:
    """Within this block, the modules that a run folder or export names under `imports:` are
    imported (the current folder is searched last)."""
    global _trusted
    before, _trusted = _trusted, trusted
    try:
        yield
    finally:
        _trusted = before


def import_run_modules(names: list[str], source: str | Path) -> None:
    """`imports:` of a run folder or export (`source` names the file): imported only when
    trusted; otherwise an error that lists them and says how to allow them."""
    new = [name for name in names if name not in sys.modules]
    if not new:
        return
    if not _trusted:
        raise RunError(
            f"{source} asks to import Python code ({', '.join(new)}): Kiln does not run code "
            "found in a run folder or export unless told to. If you trust it, add "
            "--trust-imports (Python: trust_imports=True, or `with kiln.trust_imports():`)"
        )
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # last: never in front of installed packages
    _import_all(names)


def _import_all(names: list[str]) -> None:
    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"imports[{i}]: cannot import '{name}' ({exc}); run kiln from the folder that "
                "holds it, or install your package (pip install -e .)"
            ) from None
