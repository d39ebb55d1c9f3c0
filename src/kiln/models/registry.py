"""Model registry: a model is one builder function with one decorator, as in timm.

A builder takes the dataset's DataInfo (channels, size, classes) first and the model's own options
as keyword arguments; `model.<option>` in the config sets them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from kiln.config import did_you_mean
from kiln.data.registry import DataInfo
from kiln.errors import ConfigError

Builder = Callable[..., nn.Module]


@dataclass
class ModelEntry:
    name: str
    builder: Builder
    description: str

    def options(self) -> dict[str, Any]:
        params = list(inspect.signature(self.builder).parameters.values())[1:]
        return {p.name: p.default for p in params}


MODELS: dict[str, ModelEntry] = {}
# Families named by prefix (`tv:resnet50`, `timm:convnext_tiny`): a function from the rest of the
# name to an entry, so thousands of models need no registration.
FAMILIES: dict[str, Callable[[str], ModelEntry]] = {}


def register_model(name: str | None = None, description: str = "") -> Callable[[Builder], Builder]:
    """`@register_model("mlp")` makes `builder(info, **options)` usable as `model.name=mlp`."""

    def wrap(fn: Builder) -> Builder:
        key = name or fn.__name__
        doc = description or (fn.__doc__ or "").strip().splitlines()[0]
        MODELS[key] = ModelEntry(key, fn, doc)
        return fn

    return wrap


def register_family(prefix: str) -> Callable[[Callable[[str], ModelEntry]], Any]:
    """`@register_family("tv")` makes `model.name=tv:NAME` resolve through `fn(NAME)`."""

    def wrap(fn: Callable[[str], ModelEntry]) -> Callable[[str], ModelEntry]:
        FAMILIES[prefix] = fn
        return fn

    return wrap


def get_model(name: str) -> ModelEntry:
    prefix, sep, rest = name.partition(":")
    if sep and prefix in FAMILIES:
        return FAMILIES[prefix](rest)
    if name not in MODELS:
        families = ", ".join(f"{p}:NAME" for p in FAMILIES)
        raise ConfigError(
            f"model.name: unknown model '{name}'{did_you_mean(name, MODELS)}; "
            f"available: {', '.join(sorted(MODELS))}"
            + (f", or {families} (see `kiln list models`)" if families else "")
        )
    return MODELS[name]


def check_options(name: str, options: dict[str, Any]) -> None:
    """Fail before any data is read when a `model.<option>` does not exist for this model."""
    valid = get_model(name).options()
    for key in options:
        if key not in valid:
            listing = ", ".join(valid) or "(none)"
            raise ConfigError(
                f"model.{key}: '{name}' has no option '{key}'; its options: {listing}"
            )


def create_model(name: str, info: DataInfo, **options: Any) -> nn.Module:
    check_options(name, options)
    try:
        return get_model(name).builder(info, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model '{name}': {exc}") from None
