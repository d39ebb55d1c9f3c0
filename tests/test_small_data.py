"""Small data works: runs of a few steps with every schedule, a dataset of four images (the
tutorial's two cats and two dogs), a validation split that would be empty, training without one,
and no half-made run folder after a failure before the first epoch has finished."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import kiln
from kiln.config import SCHEDULERS, OptimConfig, SchedConfig
from kiln.engine.callbacks import Callback
from kiln.engine.optim import build_optimizer, build_scheduler, end_of_epoch, warmup_steps
from kiln.errors import KilnError

PETS = ("train", "data=csv", "data.csv=label.csv", "data.file_column=img")
QUICK = {"train.device": "cpu", "run.report": False}


def quick(tmp_path: Path, **overrides) -> dict:
    return {**QUICK, "run.dir": str(tmp_path / "runs"), **overrides}


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_every_schedule_steps_any_number_of_steps(name, optim):
    """No division by zero and a finite learning rate for 1 to 12 steps in all, with and without
    warm-up (one-cycle with exactly 4 steps divided by zero)."""
    for steps, epochs in [(1, 1), (2, 1), (3, 1), (4, 1), (1, 4), (5, 2), (12, 1)]:
        for warmup in (0.0, 0.05, 0.5):
            model = nn.Linear(2, 2)
            opt = build_optimizer(OptimConfig(name=optim, lr=0.1), model)
            if name == "plateau" and warmup:
                continue  # plateau has no warm-up (refused by the config check)
            cfg = SchedConfig(name=name, warmup_epochs=warmup)
            sched = build_scheduler(cfg, opt, steps, epochs)
            for _ in range(epochs):
                for _ in range(steps):
                    opt.step()
                    sched.step()
                    assert math.isfinite(opt.param_groups[0]["lr"])
                end_of_epoch(sched, 1.0)


def test_warmup_epochs_are_rounded_to_whole_steps_at_least_one():
    assert warmup_steps(0.05, 4, 4) == 1  # a twentieth of 4 steps: one step, not none
    assert warmup_steps(0.26, 10, 50) == 3  # rounded, not truncated
    assert warmup_steps(5, 10, 20) == 19  # never the whole run
    assert warmup_steps(0, 10, 20) == 0


def test_four_steps_of_one_cycle_train_on_digits(tmp_path):
    """`kiln train epochs=1 batch=400` on digits: 1,293 images in 4 batches."""
    four = {"train.epochs": 1, "data.batch_size": 400, "model.name": "mlp"}
    run = kiln.train(**quick(tmp_path, **four))
    assert len(run.history) == 1 and run.test_acc > 0.2
    run = kiln.train(**quick(tmp_path, **four, **{"sched.warmup_epochs": 0.05}))
    assert len(run.history) == 1


def four_images(root: Path, split_column: bool = False) -> Path:
    """The tutorial's custom dataset: two cats and two dogs, a label.csv with a header and
    `img,label` columns (labels 0 and 1); optionally a split column, 3 train and 1 test."""
    rng = np.random.default_rng(0)
    rows = ["img,label" + (",split" if split_column else "")]
    for i, (name, label) in enumerate([("cat1", 0), ("dog1", 1), ("cat2", 0), ("dog2", 1)]):
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        pixels[..., label * 2] = 255  # cats red, dogs blue: learnable
        Image.fromarray(pixels).save(root / f"{name}.png")
        split = ",test" if i == 3 else ",train"
        rows.append(f"{name}.png,{label}" + (split if split_column else ""))
    (root / "label.csv").write_text("\n".join(rows) + "\n")
    return root / "label.csv"


def test_four_images_train_with_defaults_and_say_the_split(cli, tmp_path):
    four_images(tmp_path)
    result = cli(*PETS, f"data.root={tmp_path}",
                 "device=cpu", "epochs=3", "run.report=false", "name=pets")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "(2 train / 1 val / 1 test)" in out, out
    assert "test" in out and "validation" in out  # the split it made, in words
    info = json.loads((tmp_path / "runs" / "pets" / "info.json").read_text())
    assert info["samples"] == {"train": 2, "val": 1, "test": 1}
    assert "val acc 0.00%" not in out or "val" in out


def test_a_split_column_without_validation_rows_fills_validation_from_training(cli, tmp_path):
    four_images(tmp_path, split_column=True)
    result = cli(*PETS, f"data.root={tmp_path}",
                 "device=cpu", "epochs=2", "sched.name=none", "run.report=false",
                 "name=pets")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "warning" in out.lower() and "validation" in out, out
    info = json.loads((tmp_path / "runs" / "pets" / "info.json").read_text())
    assert info["samples"] == {"train": 2, "val": 1, "test": 1}


def test_without_validation_the_last_checkpoint_is_the_best(cli, tmp_path):
    four_images(tmp_path, split_column=True)
    result = cli(*PETS, f"data.root={tmp_path}",
                 "data.val_fraction=0", "device=cpu", "epochs=2", "name=pets")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert out.count("without validation") == 1, out
    assert "val acc 0.00%" not in out
    run = tmp_path / "runs" / "pets"
    info = json.loads((run / "info.json").read_text())
    assert info["samples"] == {"train": 3, "val": 0, "test": 1}
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert best["epoch"] == last["epoch"] == 2
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train_acc" in header and "val_acc" not in header
    assert (run / "report.html").is_file()
    exported = cli("export", run, "--format", "torchscript")  # parity on the test images
    assert exported.returncode == 0, exported.stderr
    assert "test images" in exported.stdout


def test_validation_less_runs_refuse_early_stopping_on_validation(tmp_path):
    with pytest.raises(KilnError, match="no validation"):
        kiln.train(**quick(tmp_path, **{"data.val_fraction": 0, "train.epochs": 2,
                                       "model.name": "mlp",
                                       "train.early_stop.patience": 2}))  # fmt: skip
    assert not list((tmp_path / "runs").iterdir())


class Boom(Callback):
    def on_batch_end(self, trainer, epoch, step):
        raise RuntimeError("boom in the first epoch")


def test_any_failure_before_the_first_epoch_ends_leaves_no_run_folder(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        kiln.train(**quick(tmp_path, **{"train.epochs": 1, "model.name": "mlp"}),
                   callbacks=[Boom()])  # fmt: skip
    assert not list((tmp_path / "runs").iterdir())
