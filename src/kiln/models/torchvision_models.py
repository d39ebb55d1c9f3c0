"""Any torchvision classification model by name: `model.name=tv:efficientnet_b0`.

The network is torchvision's own; Kiln only fits its ends to the data: the first convolution to
the image channels (and, for small images, to stride 1 so a 32x32 picture is not shrunk to 1x1),
and the last linear layer to the dataset's classes.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from kiln.data.registry import DataInfo
from kiln.errors import ConfigError
from kiln.models.pretrained import fetch_state_dict
from kiln.models.registry import ModelEntry, register_family
from kiln.models.transfer import first_conv, replace_head

SMALL = 64  # images up to this size get the small-image stem by default


def classification_models() -> list[str]:
    import torchvision  # imported when needed: it adds seconds to every start

    return torchvision.models.list_models(module=torchvision.models)


def build_torchvision(
    arch: str, info: DataInfo, small_stem: bool | None = None, pretrained: bool | str = False
) -> nn.Module:
    """`pretrained`: true for torchvision's default weights, or a weights name (IMAGENET1K_V2)."""
    import torchvision

    extra = {"aux_logits": False} if arch in ("googlenet", "inception_v3") else {}
    if pretrained:
        model = torchvision.models.get_model(arch, weights=None, **extra)
        weights = _weights(arch, pretrained)
        state = fetch_state_dict(weights.url, f"tv:{arch} ({weights})")
        model.load_state_dict(state, strict=not extra)  # the auxiliary heads are not built
        replace_head(model, info.num_outputs)
    else:
        model = torchvision.models.get_model(
            arch, weights=None, num_classes=info.num_outputs, **extra
        )
    if small_stem is None:
        small_stem = max(info.height, info.width) <= SMALL
    fit_stem(model, info.channels, small_stem, keep_kernel=bool(pretrained))
    return model


def fit_stem(model: nn.Module, channels: int, small: bool, keep_kernel: bool) -> None:
    """Rebuild the first convolution for `channels` inputs; for small images make it stride 1
    (3x3 unless pretrained weights should be kept) and drop the max-pool right after it."""
    name, conv = first_conv(model)
    if conv.in_channels == channels and not small:
        return
    kernel = conv.kernel_size if keep_kernel or not small else (3, 3)
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        kernel_size=kernel,
        stride=1 if small else conv.stride,
        padding=(kernel[0] // 2, kernel[1] // 2) if small else conv.padding,
        bias=conv.bias is not None,
    )
    if kernel == conv.kernel_size:  # carry the (possibly pretrained) filters over
        with torch.no_grad():
            weight = conv.weight
            if channels != conv.in_channels:  # grey from RGB: the sum keeps the response scale
                weight = weight.sum(dim=1, keepdim=True).repeat(1, channels, 1, 1) / channels
            new.weight.copy_(weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    model.set_submodule(name, new)
    if small:
        _drop_stem_pool(model, name)


def _drop_stem_pool(model: nn.Module, conv_name: str) -> None:
    """The ImageNet stem's max-pool (resnet.maxpool, densenet.features.pool0), if right after."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    after = names.index(conv_name) + 1
    if after < len(names) and isinstance(model.get_submodule(names[after]), nn.MaxPool2d):
        model.set_submodule(names[after], nn.Identity())


def _weights(arch: str, pretrained: bool | str):
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    if pretrained is True:
        return enum.DEFAULT
    try:
        return enum[str(pretrained)]
    except KeyError:
        names = ", ".join(w.name for w in enum)
        raise ConfigError(
            f"model.pretrained: tv:{arch} has no weights '{pretrained}'; choose true or one of: "
            f"{names}"
        ) from None


@register_family("tv")
def torchvision_entry(arch: str) -> ModelEntry:
    available = classification_models()
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=3)
        hint = f"; did you mean {', '.join('tv:' + c for c in close)}?" if close else ""
        raise ConfigError(
            f"model.name: torchvision has no classification model '{arch}'{hint} "
            "(`kiln list models` shows them all)"
        )

    def builder(
        info: DataInfo, small_stem: bool | None = None, pretrained: bool | str = False
    ) -> nn.Module:
        return build_torchvision(arch, info, small_stem, pretrained)

    return ModelEntry(f"tv:{arch}", builder, f"torchvision {arch}")
