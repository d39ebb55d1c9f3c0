"""`model.name=sequential`: a network written in YAML as a list of layers, like nn.Sequential.

Each layer says only what it produces (`linear: 512`, `conv2d: {out: 32, kernel: 3}`); what it
takes in is found by passing a small tensor through each layer as it is built, so sizes are never
computed by hand. A mapping of names gives nn.Sequential(OrderedDict(...)) and
`{repeat: N, layers: [...]}` the ModuleList pattern, as in the PyTorch tutorials.
"""

from __future__ import annotations

import difflib
import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model

Shape = tuple[int, ...]
EXAMPLE = "model.layers: [flatten, {linear: 512}, relu, {linear: classes}]"


# kind: (torch class, the argument `{kind: value}` sets, the input it needs: "flat" or "image").
# Any argument of the torch class may be given by name, except the input size, which is inferred.
LAYERS: dict[str, tuple[Callable[..., nn.Module], str | None, str | None]] = {
    "linear": (nn.Linear, "out_features", "flat"),
    "conv2d": (nn.Conv2d, "out_channels", "image"),
    "batchnorm": (nn.BatchNorm1d, None, None),  # BatchNorm2d on images
    "dropout": (nn.Dropout, "p", None),
    "dropout2d": (nn.Dropout2d, "p", "image"),
    "relu": (nn.ReLU, None, None),
    "sigmoid": (nn.Sigmoid, None, None),
    "tanh": (nn.Tanh, None, None),
    "leakyrelu": (nn.LeakyReLU, "negative_slope", None),
    "prelu": (nn.PReLU, "init", None),
    "gelu": (nn.GELU, "approximate", None),
    "silu": (nn.SiLU, None, None),
    "softmax": (nn.Softmax, "dim", None),
    "maxpool": (nn.MaxPool2d, "kernel_size", "image"),
    "avgpool": (nn.AvgPool2d, "kernel_size", "image"),
    "adaptiveavgpool": (nn.AdaptiveAvgPool2d, "output_size", "image"),
    "flatten": (nn.Flatten, None, None),
    "identity": (nn.Identity, None, None),
}
DEFAULTS = {  # for the arguments torch requires but a usual value exists
    "conv2d": {"kernel_size": 3},
    "maxpool": {"kernel_size": 2},
    "avgpool": {"kernel_size": 2},
    "adaptiveavgpool": {"output_size": 1},
    "softmax": {"dim": 1},
}
ALIASES = {"out": ("out_features", "out_channels"), "kernel": ("kernel_size",)}
INFERRED = ("in_features", "in_channels", "num_features")  # taken from the previous layer
HIDDEN = ("self", "device", "dtype", "return_indices", "args", "kwargs")


def _params(kind: str) -> dict[str, inspect.Parameter]:
    """The torch class's own arguments, as a YAML layer may set them."""
    params = inspect.signature(LAYERS[kind][0].__init__).parameters
    return {n: p for n, p in params.items() if n not in HIDDEN}


class Repeat(nn.Module):
    """The ModuleList pattern: a block applied N times in a loop, each copy with its own weights."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _arguments(kind: str, value: Any, where: str) -> dict[str, Any]:
    """`{kind: value}` or `{kind: {name: value}}` as the torch class's keyword arguments."""
    main, params = LAYERS[kind][1], _params(kind)
    if value is None:
        value = {}
    elif not isinstance(value, dict):
        if main is None:
            raise ValueError(f"{where}: {kind} takes no value; write it as a bare `{kind}`")
        value = {main: value}
    args = dict(DEFAULTS.get(kind, {}))
    for name, v in value.items():
        name = next((t for t in ALIASES.get(name, ()) if t in params), name)
        if name not in params:
            names = [
                next((f"{a} ({n})" for a, ts in ALIASES.items() if n in ts), n) for n in params
            ]
            valid = ", ".join(n for n in names if n not in INFERRED) or "nothing"
            raise ValueError(f"{where}: unknown argument '{name}'; {kind} takes {valid}")
        args[name] = v
    missing = [n for n, p in params.items() if p.default is p.empty and n not in (*args, *INFERRED)]
    if missing:
        raise ValueError(f"{where}: needs {missing[0]}, e.g. `{{{kind}: 64}}`")
    return args


def _build(
    spec: Any, shape: Shape, where: str, info: DataInfo, note: str = ""
) -> tuple[nn.Module, Shape]:
    """One layer from its spec, and the shape it outputs; `where` and `note` name it in errors."""
    if isinstance(spec, dict) and "repeat" in spec:
        return _repeat(spec, shape, where, info)
    if isinstance(spec, str):
        kind, value = spec, None
    elif isinstance(spec, dict) and len(spec) == 1:
        [(kind, value)] = spec.items()
    elif isinstance(spec, dict) and (kinds := [k for k in spec if k in LAYERS]):
        kind, main = kinds[0], LAYERS[kinds[0]][1]
        args = {main: spec[kind], **spec} if main else dict(spec)
        inner = ", ".join(f"{k}: {v}" for k, v in args.items() if k != kind)
        raise ValueError(
            f"{where}: give {kind}'s arguments as one mapping: `{{{kind}: {{{inner}}}}}`"
        )
    else:
        raise ValueError(
            f"{where}: {spec!r} is not a layer; write a name (`relu`), a one-key mapping "
            "(`{linear: 512}`) or one with named arguments (`{conv2d: {out: 32, kernel: 3}}`)"
        )
    kind = str(kind).lower()
    if kind not in LAYERS:
        close = difflib.get_close_matches(kind, LAYERS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"{where}: unknown layer '{kind}'; {hint}known: {', '.join(LAYERS)}")
    where = f"{where} ({note}{kind})"
    cls, _, needs = LAYERS[kind]
    if needs == "flat" and len(shape) != 1:
        raise ValueError(f"{where}: needs a flat input but gets {_fmt(shape)}; put `flatten` first")
    if needs == "image" and len(shape) != 3:
        raise ValueError(
            f"{where}: needs an image (C, H, W) but gets {_fmt(shape)}; put it before flatten"
        )
    args = {
        k: info.num_outputs if v == "classes" else v
        for k, v in _arguments(kind, value, where).items()
    }
    for name in set(INFERRED) & set(args):
        if (given := args.pop(name)) != shape[0]:
            raise ValueError(
                f"{where}: {name}={given} but the input here has shape {_fmt(shape)}; "
                f"leave {name} out: it is inferred from the layers before"
            )
    for name in set(args) & {"out_features", "out_channels"}:
        if isinstance(args[name], bool) or not isinstance(args[name], int) or args[name] < 1:
            raise ValueError(f"{where}: {name} must be a positive integer or `classes`")
    if kind == "batchnorm" and len(shape) == 3:
        cls = nn.BatchNorm2d
    inferred = [shape[0]] if next(iter(_params(kind)), None) in INFERRED else []
    try:
        module = cls(*inferred, **args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return module, _probe(module, shape, where)


def _probe(module: nn.Module, shape: Shape, where: str) -> Shape:
    """The output shape, from one zero sample run through in eval mode (no statistics change)."""
    module.eval()
    try:
        with torch.no_grad():
            out = tuple(module(torch.zeros(1, *shape)).shape[1:])
    except RuntimeError as exc:
        hint = "; use padding, a smaller kernel or fewer pooling layers" if len(shape) == 3 else ""
        raise ValueError(
            f"{where}: fails on an input of shape {_fmt(shape)}: {exc}{hint}"
        ) from None
    finally:
        module.train()
    if not out or 0 in out:
        raise ValueError(
            f"{where}: the shape collapses from {_fmt(shape)} to {_fmt(out)}; the map is too "
            "small here: use padding, a smaller kernel or fewer pooling layers"
        )
    return out


def _repeat(spec: dict, shape: Shape, where: str, info: DataInfo) -> tuple[nn.Module, Shape]:
    n = spec["repeat"]
    if set(spec) != {"repeat", "layers"}:
        raise ValueError(f"{where}: write a repeated block as {{repeat: N, layers: [...]}}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{where}: repeat must be a positive integer, got {n!r}")
    blocks = []
    for i in range(n):  # built one by one: the first copy may change the shape the next sees
        try:
            block, shape = _stack(spec["layers"], shape, f"{where}.layers", info)
        except ValueError as exc:
            raise ValueError(f"in copy {i + 1} of {n}, {exc}" if i else str(exc)) from None
        blocks.append(block)
    return Repeat(blocks), shape


def _stack(layers: Any, shape: Shape, where: str, info: DataInfo) -> tuple[nn.Sequential, Shape]:
    """A list gives nn.Sequential(*layers); a mapping name -> layer keeps the names."""
    if isinstance(layers, dict):
        for name in layers:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"{where}: a layer's name must be a word like fc1, got {name!r}")
            if hasattr(nn.Sequential(), name):  # forward, train, training...
                raise ValueError(
                    f"{where}.{name}: nn.Sequential uses '{name}'; choose another name"
                )
        items = [(n, f"{where}.{n}", f"layer {i}, ", s) for i, (n, s) in enumerate(layers.items())]
    elif isinstance(layers, list | tuple):
        items = [(str(i), f"{where}[{i}]", "", s) for i, s in enumerate(layers)]
    else:
        raise ValueError(
            f"{where} must be a list of layers or a mapping name -> layer, not {layers!r}"
        )
    if not items:
        raise ValueError(f"{where} is empty; list at least one layer, e.g. {EXAMPLE}")
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for name, at, note, spec in items:
        modules[name], shape = _build(spec, shape, at, info, note)
    return nn.Sequential(modules), shape


@register_model("sequential", "Layers listed in the config, sizes inferred (model.layers)")
def sequential(info: DataInfo, layers: list | dict | None = None) -> nn.Module:
    """The config's `model.layers` as an nn.Sequential, checked to end in one score per class."""
    if layers is None:
        raise ValueError(f"set model.layers to the network's layers, e.g. {EXAMPLE}")
    model, out = _stack(layers, info.input_shape, "model.layers", info)
    if out != (info.num_outputs,):
        fix = "`flatten` and `{linear: classes}`" if len(out) > 1 else "`{linear: classes}`"
        scores = f"{info.num_classes} classes" if info.outputs is None else "one output"
        raise ValueError(
            f"the layers output shape {_fmt(out)}, but the data has {scores} so "
            f"it must be ({info.num_outputs},); end with {fix}"
        )
    return model
