"""Layers made smaller: how a structurally pruned model is rebuilt from its run folder.

`kiln prune --structured channels` removes whole channels, so some convolutions, batch norms and
linear layers of the pruned model are narrower than the registered model builds them. The new
run's config records their sizes (`model.layer_sizes`: {layer: [in, out]} for a convolution or
linear layer, {layer: [features]} for a batch norm); `build_model` builds the registered model,
then swaps each of those layers for one of the recorded size, same kind and hyper-parameters.
The checkpoint's plain tensors then fit: no pickled code, no other model definition.
"""

from __future__ import annotations

from torch import nn

from kiln.errors import ConfigError

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def layer_size(module: nn.Module) -> list[int]:
    """What model.layer_sizes records for a layer: [in, out], or [features] for a batch norm."""
    if isinstance(module, CONVS):
        return [module.in_channels, module.out_channels]
    if isinstance(module, nn.Linear):
        return [module.in_features, module.out_features]
    if isinstance(module, NORMS):
        return [module.num_features]
    raise TypeError(f"{type(module).__name__} is not a layer kiln can resize")


def resized(module: nn.Module, size: list[int]) -> nn.Module:
    """A fresh layer like `module` (kind, kernel, stride, bias, ...) of the given size."""
    if isinstance(module, CONVS):
        if module.groups != 1:
            raise ValueError("grouped convolutions are not resized")
        return type(module)(
            size[0], size[1], module.kernel_size, module.stride, module.padding, module.dilation,
            bias=module.bias is not None, padding_mode=module.padding_mode,
        )  # fmt: skip
    if isinstance(module, nn.Linear):
        return nn.Linear(size[0], size[1], bias=module.bias is not None)
    if isinstance(module, NORMS):
        return type(module)(size[0], module.eps, module.momentum, module.affine,
                            module.track_running_stats)  # fmt: skip
    raise ValueError(f"{type(module).__name__} layers are not resized")


def resize_layers(model: nn.Module, sizes: dict[str, list[int]]) -> nn.Module:
    """Swap the named layers for ones of the recorded sizes (in place; returns the model)."""
    for name, size in sizes.items():
        try:
            old = model.get_submodule(name)
            new = resized(old, list(size))
        except (AttributeError, ValueError, TypeError, IndexError) as exc:
            raise ConfigError(
                f"model.layer_sizes.{name}: cannot resize this layer of the model ({exc}); "
                "model.layer_sizes is written by kiln prune --structured, leave it as it wrote it"
            ) from None
        model.set_submodule(name, new)
    return model
