from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import kiln
from kiln import checkpoint
from kiln.config import OptimConfig, SchedConfig
from kiln.engine.optim import build_optimizer, build_scheduler
from kiln.engine.trainer import EarlyStopping
from kiln.errors import ConfigError, RunError


def lrs(sched_cfg: SchedConfig, steps_per_epoch=10, epochs=5) -> list[float]:
    model = nn.Linear(2, 2)
    opt = build_optimizer(OptimConfig(name="sgd", lr=0.1), model)
    sched = build_scheduler(sched_cfg, opt, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_every_optimizer_builds_and_steps(name):
    model = nn.Linear(3, 2)
    opt = build_optimizer(OptimConfig(name=name, lr=0.01, weight_decay=1e-4), model)
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_schedules():
    constant = lrs(SchedConfig(name="none"))
    assert set(constant) == {0.1}
    warm = lrs(SchedConfig(name="cosine", warmup_epochs=1))
    assert warm[:10] == sorted(warm[:10]) and warm[9] == pytest.approx(0.1)
    assert warm[10:] == sorted(warm[10:], reverse=True) and warm[-1] < 0.002
    step = lrs(SchedConfig(name="step", step_size=2, gamma=0.5))
    assert step[0] == 0.1 and step[20] == pytest.approx(0.05) and step[40] == pytest.approx(0.025)
    one = lrs(SchedConfig(name="onecycle"))
    peak = one.index(max(one))
    assert 0 < peak < len(one) - 1 and max(one) == pytest.approx(0.1, rel=1e-3) and one[-1] < 1e-4


def test_early_stopping_counts_epochs_without_improvement():
    es = EarlyStopping("val_loss", "min", patience=2)
    assert es.update(1.0, 1) and not es.update(1.0, 2) and not es.should_stop
    assert not es.update(1.1, 3) and es.should_stop and es.best_epoch == 1
    es2 = EarlyStopping("val_acc", "max", None)
    for epoch in range(1, 10):
        es2.update(0.5, epoch)
    assert not es2.should_stop


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save({"model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_checkpoint_load_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": Evil()}, path)
    with pytest.raises(RunError, match="does not load code from checkpoints"):
        checkpoint.load(path)


def test_early_stop_ends_training_and_best_checkpoint_tracks_monitor(tmp_path):
    run = kiln.train(
        None,
        progress=False,
        epochs=30,
        run__dir=str(tmp_path),
        model__name="mlp",
        model__hidden=[16],
        train__early_stop__monitor="val_loss",
        train__early_stop__patience=2,
        sched__name="none",
        lr=0.05,
    )
    losses = [row["val_loss"] for row in run.history]
    assert len(run.history) < 30
    best_epoch = losses.index(min(losses)) + 1
    assert checkpoint.load(Path(run.path) / "checkpoints" / "best.pt")["epoch"] == best_epoch
    assert len(run.history) == best_epoch + 2


@pytest.mark.parametrize(
    "extra",
    [
        {"train__precision": "bf16"},
        {"optim__l1": 1e-5, "train__grad_clip": 1.0, "optim__name": "sgd", "lr": 0.05},
    ],
)
def test_training_options_run(tmp_path, extra):
    run = kiln.train(None, progress=False, epochs=2, run__dir=str(tmp_path), **extra)
    assert run.history[-1]["val_acc"] > 0.5


def test_fp16_on_cpu_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        kiln.train(
            None,
            progress=False,
            train__precision="fp16",
            train__device="cpu",
            run__dir=str(tmp_path / "runs"),
        )
    assert not (tmp_path / "runs").exists()


def test_run_names_do_not_collide(tmp_path):
    a = kiln.train(None, progress=False, epochs=1, run__dir=str(tmp_path), name="x")
    b = kiln.train(None, progress=False, epochs=1, run__dir=str(tmp_path), name="x")
    assert (a.path.name, b.path.name) == ("x", "x-2")


def test_run_directory_contents(tmp_path):
    import csv
    import json

    import yaml

    run = kiln.train(None, progress=False, epochs=2, run__dir=str(tmp_path), name="d")
    p = Path(run.path)
    cfg = yaml.safe_load((p / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["width"] == 32  # defaults filled
    info = json.loads((p / "info.json").read_text())
    assert info["classes"] == [str(i) for i in range(10)] and info["input_shape"] == [1, 8, 8]
    assert info["versions"]["torch"].startswith("2.14.1") and info["seed"] == 0
    rows = list(csv.DictReader((p / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "seconds",
        "samples_per_s",
    } <= set(rows[0])
    assert (p / "checkpoints" / "last.pt").is_file() and (p / "checkpoints" / "best.pt").is_file()
    assert any((p / "tb").iterdir())
    assert json.loads((p / "eval-test.json").read_text())["accuracy"] == run.test_acc


def test_predictor_api_accepts_paths_pil_and_tensors(tmp_path):
    from PIL import Image

    from kiln import data as kdata
    from kiln.config import DataConfig

    run = kiln.train(
        None, progress=False, run__dir=str(tmp_path), model__name="mlp", model__hidden=[64]
    )
    predictor = kiln.load(run.path)
    test = kdata.build(DataConfig()).test
    tensors = test.images[:50]
    by_tensor = predictor.predict(tensors, top_k=2)
    accuracy = (
        sum(int(r["label"]) == int(y) for r, y in zip(by_tensor, test.labels[:50], strict=True))
        / 50
    )
    assert accuracy > 0.85
    pil = Image.fromarray(tensors[0, 0].numpy()).resize((40, 40)).convert("RGBA")
    path = tmp_path / "digit.png"
    pil.save(path)
    single = predictor.predict(path)
    assert single[0]["file"] == str(path) and len(single[0]["top_k"]) == 3
    assert predictor.predict(pil)[0]["label"] == single[0]["label"]


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def test_a_model_of_your_own_trains_loads_and_resumes(tmp_path):
    run = kiln.train(
        None, model=TinyNet(), progress=False, epochs=10, lr=3e-3, run__dir=str(tmp_path)
    )
    assert run.config.model.name == "custom" and run.test_acc > 0.8
    with pytest.raises(RunError, match="model=YourModel"):
        kiln.load(run.path)
    predictor = kiln.load(run.path, model=TinyNet())
    blank = torch.zeros(1, 8, 8, dtype=torch.uint8)
    assert predictor.predict(blank)[0]["label"] in predictor.classes
    with pytest.raises(RunError, match="model=YourModel"):
        kiln.train(resume=run.path, epochs=11, progress=False)
    more = kiln.train(resume=run.path, epochs=11, model=TinyNet(), progress=False)
    assert len(more.history) == 11
