"""`kiln train` with no arguments: what `make demo` runs on a fresh machine."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest
from rich.console import Console

import kiln
from kiln.engine.callbacks import ProgressBar


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "train"],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=600,
        env={"KILN_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(work)},
    )
    assert out.returncode == 0, out.stderr
    return work / "runs" / "digits-convnet", out


def test_default_run_reaches_95_percent_validation_accuracy(default_run):
    run, out = default_run
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 20
    assert float(rows[-1]["val_acc"]) >= 0.95
    assert "Run directory: runs/digits-convnet" in out.stdout
    assert "final val acc" in out.stdout
    # one summary line per epoch with the numbers a person looks for
    lines = [line for line in out.stdout.splitlines() if line.startswith("Epoch ")]
    assert len(lines) == 20
    for word in ("train loss", "val loss", "acc", "lr", "samples/s"):
        assert word in lines[0]


def test_tensorboard_has_scalars_images_graph_and_histograms(default_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = default_run
    acc = EventAccumulator(str(run / "tb"), size_guidance={"histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("loss/train", "loss/val", "acc/train", "acc/val", "lr"):
        assert tag in tags["scalars"]
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, 21))
    val = [e.value for e in acc.Scalars("acc/val")]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert val == pytest.approx([float(r["val_acc"]) for r in rows])
    assert "samples/train" in tags["images"]
    assert acc.Images("samples/train")[0].width > 0
    assert tags["graph"] is True
    assert any(t.startswith("weights/") for t in tags["histograms"])


def test_progress_bar_on_a_terminal_shows_loss_accuracy_speed_and_eta(tmp_path):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160)
    kiln.train(
        None,
        progress=False,
        epochs=2,
        run__dir=str(tmp_path),
        callbacks=[ProgressBar(console=console, refresh_s=0.0)],
    )
    text = buffer.getvalue()
    assert "Epoch 1/2" in text and "samples/s" in text and "loss" in text and "acc" in text
    assert "0:00:0" in text or "-:--:--" in text  # the ETA column
