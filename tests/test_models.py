from __future__ import annotations

import pytest
import torch
from torch import nn

from kiln.data.registry import DataInfo
from kiln.errors import ConfigError
from kiln.models import MODELS, create_model


def info(c: int, h: int, w: int, k: int = 10) -> DataInfo:
    return DataInfo("t", [str(i) for i in range(k)], c, h, w, [0.5] * c, [0.25] * c)


@pytest.mark.parametrize(
    "name,shape",
    [
        ("mlp", (1, 8, 8)),
        ("mlp", (3, 32, 32)),
        ("lenet", (1, 28, 28)),
        ("lenet", (3, 32, 32)),
        ("cnn", (1, 28, 28)),
        ("cnn", (3, 32, 32)),
        ("resnet18", (1, 28, 28)),
        ("resnet18", (3, 32, 32)),
    ],
)
def test_models_map_a_batch_to_class_logits(name, shape):
    model = create_model(name, info(*shape, k=7))
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    out.sum().backward()  # trainable end to end


def test_the_tutorial_mlp_and_its_trailing_relu():
    model = create_model("mlp", info(1, 28, 28), hidden=[512, 512], final_activation="relu")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 512), (512, 512), (512, 10)]
    assert isinstance(list(model.layers)[-1], nn.ReLU)
    assert (model(torch.randn(4, 1, 28, 28)) >= 0).all()


def test_mlp_options():
    model = create_model(
        "mlp", info(1, 8, 8), hidden=[32], dropout=0.5, batchnorm=True, activation="gelu"
    )
    kinds = [type(m) for m in model.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout, nn.Linear]


def test_lenet_is_lenet5():
    model = create_model("lenet", info(1, 28, 28))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.padding for c in convs] == [(2, 2), (0, 0)]
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [120, 84, 10]
    assert sum(p.numel() for p in model.parameters()) == 61706


def test_resnet18_small_stem_for_small_images():
    small = create_model("resnet18", info(3, 32, 32))
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    large = create_model("resnet18", info(1, 128, 128))
    assert large.conv1.stride == (2, 2) and large.conv1.in_channels == 1


def test_lenet_on_too_small_images_says_what_to_do():
    with pytest.raises(ConfigError, match="at least 28x28"):
        create_model("lenet", info(1, 8, 8))


def test_unknown_model_and_option():
    with pytest.raises(ConfigError, match="unknown model 'vgg'.*cnn.*lenet.*mlp"):
        create_model("vgg", info(1, 8, 8))
    with pytest.raises(ConfigError, match="model.depth.*options: hidden"):
        create_model("mlp", info(1, 8, 8), depth=3)


def test_every_model_has_a_description():
    assert {"mlp", "lenet", "cnn", "resnet18"} <= set(MODELS)
    assert all(entry.description for entry in MODELS.values())
