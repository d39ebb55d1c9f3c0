"""The task registry: `kiln list tasks`, a clear error for an unknown task, and a task of your
own (one file, one decorator) training through the unchanged loop with its own metric."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import yaml
from conftest import assert_clean_error

from kiln.tasks import TASKS, direction

BRIER_TASK = """
import torch
from torch import nn

from kiln.tasks import register_task


@register_task("brier", "classification trained on the Brier score")
class BrierTask:
    metric = "brier"
    higher_is_better = False

    @classmethod
    def build(cls, cfg, data, device):
        return cls()

    @staticmethod
    def per_sample(logits, labels):
        onehot = nn.functional.one_hot(labels, logits.shape[1]).float()
        return ((logits.softmax(dim=1) - onehot) ** 2).sum(dim=1)

    def train_loss(self, logits, labels):
        return self.per_sample(logits, labels).mean()

    def eval_loss(self, logits, labels):
        return self.per_sample(logits, labels).sum()

    def score(self, logits, labels):
        return self.per_sample(logits, labels).sum()
"""


def test_list_tasks(cli):
    result = cli("list", "tasks")
    assert result.returncode == 0, result.stderr
    assert "classify" in result.stdout and "acc (higher is better)" in result.stdout
    assert "@kiln.tasks.register_task" in result.stdout


def test_unknown_task_is_refused(cli):
    assert_clean_error(cli("train", "task=segmentation", "epochs=1"), "unknown task 'segmentation'",
                       "classify")  # fmt: skip


def test_monitor_must_be_logged_by_the_task(cli):
    result = cli("train", "train.early_stop.monitor=val_rmse", "epochs=1")
    assert_clean_error(result, "task 'classify' logs", "val_acc", "not 'val_rmse'")


def test_classify_is_registered_with_its_metric():
    assert TASKS["classify"].cls.metric == "acc"
    assert direction("val_acc") == "max" and direction("val_loss") == "min"


def test_a_task_of_your_own_trains_with_its_metric(cli, tmp_path: Path):
    (tmp_path / "brier_task.py").write_text(BRIER_TASK)
    result = cli(
        "train", "task=brier", "imports=[brier_task]", "model=mlp", "model.hidden=[32]",
        "epochs=3", "lr=0.01", "run.report=false", "name=brier",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "val loss" in result.stdout and "brier 0." in result.stdout
    run = tmp_path / "runs" / "brier"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == "brier"
    assert config["train"]["early_stop"]["monitor"] == "val_brier"  # auto -> the task's metric
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert {"train_brier", "val_brier"} <= set(rows[0]) and "val_acc" not in rows[0]
    scores = [float(r["val_brier"]) for r in rows]
    assert all(0 <= s <= 2 for s in scores) and scores[-1] < scores[0]  # it learns
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 1 + scores.index(min(scores))  # lower is better for this metric


def test_a_model_made_for_another_task_names_the_task_to_set(cli, tmp_path: Path):
    result = cli("train", "model=unet", "epochs=1")
    assert_clean_error(result, "model=unet is made for task=segment", "add task=segment")
    assert not (tmp_path / "runs").exists()  # found before anything was made


def test_task_keys_live_in_the_tasks_own_section(cli):
    moved = cli("train", "train.dice_weight=0.5", "epochs=1")
    assert_clean_error(moved, "train.dice_weight", "moved to segment.dice_weight")
    other = cli("train", "gan.frechet_classifier=runs/x", "epochs=1")
    assert_clean_error(other, "gan: this section is for task=gan", "task=classify")
    typo = cli("train", "segment.dice_weigt=0.5", "task=segment", "epochs=1")
    assert_clean_error(typo, "segment.dice_weigt")


def test_results_are_the_tasks_own_for_every_task(tmp_path: Path):
    """Run's numbers and `kiln compare` for a regression run beside a classifier."""
    import kiln
    from kiln.evaluate.compare import columns, load_runs

    def tiny(name: str, **over):
        cfg = {"model": {"name": "mlp", "hidden": [16]}, "train": {"epochs": 2},
               "run": {"dir": str(tmp_path), "name": name, "report": False}}  # fmt: skip
        return kiln.train(cfg, progress=False, **over)

    regress = tiny("diabetes", task="regress", data="diabetes")
    assert regress.test_acc is None and regress.best_val_acc is None
    assert regress.monitor == "val_rmse"
    assert regress.best == min(row["val_rmse"] for row in regress.history)
    assert regress.metrics["test"]["rmse"] == regress.test["rmse"] > 0
    classify = tiny("digits")
    assert classify.best == classify.best_val_acc == max(r["val_acc"] for r in classify.history)
    runs = load_runs([classify.path, regress.path])
    rows = [r.summary() for r in runs]
    assert rows[0]["best"] == classify.best and rows[0]["test"] == classify.test["accuracy"]
    assert rows[1]["best"] == regress.best and rows[1]["test"] == regress.test["rmse"]
    headers = [header for _, header, _ in columns(runs)]
    assert "best (monitored)" in headers  # two monitored metrics: each cell names its own
    from kiln.evaluate.compare import curves_figure

    titles = [ax.get_title() for ax in curves_figure(runs).axes]
    assert titles == ["train loss", "validation loss", "validation acc", "validation rmse"]
