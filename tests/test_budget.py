"""Training to a time budget (`train.time`): the epochs fitted to it, the schedule ending exactly
at the last epoch, a clean stop when time runs out mid-epoch, resume summing the time spent, and a
budget per trial under `kiln tune`.

The budget's clock (kiln.engine.budget.now) is replaced by one that advances a fixed step per
reading, so that "time" is proportional to the batches trained: the plans are the same however
busy the machine is, and nothing here measures real time."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import interrupt_at, kiln_env

import kiln
from kiln.config import build_config
from kiln.engine import budget
from kiln.engine.budget import batches_that_fit, show
from kiln.engine.optim import one_cycle_start
from kiln.engine.stopping import TrainingInterrupted
from kiln.errors import ConfigError, RunError

TINY = {
    "data.subset": 512, "model.name": "mlp", "model.hidden": [32], "train.device": "cpu",
    "run.report": False, "optim.lr": 0.01,
}  # fmt: skip


class Clock:
    """Advances `tick` seconds at each reading."""

    def __init__(self, tick: float = 0.1):
        self.t, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(budget, "now", fake)
    return fake


def train(tmp_path: Path, name: str, callbacks=None, **overrides):
    settings = {**TINY, "run.dir": str(tmp_path / "runs"), "run.name": name, **overrides}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        run = kiln.train(callbacks=callbacks, progress=True,
                         **{k.replace(".", "__"): v for k, v in settings.items()})  # fmt: skip
    return run, out.getvalue()


def record(run) -> dict:
    return json.loads((Path(run.path) / "info.json").read_text())["budget"]


def planned_from_the_start(run, epochs: int) -> float:
    """The last epoch's rate of a one-cycle schedule built from the start for the plan's batches
    (`epochs`, the last one maybe cut short)."""
    info = json.loads((Path(run.path) / "info.json").read_text())
    steps = -(-info["samples"]["train"] // run.config.data.batch_size)  # batches per epoch
    total = (epochs - 1) * steps + (info["budget"]["last_epoch_batches"] or steps)
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([weight], lr=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        0.01,
        total_steps=total,
        pct_start=one_cycle_start(round(0.25 * total), total),  # as kiln.engine.optim
    )
    for _ in range(total):
        optimizer.step()
        schedule.step()
    return optimizer.param_groups[0]["lr"]


def test_durations_read_as_people_write_them():
    times = [build_config(None, {"train.time": v}).train.time for v in ("90s", "10m", "1.5h", 45)]
    assert times == [90.0, 600.0, 5400.0, 45.0]
    for bad in ("ten minutes", "5d", "-3s"):
        with pytest.raises(ConfigError, match="train.time"):
            build_config(None, {"train.time": bad})
    assert (show(12.34), show(90), show(5400)) == ("12.3s", "1m 30s", "1h 30m")


def test_whole_epochs_fit_then_part_of_one_when_a_quarter_fits():
    # epochs of 100 batches: 9 s of training and 1 s of validation each
    assert batches_that_fit(100.0, 10.0, 0.09, 1.0, 100) == 1000
    assert batches_that_fit(105.0, 10.0, 0.09, 1.0, 100) == 1044  # 4 s left after validating
    assert batches_that_fit(103.0, 10.0, 0.09, 1.0, 100) == 1000  # 22 batches: under a quarter
    assert batches_that_fit(101.5, 10.0, 0.09, 1.0, 100) == 1000  # not even its validation
    assert batches_that_fit(4.0, 10.0, 0.09, 1.0, 100) == 33
    assert batches_that_fit(-5.0, 10.0, 0.09, 1.0, 100) == 0


def test_the_schedule_ends_exactly_at_the_budgets_last_epoch(clock, tmp_path):
    run, out = train(tmp_path, "fit", **{"train.time": 8})
    rec = record(run)
    epochs = len(run.history)
    assert epochs >= 2 and rec["planned_epochs"] == epochs == rec["epochs"]
    assert rec["seconds"] == 8 and rec["spent_seconds"] <= 8
    assert rec["plans"][0]["when"].startswith("epoch 1, batch")  # planned within epoch 1
    assert run.history[-1]["lr"] == pytest.approx(planned_from_the_start(run, epochs), rel=1e-6)
    assert "Time budget 8.0s" in out and f"{epochs} epochs" in out
    assert run.test is not None  # best.pt evaluated on the test split
    longer, _ = train(tmp_path, "longer", **{"train.time": 16})
    assert len(longer.history) > epochs


@pytest.mark.parametrize("sched", ["cosine", "step"])
def test_cosine_and_step_schedules_follow_the_plan(clock, tmp_path, sched):
    run, _ = train(tmp_path, sched, **{"train.time": 8, "sched.name": sched, "sched.step_size": 4,
                                      "train.epochs": 8})  # fmt: skip
    epochs, lrs = len(run.history), [row["lr"] for row in run.history]
    if sched == "cosine":  # the decay reaches zero at the last step of the last epoch
        assert lrs[-1] == pytest.approx(0.0, abs=1e-9) and max(lrs) <= 0.01
    else:  # step_size=4 of train.epochs=8: a decay every half of the planned epochs
        info = json.loads((Path(run.path) / "info.json").read_text())
        steps = -(-info["samples"]["train"] // run.config.data.batch_size)
        total = (epochs - 1) * steps + (info["budget"]["last_epoch_batches"] or steps)
        every = round(steps * 4 * epochs / 8)
        assert lrs[-1] == pytest.approx(0.01 * 0.1 ** (total // every))
        assert lrs[0] == pytest.approx(0.01) and lrs[-1] < 0.01


def test_a_budget_shorter_than_an_epoch_trains_part_of_it(clock, tmp_path):
    run, out = train(tmp_path, "short", **{"train.time": 3, "data.subset": None})  # 21 batches
    rec = record(run)
    assert "less than one epoch fits" in rec["reason"] and len(run.history) == 1
    (cut,) = [plan["steps"] for plan in rec["plans"] if "steps" in plan]
    assert 6 <= cut < 21  # timed five batches, then cut before the epoch's end
    assert f"the first {cut} of its" in out
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([weight], lr=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 0.01, total_steps=cut, pct_start=one_cycle_start(round(0.25 * cut), cut)
    )
    for _ in range(cut):
        optimizer.step()
        schedule.step()
    assert run.history[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6)


def test_time_running_out_mid_epoch_ends_cleanly_with_the_best_checkpoint(clock, tmp_path):
    """The machine slows down twentyfold in the third epoch: that epoch is dropped, the run
    ends with best.pt evaluated, and the reason is on record."""
    from kiln.engine.callbacks import Callback

    class SlowDown(Callback):
        def on_epoch_start(self, trainer, epoch: int) -> None:
            if epoch == 3:
                clock.tick *= 20

    run, _ = train(tmp_path, "slow", callbacks=[SlowDown()], **{"train.time": 8})
    rec = record(run)
    assert "ran out during epoch 3" in rec["reason"]
    assert rec["epochs"] == len(run.history) == 2 and rec["planned_epochs"] > 2
    assert (Path(run.path) / "eval-test.json").is_file() and run.test is not None


def test_resume_adds_to_the_time_spent_before(clock, tmp_path):
    with pytest.raises(TrainingInterrupted):
        with contextlib.redirect_stdout(io.StringIO()):
            kiln.train(callbacks=[interrupt_at(2, 3)], **{k.replace(".", "__"): v for k, v in {
                **TINY, "train.time": 8, "run.dir": str(tmp_path / "runs"), "run.name": "r",
            }.items()})  # fmt: skip
    path = tmp_path / "runs" / "r"
    before = torch.load(path / "checkpoints" / "last.pt", weights_only=True)["budget"]["spent"]
    with contextlib.redirect_stdout(io.StringIO()):
        run = kiln.train(resume=path)
    rec = record(run)
    assert rec["spent_seconds"] > before and rec["planned_epochs"] == len(run.history)
    assert any(plan["when"] == "resumed" for plan in rec["plans"])
    last = run.history[-1]["lr"]
    assert last == pytest.approx(planned_from_the_start(run, len(run.history)), rel=1e-6)
    with pytest.raises(RunError, match="used its time budget"):
        kiln.train(resume=path)
    with pytest.raises(ConfigError, match="already spent"):
        kiln.train(resume=path, train__time=1)


def test_a_tune_study_gives_each_trial_the_budget(clock, tmp_path):
    from kiln.cli import main

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "digits", "subset": 512}, "model": {"name": "mlp", "hidden": [16]},
        "train": {"device": "cpu", "time": "4s"}, "run": {"report": False},
        "tune": {"space": {"optim.lr": {"choice": [0.003, 0.01]}}, "pruner": "none"},
    }))  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for key, value in kiln_env(tmp_path / "data").items():
            mp.setenv(key, value)
        mp.chdir(tmp_path)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["tune", str(config), "--trials", "2"]) == 0
    trials = sorted((tmp_path / "runs" / "study").glob("trial-*/info.json"))
    assert len(trials) == 2
    for info in trials:
        rec = json.loads(info.read_text())["budget"]
        assert rec["seconds"] == 4 and rec["spent_seconds"] <= 4 and rec["epochs"] >= 1
