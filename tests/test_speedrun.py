"""The CIFAR-10 speed runs' techniques as options: a whitened first layer (model.whiten), lookahead
weight averaging (train.lookahead) and translated test-time views (model.tta=flip_translate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import interrupt_at
from torch import nn

import kiln
from kiln import checkpoint
from kiln.data.registry import DataInfo
from kiln.deploy.export import export_run
from kiln.engine.lookahead import EVERY, START, Lookahead
from kiln.engine.trainer import TrainingInterrupted
from kiln.errors import ConfigError
from kiln.infer import load_servable
from kiln.models import create_model
from kiln.models.tta import infer, shift
from kiln.models.whitening import PatchWhitening

INFO = DataInfo("x", list("abcd"), 3, 16, 16, [0.5] * 3, [0.2] * 3)


def test_whitening_decorrelates_the_patches_it_was_fitted_on():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 3, generator=g)  # correlated channels of very different scales
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 16, 16, generator=g) * 3)
    layer = PatchWhitening(3, kernel_size=2).train()
    out = layer(x)  # the first training batch fits the filters
    assert bool(layer.fitted) and out.shape == (64, 24, 15, 15)
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)  # the other half: the negatives
    covariance = half.T @ half / len(half)
    assert torch.allclose(covariance, torch.eye(12), atol=0.05)
    assert torch.equal(out[:, 12:], -out[:, :12])
    before = layer.weight.clone()
    layer(x * 2)  # fitted once: later batches change nothing
    assert torch.equal(layer.weight, before)
    assert not layer.bias.grad and layer.weight.requires_grad is False


def test_whitening_is_fitted_in_training_only_and_kept_in_the_state_dict():
    model = create_model("fastnet", INFO, widths=[8, 8], whiten=True)
    model.eval()(torch.randn(2, 3, 16, 16))  # evaluation (a graph trace, say) fits nothing
    state = model.state_dict()
    assert not bool(state["stem.0.fitted"])
    model.train()(torch.randn(8, 3, 16, 16))
    copy = create_model("fastnet", INFO, widths=[8, 8], whiten=True)
    copy.load_state_dict(model.state_dict())
    assert bool(copy.stem[0].fitted)
    assert torch.equal(copy.stem[0].weight, model.stem[0].weight)
    with pytest.raises(ConfigError, match="model.stem"):
        create_model("fastnet", INFO, stem=16, whiten=True)


def test_lookahead_starts_late_and_pulls_the_weights_back():
    model = nn.Linear(2, 1, bias=False)
    total = 100
    look = Lookahead(model, total)
    start = int(START * total)
    look.after_step(start - 1)
    assert look.slow is None  # nothing before a quarter of the run
    first = start + (-start) % EVERY
    look.after_step(first)
    slow = look.slow["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # the optimizer moves the weights
    look.after_step(first + 1)  # not a lookahead step: nothing happens
    assert torch.equal(look.slow["weight"], slow)
    look.after_step(first + EVERY)
    moved = look.slow["weight"] - slow
    assert torch.all(moved > 0) and torch.all(moved < 1)  # part of the way
    assert torch.equal(model.weight.detach(), look.slow["weight"])  # the model goes on from it
    off = Lookahead(model, total, enabled=False)
    off.after_step(first)
    assert off.slow is None


def test_flip_translate_averages_six_views_and_moves_dense_outputs_back():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.LazyLinear(4)).eval()
    x = torch.randn(5, 1, 8, 8)
    pair = lambda v: (classifier(v) + classifier(v.flip(-1))) / 2  # noqa: E731
    expected = pair(x) / 2 + (pair(shift(x, -1)) + pair(shift(x, 1))) / 4
    assert torch.allclose(infer(classifier, x, "flip_translate"), expected, atol=1e-6)
    # an exported graph stacks the views into one batch and calls the model once: same answer
    assert torch.allclose(
        infer(classifier, x, "flip_translate", one_pass=True), expected, atol=1e-6
    )
    # a dense model (one score per pixel) that copies its input: every view moved back lines up
    # with the image, except at the border where the shift reflected the edge in
    same = infer(nn.Identity(), x, "flip_translate")
    assert torch.allclose(same[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1], atol=1e-6)
    assert torch.equal(infer(nn.Identity(), x, "flip_translate", one_pass=True), same)
    assert torch.equal(shift(torch.arange(9.0).view(1, 1, 3, 3), 1)[0, 0, 1:, 1:],
                       torch.arange(9.0).view(3, 3)[:2, :2])  # fmt: skip


CONFIG = {
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "fastnet", "widths": [8, 16], "whiten": True, "tta": "flip_translate"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
    "sched": {"name": "onecycle"},
    "train": {"epochs": 3, "device": "cpu", "seed": 3, "deterministic": True, "lookahead": True},
}


def train(tmp_path: Path, name: str, **kwargs):
    return kiln.train({**CONFIG, "run": {"dir": str(tmp_path), "name": name}}, progress=False,
                      **kwargs)  # fmt: skip


def test_whitened_lookahead_run_trains_and_resumes_bitwise(tmp_path: Path):
    straight = train(tmp_path, "straight")
    assert straight.test_acc > 0.25  # it learns (chance: 0.1; mirrored digits cost some)
    state = checkpoint.load(straight.path / "checkpoints" / "last.pt")
    assert state["lookahead"]["slow"] is not None
    assert bool(state["model"]["stem.0.fitted"])
    with pytest.raises(TrainingInterrupted):  # epoch 3: lookahead has begun
        train(tmp_path, "resumed", callbacks=[interrupt_at(3, 5)])
    resumed = kiln.train(resume=tmp_path / "resumed", progress=False)
    for which in ("last", "best"):
        a = checkpoint.load(straight.path / "checkpoints" / f"{which}.pt")["model"]
        b = checkpoint.load(resumed.path / "checkpoints" / f"{which}.pt")["model"]
        for key in a:
            assert torch.equal(a[key], b[key]), f"{which}.pt differs in {key}"
    assert resumed.test_acc == straight.test_acc
    answer = kiln.load(resumed.path).predict(torch.zeros(1, 8, 8, dtype=torch.uint8))
    assert answer[0]["label"] in [str(i) for i in range(10)]


def test_speed_run_net_exports_to_int8_quietly_with_its_test_time_views(tmp_path: Path, caplog):
    """FastNet's batch norm after a pool and its six test-time views, in both int8 formats: no
    log lines from ONNX Runtime's quantizer reach the user, and the ExecuTorch program loads."""
    config = {**CONFIG, "train": {**CONFIG["train"], "epochs": 1, "lookahead": False}}
    run = kiln.train({**config, "run": {"dir": str(tmp_path), "name": "fast"}}, progress=False)
    onnx = export_run(run.path, "onnx", quantize="static", output=tmp_path / "onnx",
                      log=lambda _: None)  # fmt: skip
    assert onnx.spec.parity.top1_agreement >= 0.9
    assert not [r.getMessage() for r in caplog.records if r.name == "root"]
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed")
    pte = export_run(run.path, "executorch", quantize="static", output=tmp_path / "pte",
                     log=lambda _: None)  # fmt: skip
    assert pte.spec.tta == "flip_translate" and pte.spec.parity.top1_agreement >= 0.9
    assert load_servable(pte.path).logits(torch.randn(3, 1, 8, 8)).shape == (3, 10)
