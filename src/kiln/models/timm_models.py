"""Any timm model by name (`model.name=timm:convnext_tiny`), when the timm extra is installed."""

from __future__ import annotations

import difflib

from torch import nn

from kiln.data.registry import DataInfo
from kiln.errors import ConfigError, require
from kiln.models.pretrained import timm_pretrained_hint
from kiln.models.registry import ModelEntry, register_family


def _timm():
    return require("timm", "timm", "model.name=timm:NAME")


@register_family("timm")
def timm_entry(arch: str) -> ModelEntry:
    timm = _timm()
    available = timm.list_models()
    if arch not in available and arch.split(".")[0] not in available:  # arch.tag names weights
        close = difflib.get_close_matches(arch, available, n=3)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ConfigError(f"model.name: timm has no model '{arch}'{hint}")

    def builder(info: DataInfo, pretrained: bool = False) -> nn.Module:
        try:
            # timm fits the first convolution to in_chans and the classifier to num_classes.
            return timm.create_model(
                arch, pretrained=pretrained, num_classes=info.num_outputs, in_chans=info.channels
            )
        except (OSError, RuntimeError) as exc:
            if not pretrained:
                raise
            detail = str(exc).strip().splitlines()[0][:200]
            raise ConfigError(
                f"model.pretrained: could not get the weights of timm:{arch} ({detail}). "
                + timm_pretrained_hint(arch)
            ) from None

    return ModelEntry(f"timm:{arch}", builder, f"timm {arch}")
