"""Structured pruning: whole output channels of convolutions removed, so the saved model is
really narrower (fewer weights, fewer multiply-adds), not just full of zeros.

A channel can go only where nothing else depends on its position. The model is traced with
torch.fx and each convolution's output followed through the operations that keep channels apart
(batch norm, activations, pooling, dropout) to what reads it: another convolution (its input
channels shrink too), or a flatten and a linear layer (the features of those channels go). A
convolution whose output reaches anything else (a residual add, a concatenation, the output) is
left whole. Which channels go: the smallest by the L1 norm of their filter folded with the batch
norm that follows it (torch.nn.utils.prune's LnStructured computes the mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import prune

from kiln.errors import ConfigError, first_line
from kiln.models.resize import CONVS, NORMS, layer_size

# What lies between a convolution and its readers without mixing channels.
PASS_MODULES = (
    *NORMS, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish, nn.Sigmoid,
    nn.Tanh, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool1d, nn.AvgPool1d, nn.MaxPool3d,
    nn.AvgPool3d,
)  # fmt: skip
PASS_FUNCTIONS = (F.relu, torch.relu, F.gelu, F.silu, F.leaky_relu, torch.sigmoid, torch.tanh,
                  F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                  F.dropout)  # fmt: skip
PASS_METHODS = ("relu", "sigmoid", "tanh", "contiguous")


@dataclass
class Group:
    """One prunable convolution, the batch norms on its output, and who reads its channels."""

    conv: str
    norms: list[str] = field(default_factory=list)
    convs: list[str] = field(default_factory=list)  # read its channels as their input channels
    linears: list[tuple[str, int]] = field(default_factory=list)  # (name, features per channel)
    keep: torch.Tensor | None = None  # the channels kept, in order


def find_groups(model: nn.Module, example: torch.Tensor) -> list[Group]:
    """The convolutions whose output channels can be removed (see the module docstring)."""
    try:
        graph = fx.symbolic_trace(model)
        ShapeProp(graph).propagate(example)
    except Exception as exc:  # fx raises many types for code it cannot follow
        first = first_line(exc)
        raise ConfigError(
            f"--structured channels follows the model's graph with torch.fx, which cannot trace "
            f"this model ({first}); prune it without --structured (unstructured sparsity)"
        ) from None
    modules = dict(graph.named_modules())
    groups = []
    for node in graph.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], CONVS):
            if modules[node.target].groups == 1:
                group = follow(node, modules, Group(node.target))
                if group is not None:
                    groups.append(group)
    return groups


def follow(start: fx.Node, modules: dict[str, nn.Module], group: Group) -> Group | None:
    """Walk the users of a convolution's output; None when a reader mixes its channels."""
    todo, seen = list(start.users), set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        module = modules.get(node.target) if node.op == "call_module" else None
        if module is not None and isinstance(module, CONVS):
            if module.groups != 1 or node.args[0] not in seen | {start}:
                return None
            group.convs.append(node.target)
        elif module is not None and isinstance(module, NORMS):
            group.norms.append(node.target)
            todo += node.users
        elif passes(node, module):
            todo += node.users
        elif is_flatten(node, module):
            readers = linear_readers(node, modules)
            if readers is None:
                return None
            group.linears += [(name, features_per_channel(node)) for name in readers]
        else:
            return None
    return group if group.convs or group.linears else None


def linear_readers(flatten: fx.Node, modules: dict[str, nn.Module]) -> list[str] | None:
    """The linear layers reading a flattened output (through dropout or activations), or None
    when anything else reads it."""
    found, todo = [], list(flatten.users)
    while todo:
        node = todo.pop()
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Linear):
            found.append(node.target)
        elif passes(node, module) and not isinstance(module, NORMS):
            todo += node.users
        else:
            return None
    return found


def passes(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return isinstance(module, PASS_MODULES)
    if node.op == "call_function":
        return node.target in PASS_FUNCTIONS
    return node.op == "call_method" and node.target in PASS_METHODS


def is_flatten(node: fx.Node, module: nn.Module | None) -> bool:
    """A flatten from the channel axis on: (N, C, ...) -> (N, C x ...)."""
    if module is not None:
        return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        return node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1
    return False


def features_per_channel(flatten: fx.Node) -> int:
    shape = flatten.args[0].meta["tensor_meta"].shape  # (N, C, H, W) before flattening
    return int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1


def choose(groups: list[Group], model: nn.Module, amount: float) -> None:
    """Each group keeps round(C x (1 - amount)) channels (at least one): the largest by the L1
    norm of the filter scaled by its batch norm (what the channel contributes after it)."""
    for group in groups:
        conv = model.get_submodule(group.conv)
        weight = conv.weight.detach().flatten(1)
        for name in group.norms:
            norm = model.get_submodule(name)
            if norm.affine and norm.track_running_stats:
                gain = norm.weight.detach().abs() / (norm.running_var + norm.eps).sqrt()
                weight = weight * gain[:, None]
        channels = weight.shape[0]
        drop = min(channels - 1, round(channels * amount))
        mask = prune.LnStructured(drop, n=1, dim=0).compute_mask(weight, torch.ones_like(weight))
        group.keep = mask[:, 0].nonzero().flatten()


def shrink(model: nn.Module, groups: list[Group]) -> tuple[dict, dict[str, list[int]]]:
    """(the narrower model's state dict, model.layer_sizes): the kept channels' weights, sliced
    out of every layer that makes or reads them."""
    out_keep: dict[str, torch.Tensor] = {}  # a layer's kept output channels / features
    in_keep: dict[str, torch.Tensor] = {}  # a layer's kept input channels / features
    for g in groups:
        out_keep[g.conv] = g.keep
        for name in g.norms:
            out_keep[name] = g.keep
        for name in g.convs:
            in_keep[name] = g.keep
        for name, per_channel in g.linears:
            offsets = torch.arange(per_channel)
            in_keep[name] = (g.keep[:, None] * per_channel + offsets).flatten()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sizes: dict[str, list[int]] = {}
    for name in sorted(set(out_keep) | set(in_keep)):
        layer = model.get_submodule(name)
        for key in [k for k in state if k.rsplit(".", 1)[0] == name]:
            tensor = state[key]
            if tensor.dim() == 0:  # num_batches_tracked
                continue
            if name in out_keep:
                tensor = tensor[out_keep[name]]
            if name in in_keep and tensor.dim() > 1:
                tensor = tensor[:, in_keep[name]]
            state[key] = tensor.contiguous()
        size = layer_size(layer)
        if isinstance(layer, NORMS):
            size = [len(out_keep[name])]
        else:
            size = [len(in_keep.get(name, range(size[0]))), len(out_keep.get(name, range(size[1])))]
        sizes[name] = size
    return state, sizes
