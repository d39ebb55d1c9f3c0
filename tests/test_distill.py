"""Knowledge distillation (`distill.teacher=RUN`): a small student learns more from a trained
teacher than from the labels alone, without augmentation the teacher runs once per training
sample and teaches the same, segmentation distills pixel by pixel, and a teacher it cannot learn
from is refused in one line before any run folder is made."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import assert_clean_error
from test_segment import write_seg_folder

import kiln
from kiln.engine import distill
from kiln.tasks import Teacher
from kiln.tasks.common import soft_kl

STUDENT = {"model__name": "mlp", "model__hidden": [32], "epochs": 20, "data__subset": 150,
           "optim__lr": 1e-2, "data__batch_size": 16, "train__seed": 0, "device": "cpu",
           "run__report": False, "progress": False}  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A convnet trained on all of digits' training split: the teacher."""
    work = tmp_path_factory.mktemp("teacher")
    run = kiln.train(model__name="convnet", epochs=3, device="cpu", run__report=False,
                     run__dir=str(work / "runs"), run__name="teacher", progress=False)  # fmt: skip
    return run.path


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """`kiln ARGS...` in this process, from tmp_path; returns (returncode, stdout, stderr)."""
    from kiln.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KILN_OFFLINE", "1")

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def test_soft_kl_is_zero_for_the_same_scores_and_grows_with_disagreement():
    logits = torch.randn(6, 10)
    assert soft_kl(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    near, far = logits + 0.1 * torch.randn(6, 10), torch.randn(6, 10) * 3
    assert 0 < soft_kl(near, logits, 4.0) < soft_kl(far, logits, 4.0)
    masks = torch.randn(2, 3, 5, 7)  # per pixel: the class axis is dim 1
    assert soft_kl(masks, masks, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_a_distilled_student_beats_the_student_alone(teacher: Path, tmp_path: Path):
    runs = str(tmp_path / "runs")
    alone = kiln.train(**STUDENT, run__dir=runs, run__name="alone")
    taught = kiln.train(**STUDENT, run__dir=runs, run__name="taught",
                        distill__teacher=str(teacher))  # fmt: skip
    assert taught.config.distill.teacher == str(teacher)  # recorded in config.yaml
    assert yaml.safe_load((taught.path / "config.yaml").read_text())["distill"]["alpha"] == 0.7
    assert taught.test_acc > alone.test_acc, (taught.test_acc, alone.test_acc)


FORWARD = Teacher.__call__


def count_teacher_images(monkeypatch) -> list[int]:
    """The number of images in every call of a teacher's forward pass, from now on."""
    calls: list[int] = []

    def counted(self, x):
        calls.append(len(x))
        return FORWARD(self, x)

    monkeypatch.setattr(Teacher, "__call__", counted)
    return calls


def test_without_augmentation_the_teacher_runs_once_per_sample_and_teaches_the_same(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    runs, epochs, batch = str(tmp_path / "runs"), STUDENT["epochs"], STUDENT["data__batch_size"]
    common = {**STUDENT, "run__dir": runs, "distill__teacher": str(teacher)}
    once = count_teacher_images(monkeypatch)
    cached = kiln.train(**common, run__name="cached")
    monkeypatch.setattr(distill, "CACHE_BYTES", 0)  # too big to keep: computed on every batch
    every = count_teacher_images(monkeypatch)
    per_batch = kiln.train(**common, run__name="per-batch")

    samples = sum(once)  # one inference pass over the training split
    assert 0 < samples <= STUDENT["data__subset"]
    _, *steps = every  # the first call found the outputs too big to keep
    assert sum(steps) == epochs * samples  # every sample of every epoch, one call per step
    assert len(steps) == epochs * math.ceil(samples / batch)
    for a, b in zip(cached.history, per_batch.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert cached.test_acc == pytest.approx(per_batch.test_acc, abs=1 / 360)


def test_the_log_says_whether_teacher_outputs_are_computed_once_or_every_batch(
    teacher: Path, run_cli, monkeypatch: pytest.MonkeyPatch
):
    calls = count_teacher_images(monkeypatch)
    train = ("train", "model=mlp", "epochs=2", "data.subset=100", "device=cpu",
             "run.report=false", f"distill.teacher={teacher}")  # fmt: skip
    plain = run_cli(*train, "name=plain")
    assert plain.returncode == 0, plain.stderr
    assert "Teacher: outputs computed once for the" in plain.stdout + plain.stderr
    once = sum(calls)
    calls.clear()
    flipped = run_cli(*train, "name=flipped", "data.augment=[flip]")
    assert flipped.returncode == 0, flipped.stderr
    line = "Teacher: outputs computed on every batch (data.augment: flip"
    assert line in flipped.stdout + flipped.stderr
    assert sum(calls) == 2 * once  # the augmented images of both epochs


def test_segmentation_learns_from_a_teacher_pixel_by_pixel(tmp_path: Path):
    root = write_seg_folder(tmp_path / "seg", n_train=32, n_test=4)
    common = {"task": "segment", "data__name": "seg-folder", "data__root": str(root),
              "model__name": "unet", "model__depth": 2, "epochs": 2, "optim__lr": 0.01,
              "data__batch_size": 8, "device": "cpu", "run__report": False,
              "run__dir": str(tmp_path / "runs"), "progress": False}  # fmt: skip
    big = kiln.train(**common, model__width=8, run__name="big")
    small = kiln.train(**common, model__width=4, run__name="small",
                       distill__teacher=str(big.path), distill__temperature=2.0)  # fmt: skip
    rows = small.history
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    assert 0.0 <= small.test["miou"] <= 1.0


def fake_teacher(teacher: Path, tmp_path: Path, name: str, edit) -> Path:
    """A copy of the teacher run with one thing changed."""
    copy = Path(shutil.copytree(teacher, tmp_path / name))
    edit(copy)
    return copy


def test_a_teacher_the_model_cannot_learn_from_is_refused_in_one_line(teacher, tmp_path, run_cli):
    def task(task_name):
        def edit(run: Path) -> None:
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "task": task_name}))

        return edit

    def classes(run: Path) -> None:
        info = json.loads((run / "info.json").read_text())
        info["classes"] = [f"c{i}" for i in range(10)]
        (run / "info.json").write_text(json.dumps(info))

    def no_checkpoint(run: Path) -> None:
        (run / "checkpoints" / "best.pt").unlink()

    segment = fake_teacher(teacher, tmp_path, "segment-teacher", task("segment"))
    other = fake_teacher(teacher, tmp_path, "other-classes", classes)
    empty = fake_teacher(teacher, tmp_path, "no-checkpoint", no_checkpoint)
    train = ("train", "model=mlp", "epochs=1", "device=cpu")
    cases = {
        "is a task=segment run: a task=classify model learns only from a task=classify":
            (*train, f"distill.teacher={segment}"),
        "predicts other classes (c0, c1": (*train, f"distill.teacher={other}"),
        "has no checkpoint": (*train, f"distill.teacher={empty}"),
        "does not exist": (*train, f"distill.teacher={tmp_path / 'nowhere'}"),
        "distill.temperature": (*train, f"distill.teacher={teacher}", "distill.temperature=0"),
        "distill.alpha": (*train, f"distill.teacher={teacher}", "distill.alpha=1.5"),
        "task=vae has no distillation loss":
            ("train", "task=vae", "model=vae", "epochs=1", f"distill.teacher={teacher}"),
    }  # fmt: skip
    for needle, args in cases.items():
        assert_clean_error(run_cli(*args), "distill.", needle)
    runs = tmp_path / "runs"
    assert not runs.exists() or not list(runs.iterdir()), "a refused teacher leaves no run folder"
