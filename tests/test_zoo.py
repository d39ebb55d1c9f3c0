"""The model zoo: families, torchvision and timm by name, initialisation, list and summary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kiln.cli import main
from kiln.config import ModelConfig
from kiln.data.registry import DataInfo
from kiln.errors import ConfigError
from kiln.models import MODELS, build_model, create_model, get_model
from kiln.models.summary import catalogue, parse_input, summary_table


def info(c: int, h: int, w: int, k: int = 10) -> DataInfo:
    return DataInfo("t", [str(i) for i in range(k)], c, h, w, [0.5] * c, [0.25] * c)


@pytest.mark.parametrize(
    "name,shape",
    [
        ("twolayer", (1, 28, 28)),
        ("convnet", (1, 8, 8)),
        ("convnet", (1, 28, 28)),
        ("convnet", (3, 32, 32)),
        ("convnet", (3, 100, 60)),
        ("resnet34", (3, 32, 32)),
        ("resnet50", (1, 28, 28)),
        ("tv:mobilenet_v3_small", (1, 28, 28)),
        ("tv:efficientnet_b0", (3, 32, 32)),
        ("tv:densenet121", (3, 64, 64)),
        ("tv:resnet18", (3, 96, 96)),
    ],
)
def test_zoo_models_map_a_batch_to_class_logits(name, shape):
    model = create_model(name, info(*shape, k=7))
    model.train()
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_twolayer_is_the_tutorials():
    model = create_model("twolayer", info(1, 28, 28), hidden=100)
    assert [(m.in_features, m.out_features) for m in (model.linear1, model.linear2)] == [
        (784, 100),
        (100, 10),
    ]
    x = torch.randn(3, 1, 28, 28)
    expected = model.linear2(model.linear1(x.flatten(1)).clamp(min=0))
    assert torch.equal(model(x), expected)


def test_convnet_depth_width_batchnorm_dropout():
    model = create_model(
        "convnet", info(1, 28, 28), depth=2, width=16, convs=2, batchnorm=False, dropout=0.3
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 16),
        (16, 16),
        (16, 32),
        (32, 32),
    ]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3]
    with_bn = create_model("convnet", info(1, 28, 28))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 3
    # 8x8 digits stop pooling at 1x1 instead of failing on a deeper net
    deep = create_model("convnet", info(1, 8, 8), depth=5)
    assert deep(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="model.depth must be a positive integer"):
        create_model("convnet", info(1, 8, 8), depth=0)


def test_torchvision_small_stem_and_channels():
    small = create_model("tv:resnet18", info(1, 32, 32))
    assert small.conv1.in_channels == 1 and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    large = create_model("tv:resnet18", info(3, 224, 224))
    assert large.conv1.stride == (2, 2) and isinstance(large.maxpool, nn.MaxPool2d)
    forced = create_model("tv:resnet18", info(3, 224, 224), small_stem=True)
    assert forced.conv1.stride == (1, 1)
    mobile = create_model("tv:mobilenet_v3_small", info(1, 32, 32))
    first = mobile.features[0][0]
    assert first.in_channels == 1 and first.stride == (1, 1)


def test_unknown_torchvision_and_timm_names_suggest_close_ones():
    with pytest.raises(ConfigError, match="did you mean tv:resnet18"):
        get_model("tv:resnet81")
    with pytest.raises(ConfigError, match="unknown model 'resnet81'.*tv:NAME"):
        get_model("resnet81")


def test_timm_model_by_name():
    pytest.importorskip("timm")
    model = create_model("timm:resnet10t", info(1, 32, 32, k=5))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(ConfigError, match="timm has no model 'not_a_model'"):
        get_model("timm:not_a_model")


@pytest.mark.parametrize("scheme", ["kaiming", "xavier", "orthogonal"])
def test_init_schemes_redraw_weights_and_zero_biases(scheme):
    torch.manual_seed(0)
    default = build_model(ModelConfig(name="mlp", hidden=[64]), info(1, 8, 8)).model
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden=[64], init=scheme), info(1, 8, 8)).model
    first = model.layers[0]
    assert not torch.equal(first.weight, default.layers[0].weight)
    assert torch.count_nonzero(first.bias) == 0
    if scheme == "orthogonal":  # rows of a wide-to-narrow matrix come out orthonormal
        gram = first.weight @ first.weight.T
        assert torch.allclose(gram, torch.eye(64), atol=1e-4)
    if scheme == "kaiming":  # He: std = sqrt(2 / fan_in)
        assert abs(first.weight.std().item() - (2 / 64) ** 0.5) < 0.02


def test_catalogue_counts_parameters_for_an_mnist_digit():
    rows = {r["name"]: r for r in catalogue()}
    assert set(rows) == set(MODELS)
    assert rows["lenet"]["parameters"] == 61706  # LeNet-5 as in the paper
    assert rows["mlp"]["parameters"] == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert rows["resnet18"]["parameters"] == sum(
        p.numel() for p in create_model("resnet18", info(1, 28, 28)).parameters()
    )
    assert rows["sequential"]["parameters"] is None  # needs its layers first
    assert all(r["description"] for r in rows.values())


def test_list_models_cli(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    for name in ("mlp", "twolayer", "lenet", "cnn", "convnet", "resnet50", "sequential"):
        assert name in out
    assert "61,706" in out and "tv:NAME" in out and "timm:NAME" in out


def test_summary_table_has_shapes_params_trainable_mult_adds():
    model = create_model("lenet", info(1, 28, 28))
    text = summary_table(model, (1, 28, 28), batch=32)
    assert "[32, 6, 28, 28]" in text  # the padded first convolution keeps 28x28
    assert "61,706" in text and "Mult-Adds" in text and "Trainable" in text
    assert "Estimated Total Size (MB)" in text


def test_summary_cli_for_a_model_name(capsys):
    assert main(["summary", "convnet", "--input", "3x32x32", "--batch", "8", "model.width=8"]) == 0
    out = capsys.readouterr().out
    assert "input 8x3x32x32" in out and "[8, 8, 32, 32]" in out and "[8, 10]" in out


def test_summary_cli_errors(capsys):
    assert main(["summary", "lenet", "--input", "28-28"]) == 1
    assert "--input '28-28'" in capsys.readouterr().err
    assert main(["summary", "lenet", "--input", "1x8x8"]) == 2
    assert "at least 28x28" in capsys.readouterr().err
    assert main(["summary", "mlp", "--input", "1x8x8", "model.depth=3"]) == 2
    assert "model.depth" in capsys.readouterr().err


def test_parse_input():
    assert parse_input("1x28x28") == (1, 28, 28)
    assert parse_input("32x32") == (1, 32, 32)
