"""model.name=sequential: the tutorials' nn.Sequential, OrderedDict and ModuleList nets as YAML."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kiln
from kiln.config import load_yaml
from kiln.data.registry import DataInfo
from kiln.errors import ConfigError
from kiln.models import create_model
from kiln.models.sequential import Repeat


def info(c: int = 1, h: int = 28, w: int = 28, k: int = 10) -> DataInfo:
    return DataInfo("t", [str(i) for i in range(k)], c, h, w, [0.5] * c, [0.25] * c)


def build(layers, data: DataInfo | None = None) -> nn.Module:
    return create_model("sequential", data or info(), layers=layers)


def linears(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_the_fashionmnist_tutorial_mlp_written_in_yaml():
    cfg = load_yaml(
        """
        model:
          name: sequential
          layers:
            - flatten
            - linear: 512
            - relu
            - linear: 512
            - relu
            - linear: classes
        """
    )
    model = build(cfg["model"]["layers"])
    assert isinstance(model, nn.Sequential)
    assert linears(model) == [(784, 512), (512, 512), (512, 10)]
    kinds = [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [type(m) for m in model] == kinds
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_the_mnist_example_cnn_infers_every_input_size():
    cfg = load_yaml(
        """
        layers:
          - conv2d: {out: 32, kernel: 3}
          - relu
          - conv2d: {out_channels: 64, kernel_size: 3}   # torch's own names work too
          - relu
          - maxpool: 2
          - dropout2d: 0.25
          - flatten
          - linear: 128
          - relu
          - dropout: 0.5
          - linear: classes
        """
    )
    model = build(cfg["layers"])
    convs = [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(1, 32), (32, 64)]
    assert linears(model) == [(64 * 12 * 12, 128), (128, 10)]
    params = sum(p.numel() for p in model.parameters())
    assert params == sum(p.numel() for p in create_model("cnn", info()).parameters())
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()


def test_named_layers_become_module_names_as_with_an_ordereddict():
    cfg = load_yaml(
        """
        layers:
          conv1: {conv2d: {out: 20, kernel: 5}}
          relu1: relu
          conv2: {conv2d: {out: 64, kernel: 5}}
          relu2: relu
          flat: flatten
          fc: {linear: classes}
        """
    )
    model = build(cfg["layers"])
    assert [name for name, _ in model.named_children()] == [
        "conv1",
        "relu1",
        "conv2",
        "relu2",
        "flat",
        "fc",
    ]
    assert model.conv2.in_channels == 20 and model.fc.in_features == 64 * 20 * 20
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_repeat_is_a_modulelist_with_its_own_weights_per_copy():
    model = build(["flatten", {"linear": 10}, {"repeat": 3, "layers": [{"linear": 10}, "relu"]}])
    block = model[2]
    assert isinstance(block, Repeat) and isinstance(block.blocks, nn.ModuleList)
    weights = [b[0].weight for b in block.blocks]
    assert len(weights) == 3 and len({w.data_ptr() for w in weights}) == 3
    assert not torch.equal(weights[0], weights[1])
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_repeat_copies_follow_the_shape_the_previous_copy_leaves():
    layers = [{"repeat": 2, "layers": [{"conv2d": {"out": 8, "padding": 1}}, "maxpool"]}]
    model = build([*layers, "flatten", {"linear": "classes"}])
    convs = [m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [1, 8] and linears(model) == [(8 * 7 * 7, 10)]


def test_batchnorm_follows_the_shape_and_probing_leaves_it_untouched():
    model = build([{"conv2d": 8}, "batchnorm", "flatten", {"linear": 16}, "batchnorm", "relu",
                   {"linear": "classes"}])  # fmt: skip
    norms = [m for m in model if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    assert [type(m) for m in norms] == [nn.BatchNorm2d, nn.BatchNorm1d]
    assert [m.num_features for m in norms] == [8, 16]
    assert model.training and all(m.num_batches_tracked == 0 for m in norms)
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)


def test_shorthands_for_the_main_argument():
    model = build([{"maxpool": 2}, {"avgpool": 2}, "flatten", {"dropout": 0.3}, {"linear": 10},
                   {"leakyrelu": 0.2}, {"softmax": 1}])  # fmt: skip
    assert model[0].kernel_size == 2 and model[3].p == 0.3
    assert model[5].negative_slope == 0.2 and model[6].dim == 1
    assert linears(model) == [(49, 10)]


@pytest.mark.parametrize(
    "layers,message",
    [
        (None, r"set model.layers.*e\.g\. model.layers: \[flatten, \{linear: 512\}"),
        ([], "model.layers is empty"),
        ("relu", "must be a list of layers or a mapping"),
        (["flatten", {"lineer": 10}], r"model.layers\[1\]: unknown layer 'lineer'; did you mean "
         "'linear'.*known: linear, conv2d, batchnorm"),
        (["flatten", {"linear": {"outt": 10}}], r"model.layers\[1\] \(linear\): unknown argument "
         r"'outt'; linear takes out \(out_features\), bias"),
        ([{"conv2d": {"out": 8, "size": 3}}], r"conv2d takes out \(out_channels\), kernel "
         r"\(kernel_size\), stride, padding"),
        ([{"linear": 10}], r"model.layers\[0\] \(linear\): needs a flat input but gets "
         r"\(1, 28, 28\); put `flatten` first"),
        (["flatten", {"conv2d": 8}], r"layers\[1\] \(conv2d\): needs an image .* put it before"),
        (["flatten", {"linear": 20}], r"output shape \(20,\).*10 classes.*\{linear: classes\}"),
        ([{"conv2d": 8}], r"output shape \(8, 26, 26\).*`flatten` and `\{linear: classes\}`"),
        (["maxpool"] * 6, r"model.layers\[4\] \(maxpool\): .*\(1, 1, 1\).*Output size is too "
         "small; use padding, a smaller kernel or fewer pooling layers"),
        ([{"conv2d": {"out": 4, "kernel": 29}}], r"layers\[0\] \(conv2d\).*Kernel size can't"),
        (["flatten", {"linear": {"in_features": 100, "out": 10}}], r"in_features=100 but the "
         r"input here has shape \(784,\); leave in_features out"),
        (["flatten", {"linear": 0}], "out_features must be a positive integer or `classes`"),
        (["flatten", "linear"], r"\(linear\): needs out_features, e.g. `\{linear: 64\}`"),
        (["flatten", {"relu": 2}], "relu takes no value; write it as a bare `relu`"),
        (["flatten", {"dropout": 1.5}], r"\(dropout\): dropout probability has to be between"),
        ([{"linear": 10, "bias": False}], r"`\{linear: \{out_features: 10, bias: False\}\}`"),
        (["flatten", 3], r"model.layers\[1\]: 3 is not a layer"),
        ({"flat": "flatten", "fc": {"linear": 20}}, r"output shape \(20,\)"),
        ({"flat": "flatten", "fc": {"linr": 10}}, r"model.layers.fc: unknown layer 'linr'"),
        ({"flat": "flatten", "fc": "conv2d"}, r"model.layers.fc \(layer 1, conv2d\): needs"),
        ({"forward": "flatten"}, "nn.Sequential uses 'forward'; choose another name"),
        ({"conv-1": "flatten"}, "a layer's name must be a word like fc1"),
        ([{"repeat": 0, "layers": ["relu"]}], "repeat must be a positive integer"),
        ([{"repeat": 2, "layer": ["relu"]}], r"as \{repeat: N, layers: \[...\]\}"),
        (["flatten", {"repeat": 2, "layers": ["relu", "conv2d"]}],
         r"model.layers\[1\].layers\[1\] \(conv2d\): needs an image"),
        ([{"repeat": 2, "layers": [{"conv2d": {"out": 4, "kernel": 3}}, {"maxpool": 8}]}],
         r"in copy 2 of 2, model.layers\[0\].layers\[1\] \(maxpool\)"),
    ],
)  # fmt: skip
def test_errors_name_the_layer_and_say_what_to_do(layers, message):
    with pytest.raises(ConfigError, match=r"model 'sequential': .*" + message):
        build(layers)


def test_trains_on_digits_end_to_end(tmp_path):
    layers = load_yaml(
        """
        - conv2d: {out: 16, kernel: 3, padding: 1}
        - batchnorm
        - relu
        - maxpool: 2
        - flatten
        - linear: 64
        - relu
        - linear: classes
        """
    )
    run = kiln.train(
        {
            "data": {"name": "digits"},
            "model": {"name": "sequential", "layers": layers},
            "optim": {"lr": 0.01},  # two epochs: a higher rate than the default 1e-3
            "train": {"epochs": 2, "device": "cpu"},
            "run": {"dir": str(tmp_path)},
        },
        progress=False,
    )
    assert run.best_val_acc > 0.8
