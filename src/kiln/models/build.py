"""`build_model(cfg.model, info)`: the registered model, initialised, with any starting weights."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from torch import nn

from kiln.config import ModelConfig
from kiln.data.registry import DataInfo
from kiln.errors import ConfigError
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
    """Import the modules named in `imports:` so their `@kiln.models.register` models exist.
    The current folder is searched first, as `python -m` would."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"imports[{i}]: cannot import '{name}' ({exc}); run kiln from the folder that "
                "holds it, or install your package (pip install -e .)"
            ) from None
