"""Transfer learning: weights from a file or a run, head rebuilt, freeze/unfreeze, pretrained."""

from __future__ import annotations

import copy
import gzip
import shutil
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import require

import kiln
from kiln.config import ModelConfig, build_config
from kiln.data.registry import DataInfo
from kiln.engine.callbacks import Callback
from kiln.engine.optim import build_optimizer
from kiln.errors import ConfigError
from kiln.models import build_model, create_model
from kiln.models.pretrained import hub_file
from kiln.models.transfer import head_of, load_weights, set_backbone_trainable


def info(c: int, h: int, w: int, k: int = 10) -> DataInfo:
    return DataInfo("t", [str(i) for i in range(k)], c, h, w, [0.5] * c, [0.25] * c)


def test_weights_load_by_name_and_shape_and_the_report_says_what_was_kept(tmp_path):
    source = create_model("convnet", info(1, 28, 28, k=10), width=8)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = create_model("convnet", info(1, 28, 28, k=4), width=8)
    report = load_weights(target, tmp_path / "w.pt")
    head, _ = head_of(target)
    assert report.reshaped == [f"{head}.weight", f"{head}.bias"]
    assert report.loaded == report.total - 2 and not report.missing and not report.unexpected
    for name, tensor in target.state_dict().items():
        if not name.startswith(head):
            assert torch.equal(tensor, source.state_dict()[name]), name
    assert "other shape, trained from scratch: head.3.weight, head.3.bias" in str(report)


def test_weights_from_ddp_and_lightning_checkpoints(tmp_path):
    model = create_model("mlp", info(1, 8, 8), hidden=[16])
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "lightning.ckpt")
    fresh = create_model("mlp", info(1, 8, 8), hidden=[16])
    report = load_weights(fresh, tmp_path / "lightning.ckpt")
    assert report.loaded == report.total
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters(), strict=True)
    )


def test_bad_weights_files_are_refused_with_the_reason(tmp_path):
    model = create_model("mlp", info(1, 8, 8), hidden=[16])
    with pytest.raises(ConfigError, match="does not exist"):
        load_weights(model, tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a PyTorch weights file"):
        load_weights(model, tmp_path / "junk.pt")
    torch.save({"model": model}, tmp_path / "pickled.pt")  # a whole module: pickled code
    with pytest.raises(ConfigError, match="never unpickles code"):
        load_weights(model, tmp_path / "pickled.pt")
    other = create_model("lenet", info(1, 28, 28))
    torch.save(other.state_dict(), tmp_path / "lenet.pt")
    with pytest.raises(ConfigError, match="none of the 10 tensors.*fit this model"):
        load_weights(model, tmp_path / "lenet.pt")
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="not a Kiln run"):
        load_weights(model, tmp_path / "run")


def test_freeze_keeps_the_backbone_and_norms_trainable():
    model = create_model("convnet", info(1, 28, 28), width=8)
    set_backbone_trainable(model, False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "head.3.weight",
        "head.3.bias",
        *(n for n in dict(model.named_parameters()) if n.startswith("features.1.")),
        *(n for n in dict(model.named_parameters()) if n.startswith("features.5.")),
        *(n for n in dict(model.named_parameters()) if n.startswith("features.9.")),
    }
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())


def test_backbone_and_head_learning_rates():
    cfg = build_config(None, ["optim.lr=0.01", "optim.backbone_lr=0.001"])
    model = create_model("convnet", info(1, 28, 28), width=8)
    optimizer = build_optimizer(cfg.optim, model)
    head, backbone = optimizer.param_groups
    assert head["lr"] == 0.01 and backbone["lr"] == 0.001
    assert {id(p) for p in head["params"]} == {id(p) for p in head_of(model)[1].parameters()}
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))


def test_unfreeze_needs_freeze():
    with pytest.raises(ConfigError, match="unfreeze_epoch needs model.freeze=backbone"):
        build_config(None, ["model.unfreeze_epoch=2"])


class Snapshots(Callback):
    """The model's weights at the end of every epoch."""

    def __init__(self):
        self.states = []

    def on_epoch_end(self, trainer, epoch, row):
        self.states.append(copy.deepcopy(trainer.model.state_dict()))


def test_frozen_backbone_trains_only_the_head_until_unfrozen(tmp_path):
    snaps = Snapshots()
    run = kiln.train(
        {
            "data": {"name": "digits"},
            "model": {"name": "convnet", "width": 8, "freeze": "backbone", "unfreeze_epoch": 3},
            "train": {"epochs": 3, "device": "cpu"},
            "run": {"dir": str(tmp_path)},
        },
        callbacks=[snaps],
        progress=False,
    )
    first, second, third = snaps.states
    conv = "features.0.weight"
    torch.manual_seed(0)  # the run's seed: the same initial weights
    initial = create_model("convnet", run_info(run), width=8).state_dict()
    assert torch.equal(first[conv], initial[conv]) and torch.equal(second[conv], first[conv])
    assert not torch.equal(third[conv], second[conv])  # unfrozen at epoch 3
    assert not torch.equal(second["head.3.weight"], first["head.3.weight"])
    assert not torch.equal(first["features.1.weight"], initial["features.1.weight"])  # BN trains
    saved = build_config(run.path / "config.yaml")
    assert saved.model.freeze == "backbone" and saved.model.unfreeze_epoch == 3


def run_info(run) -> DataInfo:
    from kiln.rundir import RunDir

    return RunDir.open(run.path).data_info()


# Pretrained weights ------------------------------------------------------------------------------
def test_pretrained_torchvision_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    """With the file in torch.hub's cache no network is needed; the head is rebuilt and the
    stem fitted to grey images by summing its RGB filters."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import torchvision

    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    imagenet = torchvision.models.resnet18(weights=None)
    hub_file(url).parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), hub_file(url))
    model = create_model("tv:resnet18", info(1, 224, 224, k=3), pretrained=True)
    assert model.fc.out_features == 3
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert torch.allclose(model.conv1.weight, imagenet.conv1.weight.sum(1, keepdim=True))


def test_offline_pretrained_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(ConfigError) as err:
        create_model("resnet18", info(3, 32, 32), pretrained=True)
    message = str(err.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "model.weights=PATH" in message
    with pytest.raises(ConfigError, match="has no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        create_model("resnet18", info(3, 32, 32), pretrained="IMAGENET9K")


def test_offline_timm_pretrained_names_the_hugging_face_repository(tmp_path):
    pytest.importorskip("timm")
    import os
    import subprocess
    import sys

    code = (
        "from kiln.models import create_model\n"
        "from kiln.models.summary import data_info\n"
        "create_model('timm:resnet10t', data_info((3, 32, 32)), pretrained=True)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "could not get the weights of timm:resnet10t" in result.stderr
    assert "timm/resnet10t" in result.stderr and str(tmp_path / "hf") in result.stderr


def test_init_applies_to_the_new_head_only_when_pretrained(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import torchvision

    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    hub_file(url).parent.mkdir(parents=True)
    imagenet = torchvision.models.resnet18(weights=None)
    torch.save(imagenet.state_dict(), hub_file(url))
    cfg = ModelConfig(name="resnet18", pretrained=True, init="orthogonal")
    model = build_model(cfg, info(3, 224, 224, k=5)).model
    assert torch.equal(model.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    assert torch.count_nonzero(model.fc.bias) == 0


# Fine-tuning on real data ------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[2] == 8 and data[3] == 3:
        n, h, w = (int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w)
    return np.frombuffer(data, np.uint8, offset=8)


FASHION = {1: "trouser", 5: "sandal", 7: "sneaker", 8: "bag", 9: "boot"}


@pytest.mark.slow
def test_fine_tune_mnist_weights_onto_a_fashion_mnist_folder(tmp_path, capsys):
    """MNIST-trained convnet weights, head rebuilt for 5 FashionMNIST classes, backbone frozen
    for the first epoch: it learns the new classes, and the run records where it started."""
    from shared_data import copy_mnist_like

    data = copy_mnist_like("MNIST", tmp_path / "data")
    fashion = require("FashionMNIST") / "raw"
    mnist = kiln.train(
        {
            "data": {"name": "mnist", "root": str(data), "subset": 4000},
            "model": {"name": "convnet", "width": 16},
            "train": {"epochs": 2, "device": "cpu"},
            "run": {"dir": str(tmp_path / "runs"), "name": "mnist"},
        },
        progress=False,
    )
    assert mnist.test_acc > 0.9
    images = read_idx(fashion / "train-images-idx3-ubyte.gz")
    labels = read_idx(fashion / "train-labels-idx1-ubyte.gz")
    folder = tmp_path / "fashion"
    for label, name in FASHION.items():
        (folder / name).mkdir(parents=True)
        for i in np.flatnonzero(labels == label)[:200]:
            Image.fromarray(images[i]).save(folder / name / f"{i}.png")
    capsys.readouterr()
    tuned = kiln.train(
        {
            "model": {
                "name": "convnet",
                "width": 16,
                "weights": str(mnist.path),
                "freeze": "backbone",
                "unfreeze_epoch": 2,
            },
            "data": {"name": "folder", "root": str(folder), "batch_size": 16},
            "optim": {"lr": 1e-2, "backbone_lr": 3e-3},
            "train": {"epochs": 4, "device": "cpu"},
            "run": {"dir": str(tmp_path / "runs"), "name": "tuned"},
        }
    )
    out = capsys.readouterr().out
    assert f"from {mnist.path}" in out and "head.3.weight, head.3.bias" in out
    assert "Epoch 2: the backbone is unfrozen" in out
    assert tuned.test_acc >= 0.9
    info_json = (tuned.path / "info.json").read_text()
    assert '"reshaped": [' in info_json and "head.3.weight" in info_json
    # The run is self-contained: predicting needs neither the MNIST run nor its weights.
    shutil.rmtree(mnist.path)
    predictor = kiln.load(tuned.path)
    sneaker = next((folder / "sneaker").iterdir())
    assert predictor.predict([sneaker])[0]["top_k"][0]["label"] in FASHION.values()
