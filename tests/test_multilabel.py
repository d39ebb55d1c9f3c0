"""task=multilabel and task=binary: label sets read from a CSV (data.label_sep), never taken for
masks; thresholds chosen on the validation split; metrics, report, predict, export and serve.

The end-to-end runs use `kiln data make mnist-pairs` (two real MNIST digits side by side, labelled
with the set of digits shown) on a small subset, and a binary question on the same images
("is there a 7?"); they skip when ../shared/datasets is absent."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error
from fastapi.testclient import TestClient
from PIL import Image
from shared_data import copy_mnist_like, require
from torch import nn

import kiln
from kiln import data as kdata
from kiln.cli import main
from kiln.config import build_config
from kiln.data.batch_augment import BatchAugment
from kiln.data.memory import MemoryLoader, Normalize
from kiln.data.registry import Split, are_masks, is_multi_hot
from kiln.deploy.export import export_run
from kiln.deploy.serve import create_app
from kiln.errors import KilnError
from kiln.infer import load_predictor, load_servable
from kiln.tasks.multilabel.metrics import f1_thresholds


def kiln_cli(capsys, *args) -> subprocess.CompletedProcess:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def tiny_label_sets(root: Path, n: int = 40) -> Path:
    """n random 8x8 images with label sets over {cat, dog, outdoor}, some empty."""
    rng = np.random.default_rng(0)
    sets = ["cat", "dog;outdoor", "cat;dog", "outdoor", "", "cat;outdoor"]
    rows = [["file", "tags"]]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append([f"{i}.png", sets[i % len(sets)]])
    return write_csv(root / "tags.csv", rows)


# Reading label sets --------------------------------------------------------------------------
def test_label_sets_are_multi_hot_split_by_their_sets_and_never_masks(tmp_path: Path):
    table = tiny_label_sets(tmp_path)
    cfg = build_config(None, ["data.name=csv", f"data.csv={table}", f"data.root={tmp_path}",
                              "data.label_column=tags", "data.label_sep=;"])  # fmt: skip
    bundle = kdata.build(cfg.data)
    assert bundle.info.classes == ["cat", "dog", "outdoor"]
    labels = torch.cat([bundle.train.labels, bundle.val.labels, bundle.test.labels])
    assert is_multi_hot(labels) and not are_masks(labels) and labels.shape == (40, 3)
    assert int((labels.sum(dim=1) == 0).sum()) == sum(i % 6 == 4 for i in range(40))  # empty
    assert labels.sum(dim=0).tolist() == [20, 14, 20]  # each image's labels, counted once
    # every set of labels reaches the held-out splits in proportion (6 sets, 4 test images)
    assert len({tuple(r.tolist()) for r in bundle.test.labels}) == len(bundle.test)

    split = bundle.train if isinstance(bundle.train, Split) else bundle.train.load(0)
    augment = BatchAugment([{"flip": {"p": 1.0}}])
    loader = MemoryLoader(split, 8, Normalize([0.0], [1.0], "cpu"), augment=augment)
    x, y = next(iter(loader))
    assert torch.equal(y, split.labels[:8]) and x.shape == (8, 1, 8, 8)  # images move alone

    from kiln.data.preview import data_stats

    stats = data_stats(bundle)
    assert stats["totals"]["train"] == len(bundle.train)
    assert sum(stats["per_split"]["train"].values()) == int(bundle.train.labels.sum())


def test_wrong_task_for_the_labels_says_which_to_set(tmp_path: Path, capsys):
    table = tiny_label_sets(tmp_path)
    data = ("data=csv", f"data.csv={table}", f"data.root={tmp_path}", "data.label_column=tags")
    train = ("train", *data, "epochs=1", f"run.dir={tmp_path / 'runs'}", "model=mlp")
    result = kiln_cli(capsys, *train, "data.label_sep=;")
    assert_clean_error(result, "set of labels per image", "task=multilabel")
    result = kiln_cli(capsys, *train, "task=multilabel", "data.on_bad=skip")  # "" is no class
    assert_clean_error(result, "task=multilabel needs a set of labels", "data.label_sep")
    result = kiln_cli(capsys, *train, "task=binary", "data.on_bad=skip")  # 5 classes, one each
    assert_clean_error(result, "task=binary needs two classes", "task=multilabel")
    result = kiln_cli(capsys, *train, "data.label_sep=;", "task=multilabel",
                      "multilabel.pos_weight=[1, 2]")  # fmt: skip
    assert_clean_error(result, "multilabel.pos_weight", "3 of them")
    result = kiln_cli(capsys, "train", "data=folder", f"data.root={tmp_path}",
                      "data.label_sep=;", f"run.dir={tmp_path / 'runs'}")  # fmt: skip
    assert_clean_error(result, "data.label_sep", "data.name=csv")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


class LabelHead(nn.Module):
    """A module of the user's (not Kiln's): 8x8 images to `outputs` logits."""

    def __init__(self, outputs: int):
        super().__init__()
        self.fc = nn.Linear(64, outputs)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_users_module_is_held_to_one_logit_per_label_before_a_run_exists(tmp_path: Path):
    table = tiny_label_sets(tmp_path)
    settings = {
        "data.name": "csv", "data.csv": str(table), "data.root": str(tmp_path),
        "data.label_column": "tags", "data.label_sep": ";", "train.device": "cpu",
        "train.epochs": 1, "run.report": False, "run.dir": str(tmp_path / "runs"),
    }  # fmt: skip
    with pytest.raises(KilnError, match=r"LabelHead.*\(2, 2\).*task=multilabel needs \(2, 3\)"):
        kiln.train(model=LabelHead(2), task="multilabel", **settings)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())

    from kiln.data.registry import DataInfo
    from kiln.tasks.multilabel.binary import BinaryTask

    info = DataInfo("x", ["no", "yes"], 1, 8, 8, [0.0], [1.0], outputs=1)
    BinaryTask.check_outputs(torch.zeros(2, 1), 2, info, "Head")  # one logit per image
    BinaryTask.check_outputs(torch.zeros(2), 2, info, "Head")  # or a flat one
    with pytest.raises(KilnError, match=r"task=binary needs \(2, 1\): one logit"):
        BinaryTask.check_outputs(torch.zeros(2, 2), 2, info, "Head")


def test_a_subset_of_label_sets_is_stratified_by_set(tmp_path: Path):
    table = tiny_label_sets(tmp_path, n=60)
    cfg = build_config(None, ["data.name=csv", f"data.csv={table}", f"data.root={tmp_path}",
                              "data.label_column=tags", "data.label_sep=;",
                              "data.subset=12"])  # fmt: skip
    train = kdata.build(cfg.data).train
    labels = train.labels if isinstance(train, Split) else train.load(0).labels
    assert len(labels) == 12 and is_multi_hot(labels)
    assert len({tuple(r.tolist()) for r in labels}) == 6  # every set of labels drawn, 2 each


def test_thresholds_are_the_f1_optimal_ones():
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(300, 3, generator=g) < torch.tensor([0.5, 0.2, 0.05])).float()
    probs = (0.35 * targets + 0.65 * torch.rand(300, 3, generator=g)).clamp(0, 1)

    def f1(column: int, t: float) -> float:
        pred, truth = probs[:, column] >= t, targets[:, column] > 0
        tp = int((pred & truth).sum())
        return 2 * tp / max(int(pred.sum()) + int(truth.sum()), 1)

    chosen = f1_thresholds(probs, targets)
    for k in range(3):
        best = max(f1(k, float(t)) for t in probs[:, k].unique())
        assert f1(k, chosen[k]) == pytest.approx(best)
    assert f1_thresholds(probs, torch.zeros(300, 3)) == [0.5, 0.5, 0.5]  # no positive: 0.5


def test_logged_f1_takes_each_label_at_its_best_threshold_of_the_grid():
    from sklearn.metrics import f1_score

    from kiln.tasks.multilabel import BinaryTask, MultiLabelTask
    from kiln.tasks.multilabel.task import GRID

    g = torch.Generator().manual_seed(0)
    truth = torch.rand(200, 3, generator=g) < 0.3
    logits = torch.randn(200, 3, generator=g) + 2 * truth
    task = MultiLabelTask(3)
    sums = task.score(logits[:120], truth[:120]) + task.score(logits[120:], truth[120:])
    best = [max(f1_score(truth[:, k], logits[:, k].sigmoid() >= t) for t in GRID.tolist())
            for k in range(3)]  # fmt: skip
    assert task.summarize(sums, 200)["f1_macro"] == pytest.approx(np.mean(best))
    binary = BinaryTask(1)
    logged = binary.summarize(binary.score(logits[:, :1], truth[:, 0].long()), 200)
    assert logged["f1"] == pytest.approx(best[0])


# End to end on pairs of MNIST digits ---------------------------------------------------------
@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """mnist-pairs with 1,500 training and 300 test images, and a binary CSV over the same
    images: `seven` when a 7 is shown, else `other` (about one image in five is positive)."""
    require("MNIST")
    tmp = tmp_path_factory.mktemp("pairs")
    root = copy_mnist_like("MNIST", tmp / "mnist")
    from kiln.data.make import mnist_pairs

    table = mnist_pairs(root, tmp / "pairs", train=1_500, test=300)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    sevens = [[r["file"], "seven" if "7" in r["labels"].split(";") else "other", r["split"]]
              for r in rows]  # fmt: skip
    write_csv(tmp / "pairs" / "sevens.csv", [["file", "seven", "split"], *sevens])
    return tmp / "pairs"


def pairs_config(pairs: Path, task: str, name: str, **data) -> dict:
    return {
        "task": task,
        "data": {"name": "csv", "root": str(pairs), "batch_size": 32, **data},
        "model": {"name": "convnet", "width": 16, "depth": 3},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"epochs": 3, "device": "cpu", "seed": 0},
        "run": {"dir": str(pairs.parent / "runs"), "name": name},
    }


@pytest.fixture(scope="module")
def multilabel_run(pairs: Path) -> Path:
    cfg = pairs_config(pairs, "multilabel", "pairs", csv=str(pairs / "labels.csv"),
                       label_column="labels", label_sep=";")  # fmt: skip
    return kiln.train(cfg, progress=False).path


@pytest.fixture(scope="module")
def binary_run(pairs: Path) -> Path:
    cfg = pairs_config(pairs, "binary", "sevens", csv=str(pairs / "sevens.csv"),
                       label_column="seven")  # fmt: skip
    cfg["binary"] = {"pos_weight": "auto"}
    return kiln.train(cfg, progress=False).path


def answer_png(pairs: Path, n: int) -> list[Path]:
    return sorted((pairs / "images" / "test").glob("*.png"))[:n]


def test_multilabel_run_learns_the_digits_and_keeps_its_thresholds(multilabel_run: Path):
    info = json.loads((multilabel_run / "info.json").read_text())
    test = json.loads((multilabel_run / "eval-test.json").read_text())
    assert info["classes"] == [str(d) for d in range(10)] and info["outputs"] is None
    thresholds = info["thresholds"]
    assert len(thresholds) == 10 and all(0 < t < 1 for t in thresholds)
    assert [r["threshold"] for r in test["per_label"]] == pytest.approx(thresholds, abs=1e-6)
    # predicting every digit would score a micro F1 of about 0.32 (1.9 labels of 10)
    assert test["f1_micro"] > 0.55 and test["map"] > 0.6, test
    assert 1.7 < test["labels_per_image"] < 2.0  # two digits, the same one about 1 in 10
    assert test["f1_macro"] == pytest.approx(np.mean([r["f1"] for r in test["per_label"]]),
                                             abs=1e-5)  # fmt: skip
    for plot in ("curves", "pr_curves", "roc_curves", "per_label", "samples"):
        assert (multilabel_run / "plots" / f"{plot}.png").is_file(), plot
    page = (multilabel_run / "report.html").read_text()
    assert "Per label" in page and "micro F1" in page and "Precision against recall" in page


def test_multilabel_predict_export_and_serve_answer_the_labels_above_threshold(
    multilabel_run: Path, pairs: Path, tmp_path: Path, capsys
):
    thresholds = json.loads((multilabel_run / "info.json").read_text())["thresholds"]
    images = answer_png(pairs, 6)
    run = load_predictor(multilabel_run)
    answers = run.predict([str(p) for p in images], top_k=10)
    probs = run.outputs([str(p) for p in images]).sigmoid()
    for answer, row in zip(answers, probs, strict=True):
        given = {str(k) for k in range(10) if row[k] >= thresholds[k]}
        assert {e["label"] for e in answer["labels"]} == given
        assert [e["probability"] for e in answer["labels"]] == sorted(
            (e["probability"] for e in answer["labels"]), reverse=True)  # fmt: skip
    result = kiln_cli(capsys, "predict", multilabel_run, *images[:2])
    assert result.returncode == 0, result.stderr
    first = ", ".join(f"{e['label']} {e['probability']:.1%}" for e in answers[0]["labels"])
    assert f"{images[0]}: {first or 'no label above its threshold'}" in result.stdout

    exported = export_run(multilabel_run, "onnx", output=tmp_path / "onnx", log=lambda s: None)
    sidecar = json.loads(exported.sidecar.read_text())
    assert sidecar["output"]["thresholds"] == pytest.approx(thresholds)
    assert sidecar["classes"] == [str(d) for d in range(10)]
    from_export = load_predictor(exported.path).predict([str(p) for p in images], top_k=10)
    assert [[e["label"] for e in a["labels"]] for a in from_export] == [
        [e["label"] for e in a["labels"]] for a in answers]  # fmt: skip

    client = TestClient(create_app(load_servable(exported.path)))
    sent = [("files", (p.name, p.read_bytes(), "image/png")) for p in images[:3]]
    served = client.post("/predict?top_k=3", files=sent).json()["predictions"]
    assert [[e["label"] for e in a["labels"]] for a in served] == [
        [e["label"] for e in a["labels"]] for a in answers[:3]]  # fmt: skip
    assert all(len(a["top_k"]) == 3 for a in served)
    assert "labels.map" in client.get("/").text  # the page lists the labels given


def test_binary_run_chooses_its_threshold_and_reports_both_curves(binary_run: Path):
    info = json.loads((binary_run / "info.json").read_text())
    test = json.loads((binary_run / "eval-test.json").read_text())
    assert info["classes"] == ["other", "seven"] and info["outputs"] == 1
    assert test["positive"] == "seven" and test["threshold"] == pytest.approx(
        info["thresholds"][0], abs=1e-6)  # fmt: skip
    (tn, fp), (fn, tp) = test["confusion_matrix"]
    assert tn + fp + fn + tp == test["samples"] == 300
    assert test["accuracy"] == pytest.approx((tp + tn) / 300, abs=1e-6)
    assert test["roc_auc"] > 0.85 and test["pr_auc"] > 0.5 and test["f1"] > 0.5, test
    state = torch.load(binary_run / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert list(state.values())[-1].shape == (1,)  # one logit: the head's bias
    for plot in ("pr_curves", "roc_curves", "samples"):
        assert (binary_run / "plots" / f"{plot}.png").is_file(), plot
    page = (binary_run / "report.html").read_text()
    assert "ROC-AUC" in page and "Confusion matrix" in page


def test_binary_predict_export_and_serve_answer_the_class_past_the_threshold(
    binary_run: Path, pairs: Path, tmp_path: Path, capsys
):
    threshold = json.loads((binary_run / "info.json").read_text())["thresholds"][0]
    images = [str(p) for p in answer_png(pairs, 8)]
    run = load_predictor(binary_run)
    p = run.outputs(images).sigmoid().view(-1)
    answers = run.predict(images)
    assert [a["label"] for a in answers] == ["seven" if v >= threshold else "other" for v in p]
    assert all(a["threshold"] == pytest.approx(threshold, abs=1e-6) for a in answers)
    result = kiln_cli(capsys, "predict", binary_run, images[0])
    assert f"{answers[0]['label']} {answers[0]['probability']:.1%}" in result.stdout

    exported = export_run(binary_run, "state_dict", output=tmp_path / "sd", log=lambda s: None)
    sidecar = json.loads(exported.sidecar.read_text())["output"]
    assert sidecar["positive"] == "seven" and sidecar["outputs"] == 1
    again = load_predictor(exported.path).predict(images)
    assert [a["label"] for a in again] == [a["label"] for a in answers]

    client = TestClient(create_app(load_servable(binary_run)))
    image = Image.open(images[0])
    buf = io.BytesIO()
    image.save(buf, "PNG")
    served = client.post("/predict", files=[("files", ("a.png", buf.getvalue()))]).json()
    assert served["predictions"][0]["label"] == answers[0]["label"]
    assert served["predictions"][0]["threshold"] == pytest.approx(threshold, abs=1e-6)
