"""Exact resume: an interrupted run, once resumed, ends with bitwise the same weights."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import interrupt_at

import kiln
from kiln import checkpoint
from kiln.engine.trainer import TrainingInterrupted

CONFIG = {
    "data": {"name": "digits", "batch_size": 32},
    "model": {"name": "mlp", "hidden": [64], "dropout": 0.2},  # dropout: the RNG matters too
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
    "sched": {"name": "cosine", "warmup_epochs": 1},
    "train": {"epochs": 4, "device": "cpu", "seed": 7, "deterministic": True},
}


def run_config(tmp_path: Path, name: str, **extra) -> dict:
    cfg = {**CONFIG, "run": {"dir": str(tmp_path / "runs"), "name": name}}
    cfg["train"] = {**CONFIG["train"], **extra}
    return cfg


def assert_same_weights(a: Path, b: Path) -> None:
    for which in ("last", "best"):
        wa = checkpoint.load(a / "checkpoints" / f"{which}.pt")["model"]
        wb = checkpoint.load(b / "checkpoints" / f"{which}.pt")["model"]
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{which}.pt differs in {key}"


def metric_rows(run: Path) -> list[list[str]]:
    """metrics.csv without the timing columns, which legitimately differ."""
    lines = (run / "metrics.csv").read_text().splitlines()
    return [line.split(",")[:6] for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("reference")
    return kiln.train(run_config(tmp, "straight"), progress=False).path


@pytest.mark.parametrize("epoch,step", [(2, 10), (1, 0), (3, 40)])
def test_ctrl_c_mid_epoch_then_resume_is_bitwise_identical(tmp_path, reference, epoch, step):
    cfg = run_config(tmp_path, "interrupted")
    with pytest.raises(TrainingInterrupted, match="Resume with: kiln train --resume"):
        kiln.train(cfg, progress=False, callbacks=[interrupt_at(epoch, step)])
    run = tmp_path / "runs" / "interrupted"
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"]) == (epoch - 1, step + 1)
    kiln.train(resume=run, progress=False)
    assert_same_weights(reference, run)
    assert metric_rows(run) == metric_rows(reference)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, kiln, json
    from kiln.engine.callbacks import Callback

    class KillAfter(Callback):
        def on_epoch_end(self, trainer, epoch, row):
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    kiln.train(json.loads(sys.argv[1]), progress=False, callbacks=[KillAfter()])
    """
)


def test_kill_9_between_epochs_then_cli_resume_is_bitwise_identical(tmp_path, reference):
    import json

    cfg = run_config(tmp_path, "killed")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    run = tmp_path / "runs" / "killed"
    assert checkpoint.load(run / "checkpoints" / "last.pt")["epoch"] == 2
    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "train", "--resume", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Epoch 3/4" in out.stdout and "Epoch 1/4" not in out.stdout
    assert_same_weights(reference, run)
    assert metric_rows(run) == metric_rows(reference)


def test_cli_ctrl_c_saves_exits_nonzero_and_prints_resume_command(tmp_path, reference):
    import yaml

    cfg = run_config(tmp_path, "cli")
    cfg["train"]["epochs"] = 4
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "train", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "runs" / "cli"
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("training finished before the interrupt arrived")
    assert proc.returncode == 130, stderr
    assert f"Resume with: kiln train --resume {run}" in stderr
    assert "Traceback" not in stderr
    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "train", "--resume", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert_same_weights(reference, run)


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path, reference):
    before = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "train", "--resume", str(reference)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "already finished" in out.stderr
    assert {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("sched", ["cosine", "onecycle"])
def test_resume_can_extend_epochs_with_the_schedule_stretched(tmp_path, sched):
    cfg = run_config(tmp_path, "extend", epochs=2)
    cfg["sched"] = {"name": sched}
    first = kiln.train(cfg, progress=False)
    assert first.history[-1]["lr"] < 1e-5  # the two-epoch schedule has annealed
    more = kiln.train(resume=first.path, progress=False, epochs=4)
    assert [row["epoch"] for row in more.history] == [1, 2, 3, 4]
    # Stretched to four epochs, epoch 2 now ends mid-schedule: the lr is far from zero.
    assert more.history[2]["lr"] > 1e-4
    assert more.history[3]["lr"] < more.history[2]["lr"]
