"""End to end through the CLI on a subset of the real MNIST files (skipped where absent)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from shared_data import copy_mnist_like

from kiln import data as kdata
from kiln.config import DataConfig

pytestmark = pytest.mark.slow


def kiln_cli(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env=env,
    )


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    root = copy_mnist_like("MNIST", tmp_path_factory.mktemp("data"))
    work = tmp_path_factory.mktemp("work")
    out = kiln_cli(
        "train",
        "data=mnist",
        f"data.root={root}",
        "model=lenet",
        "data.subset=6000",
        "epochs=2",
        "batch=64",
        "lr=3e-3",
        "name=lenet",
        cwd=work,
    )
    assert out.returncode == 0, out.stderr
    return root, work / "runs" / "lenet", out


def test_train_prints_epochs_run_dir_and_accuracy(mnist_run):
    _, run, out = mnist_run
    assert "Epoch 1/2" in out.stdout and "Epoch 2/2" in out.stdout
    assert "Run directory: runs/lenet" in out.stdout
    assert "test acc" in out.stdout
    result = json.loads((run / "eval-test.json").read_text())
    assert result["samples"] == 10000 and result["accuracy"] > 0.93


def test_eval_on_val_and_last_checkpoint(mnist_run):
    _, run, _ = mnist_run
    out = kiln_cli("eval", str(run), "--split", "val", "--checkpoint", "last", "--json", cwd=run)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["accuracy"] > 0.93
    assert sum(map(sum, result["confusion_matrix"])) == 6000
    assert (run / "eval-val.json").is_file()
    table = kiln_cli("eval", str(run), cwd=run)
    assert (
        table.returncode == 0 and "confusion matrix" in table.stdout and "f1_macro" in table.stdout
    )


def test_predict_real_digits_as_png_and_jpeg(mnist_run, tmp_path):
    root, run, _ = mnist_run
    bundle = kdata.build(DataConfig(name="mnist", root=str(root)))
    test, classes = bundle.test, bundle.info.classes
    files, labels = [], []
    for i in range(20):
        image = Image.fromarray(test.images[i, 0].numpy())
        if i % 2:  # a different size and mode than training: the run's preprocessing handles it
            path = tmp_path / f"{i}.jpg"
            image.resize((56, 56)).convert("RGB").save(path, quality=95)
        else:
            path = tmp_path / f"{i}.png"
            image.save(path)
        files.append(str(path))
        labels.append(classes[int(test.labels[i])])
    out = kiln_cli("predict", str(run), *files, "--json", "--top-k", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert [r["file"] for r in results] == files
    right = sum(r["label"] == y for r, y in zip(results, labels, strict=True))
    assert right >= 18
    for r in results:
        probs = [t["probability"] for t in r["top_k"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    text = kiln_cli("predict", str(run), str(tmp_path), cwd=tmp_path)
    assert text.returncode == 0 and text.stdout.count("\n") == 20


def test_checkpoints_open_with_weights_only(mnist_run):
    _, run, _ = mnist_run
    for which in ("best", "last"):
        state = torch.load(run / "checkpoints" / f"{which}.pt", weights_only=True)
        assert "model" in state
