"""The knobs the tutorials turn: fixed normalization values, how images are resized, drop_last,
Adam's betas and eps, ReduceLROnPlateau, loss every N steps in TensorBoard, CSV columns by
position."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import interrupt_at
from PIL import Image
from torch import nn

import kiln
from kiln import checkpoint
from kiln import data as kdata
from kiln.config import DataConfig, OptimConfig, SchedConfig, build_config
from kiln.data import MemoryLoader, Normalize, Split, WorkerLoader
from kiln.data.images import decode
from kiln.data.scan import scan_csv
from kiln.engine.optim import Plateau, build_optimizer, build_scheduler, end_of_epoch
from kiln.engine.trainer import TrainingInterrupted
from kiln.errors import ConfigError, DataError

QUICK = {"train.device": "cpu", "run.report": False, "model.name": "mlp", "model.hidden": [32]}


def train(tmp_path: Path, **overrides) -> kiln.Run:
    return kiln.train(progress=False, **{**QUICK, "run.dir": str(tmp_path / "runs"), **overrides})


# data.normalize ----------------------------------------------------------------------------------
def test_normalize_takes_the_tutorials_fixed_values():
    cfg = build_config(None, ["data.normalize={mean: [0.5], std: [0.5]}"])
    info = kdata.build(cfg.data).info
    assert info.mean == [0.5] and info.std == [0.5]
    x = Normalize(info.mean, info.std, "cpu")(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
    assert x.flatten().tolist() == pytest.approx([-1.0, 1.0])  # ToTensor then Normalize(0.5, 0.5)
    assert kdata.build(DataConfig(normalize=False)).info.mean == [0.0]


def test_normalize_values_must_fit_the_channels(tmp_path):
    folder = tmp_path / "rgb"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(folder / name / f"{i}.png")
    cfg = DataConfig(name="folder", root=str(folder), normalize={"mean": [0.5, 0.5], "std": [1]})
    with pytest.raises(ConfigError, match="data.normalize.mean has 2 values.*3 channel"):
        kdata.build(cfg)
    three = DataConfig(name="folder", root=str(folder), normalize={"mean": [0.5], "std": [0.25]})
    assert kdata.build(three).info.std == [0.25, 0.25, 0.25]
    with pytest.raises(ConfigError, match="data.normalize: .*std: every std must be above 0"):
        build_config(None, ["data.normalize={mean: [0.5], std: [0]}"])


# data.resize -------------------------------------------------------------------------------------
def wide_image() -> Image.Image:
    """40 x 20: the left half white, the right half grey."""
    pixels = np.full((20, 40), 128, np.uint8)
    pixels[:, :20] = 255
    return Image.fromarray(pixels, "L")


def test_resize_cover_fit_and_stretch():
    cover = decode(wide_image(), 1, 20, 20, "cover")[0]
    assert cover[:, :8].eq(255).all() and cover[:, 12:].eq(128).all()  # the middle, cropped
    fit = decode(wide_image(), 1, 20, 20, "fit")[0]
    assert fit[:5].eq(0).all() and fit[15:].eq(0).all()  # black bars above and below
    assert fit[6:14, :9].eq(255).all() and fit[6:14, 11:].eq(128).all()  # the whole image
    stretch = decode(wide_image(), 1, 20, 20, "stretch")[0]
    assert stretch[:, :9].eq(255).all() and stretch[:, 11:].eq(128).all()  # all of it, squeezed
    assert stretch.ne(0).all()


def test_resize_reaches_training_prediction_and_the_export_sidecar(tmp_path):
    """A run trained with data.resize=fit predicts (and exports) with the same letterbox."""
    from kiln.deploy.export import export_run
    from kiln.infer import load_predictor

    folder = tmp_path / "images"
    for name, shade in (("light", 220), ("dark", 30)):
        (folder / name).mkdir(parents=True)
        for i in range(6):  # 16x16 mostly, and wide ones that must be letterboxed
            size = (32, 16) if i % 3 == 0 else (16, 16)
            Image.new("L", size, shade + i).save(folder / name / f"{i}.png")
    run = train(tmp_path, **{"data.name": "folder", "data.root": str(folder),
                             "data.resize": "fit", "train.epochs": 1})  # fmt: skip
    assert json.loads((run.path / "info.json").read_text())["resize"] == "fit"
    probe = tmp_path / "probe.png"
    wide_image().save(probe)
    predictor = load_predictor(run.path)
    info = predictor.info
    want = (decode(probe, 1, 16, 16, "fit").float() / 255 - info.mean[0]) / info.std[0]
    assert torch.allclose(predictor.preprocess(probe), want)
    result = export_run(run.path, "state_dict", output=tmp_path / "export", log=lambda _: None)
    assert "pad" in result.spec.input.resize
    exported = load_predictor(result.path)
    assert torch.allclose(exported.preprocess(probe), want)


# data.drop_last ----------------------------------------------------------------------------------
def test_drop_last_leaves_out_the_last_smaller_batch():
    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    norm = Normalize([0.0], [1.0], "cpu")
    for loader in (
        MemoryLoader(split, 4, norm, shuffle=True, generator=torch.Generator(), drop_last=True),
        WorkerLoader(split, 4, norm, shuffle=True, generator=torch.Generator(), drop_last=True),
    ):
        sizes = [len(y) for _, y in loader]
        assert len(loader) == 2 and sizes == [4, 4]
    assert [len(y) for _, y in MemoryLoader(split, 4, norm)] == [4, 4, 2]


def test_drop_last_with_no_full_batch_is_refused_before_a_run_exists(tmp_path):
    with pytest.raises(ConfigError, match="data.drop_last"):
        train(tmp_path, **{"data.subset": 50, "data.batch_size": 64, "data.drop_last": True})
    assert not list((tmp_path / "runs").iterdir())


# optim.betas, optim.eps ------------------------------------------------------------------------
def test_adam_betas_and_eps_from_the_config():
    model = nn.Linear(2, 2)
    opt = build_optimizer(OptimConfig(name="adam", betas=[0.5, 0.9], eps=1e-6), model)
    assert opt.param_groups[0]["betas"] == (0.5, 0.9) and opt.param_groups[0]["eps"] == 1e-6
    gan_like = build_optimizer(OptimConfig(name="adamw", betas=[0.8, 0.99]), model,
                               betas=(0.5, 0.999))  # fmt: skip
    assert gan_like.param_groups[0]["betas"] == (0.8, 0.99)  # what the config says wins
    sched = build_scheduler(SchedConfig(name="onecycle"), opt, 10, 2, cycle_momentum=False)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["betas"] == (0.5, 0.9)  # one-cycle leaves set betas alone
    with pytest.raises(ConfigError, match="optim.betas is for adam and adamw"):
        build_config(None, ["optim.name=sgd", "optim.betas=[0.9, 0.99]"])
    with pytest.raises(ConfigError, match="optim.betas"):
        build_config(None, ["optim.betas=[0.9]"])


# sched.name=plateau ------------------------------------------------------------------------------
def test_plateau_lowers_the_lr_when_the_metric_stops_improving():
    opt = build_optimizer(OptimConfig(name="sgd", lr=0.1), nn.Linear(2, 2))
    sched = build_scheduler(SchedConfig(name="plateau", patience=1, gamma=0.5), opt, 5, 10, "max")
    assert isinstance(sched, Plateau)
    lrs = []
    for accuracy in (0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7):
        for _ in range(5):  # per batch: nothing happens
            opt.step()
            sched.step()
        end_of_epoch(sched, accuracy)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    with pytest.raises(ConfigError, match="plateau has no warm-up"):
        build_config(None, ["sched.name=plateau", "sched.warmup_epochs=1"])


PLATEAU = {
    "data.subset": 320, "data.batch_size": 32, "optim.name": "sgd", "optim.lr": 0.5,
    "sched.name": "plateau", "sched.patience": 0, "sched.gamma": 0.5, "train.epochs": 5,
    "train.seed": 3, "train.deterministic": True, "train.early_stop.monitor": "val_loss",
}  # fmt: skip


def test_plateau_is_checkpointed_and_resumed_exactly(tmp_path):
    straight = train(tmp_path, **PLATEAU, **{"run.name": "straight"})
    lrs = [row["lr"] for row in straight.history]
    assert lrs[-1] < lrs[0], lrs  # the schedule acted, so resuming it has something to get right
    with pytest.raises(TrainingInterrupted):
        kiln.train(progress=False, callbacks=[interrupt_at(3, 4)],
                   **{**QUICK, "run.dir": str(tmp_path / "runs"), **PLATEAU,
                      "run.name": "resumed"})  # fmt: skip
    resumed = kiln.train(resume=tmp_path / "runs" / "resumed", progress=False)
    assert [row["lr"] for row in resumed.history] == lrs
    a = checkpoint.load(straight.path / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(resumed.path / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# run.log_every -----------------------------------------------------------------------------------
def test_log_every_writes_the_mean_loss_of_every_n_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tmp_path, **{"run.log_every": 5, "train.epochs": 2, "data.subset": 320,
                             "data.batch_size": 32})  # fmt: skip
    events = EventAccumulator(str(run.path / "tb" / "steps"), size_guidance={"scalars": 0})
    events.Reload()
    losses = events.Scalars("step/train_loss")
    assert [e.step for e in losses] == [5, 10, 15, 20]  # 10 steps an epoch, 2 epochs
    assert all(0 < e.value < 5 for e in losses) and losses[-1].value < losses[0].value
    assert len(events.Scalars("step/lr")) == 4


# data.file_column / label_column by position ------------------------------------------------------
def test_csv_columns_by_position_as_the_tutorial_reads_them(tmp_path):
    for name in ("cat1", "dog1"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    (tmp_path / "label.csv").write_text("img,label\ncat1.png,0\ndog1.png,1\n")
    scan = scan_csv(tmp_path / "label.csv", tmp_path, 0, 1)
    assert [s.path.name for s in scan.samples] == ["cat1.png", "dog1.png"]
    assert [s.label for s in scan.samples] == ["0", "1"]
    with pytest.raises(DataError, match=r"data.label_column=2: .*2 columns \(img, label\)"):
        scan_csv(tmp_path / "label.csv", tmp_path, 0, 2)
    cfg = build_config(None, ["data.file_column=0", "data.label_column=1"])
    assert (cfg.data.file_column, cfg.data.label_column) == (0, 1)
    saved = yaml.safe_load(cfg.to_yaml())["data"]
    assert saved["file_column"] == 0  # a position stays a position in config.yaml
