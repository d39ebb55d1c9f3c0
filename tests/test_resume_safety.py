"""An interrupted run can always be resumed: an extension (epochs=N) killed before its first
checkpoint leaves the run as it was, a last.pt that does not belong to the run is one line saying
what to do, a full disk keeps the previous checkpoint, and atomic writes leave nothing behind."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import KILN, assert_clean_error, interrupt_at, kiln_env

import kiln
from kiln import checkpoint
from kiln.engine.trainer import TrainingInterrupted
from kiln.io import write_text_atomic

CONFIG = {
    "data": {"name": "digits", "subset": 512},
    "model": {"name": "mlp", "hidden": [32]},
    "sched": {"name": "onecycle"},  # its state fails loudly when resumed with another horizon
    "train": {"epochs": 2, "device": "cpu", "seed": 3},
    "run": {"report": False},
}


def train_two_epochs(tmp_path: Path, name: str, **model) -> Path:
    cfg = {**CONFIG, "run": {**CONFIG["run"], "dir": str(tmp_path / "runs"), "name": name}}
    cfg["model"] = {**CONFIG["model"], **model}
    return kiln.train(cfg, progress=False).path


def kiln_cli(tmp_path: Path, *args, **popen) -> subprocess.CompletedProcess:
    (tmp_path / "data").mkdir(exist_ok=True)
    return subprocess.run([*KILN, *map(str, args)], cwd=tmp_path, env=kiln_env(tmp_path / "data"),
                          capture_output=True, text=True, timeout=300, **popen)  # fmt: skip


KILL_IN_EPOCH_3 = textwrap.dedent(
    """
    import os, signal, sys, kiln
    from kiln.engine.callbacks import Callback

    class Kill(Callback):
        def on_batch_end(self, trainer, epoch, step):
            if epoch == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    kiln.train(resume=sys.argv[1], epochs=4, progress=False, callbacks=[Kill()])
    """
)


def test_an_extension_killed_before_its_first_checkpoint_leaves_the_run_as_it_was(tmp_path):
    run = train_two_epochs(tmp_path, "extend")
    config_before = (run / "config.yaml").read_text()
    killed = subprocess.run([sys.executable, "-c", KILL_IN_EPOCH_3, str(run)])
    assert killed.returncode == -signal.SIGKILL
    assert (run / "config.yaml").read_text() == config_before  # still 2 epochs: nothing to redo
    again = kiln_cli(tmp_path, "train", "--resume", run, "epochs=4")
    assert again.returncode == 0, again.stderr
    assert "Epoch 4/4" in again.stdout
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4


def test_an_extension_interrupted_mid_epoch_goes_on_with_its_epochs(tmp_path):
    """last.pt records the extension: resuming without epochs=N continues to N, and config.yaml
    learns it with the first checkpoint of the epoch."""
    run = train_two_epochs(tmp_path, "mid")
    with pytest.raises(TrainingInterrupted):
        kiln.train(resume=run, epochs=4, progress=False, callbacks=[interrupt_at(3, 2)])
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert checkpoint.load(run / "checkpoints" / "last.pt")["planned_epochs"] == 4
    done = kiln.train(resume=run, progress=False)
    assert [row["epoch"] for row in done.history] == [1, 2, 3, 4]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4


def test_a_best_pt_copied_over_last_pt_is_one_line_saying_what_to_do(tmp_path):
    run = train_two_epochs(tmp_path, "copied")
    shutil.copy(run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt")
    result = kiln_cli(tmp_path, "train", "--resume", run, "epochs=3")
    assert_clean_error(result, "last.pt", "no optimizer", "model.weights=", "kiln train")


def test_a_last_pt_of_another_model_names_the_difference(tmp_path):
    run = train_two_epochs(tmp_path, "mine")
    other = train_two_epochs(tmp_path, "other", hidden=[48])
    shutil.copy(other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    result = kiln_cli(tmp_path, "train", "--resume", run, "epochs=3")
    assert_clean_error(result, "does not belong", "48", "32", "model.weights=")


def test_a_truncated_last_pt_is_one_line(tmp_path):
    run = train_two_epochs(tmp_path, "cut")
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = kiln_cli(tmp_path, "train", "--resume", run, "epochs=3")
    assert_clean_error(result, "truncated or corrupt", "cannot be resumed", "kiln train")


def limit_file_size(size: int):
    def apply() -> None:  # in the child: writes past `size` fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path):
    run = train_two_epochs(tmp_path, "full")
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    limit = len(before) // 2  # the checkpoint no longer fits; the small files still do
    result = kiln_cli(tmp_path, "train", "--resume", run, "epochs=3",
                      preexec_fn=limit_file_size(limit))  # fmt: skip
    assert_clean_error(result, "no space left", "last.pt", "is intact", "--resume")
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temp
    assert checkpoint.load_for_resume(run)["epoch"] == 2
    resumed = kiln_cli(tmp_path, "train", "--resume", run, "epochs=3")  # with room again
    assert resumed.returncode == 0, resumed.stderr


def test_atomic_writes_never_follow_a_planted_temp_name_and_clean_up(tmp_path):
    target, victim = tmp_path / "metrics.csv", tmp_path / "victim.txt"
    victim.write_text("untouched")
    for planted in (f".{target.name}.{os.getpid()}.tmp", f".{target.name}.tmp"):
        (tmp_path / planted).symlink_to(victim)  # the names older versions wrote to
    write_text_atomic(target, "a,b\n")
    assert target.read_text() == "a,b\n" and victim.read_text() == "untouched"

    class Boom(Exception):
        pass

    from kiln.io import atomic_open

    with pytest.raises(Boom), atomic_open(target) as f:
        f.write("half")
        raise Boom
    assert target.read_text() == "a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink()) == [
        "metrics.csv", "victim.txt",
    ]  # fmt: skip


def test_info_json_of_a_resumed_run_is_untouched(tmp_path):
    run = train_two_epochs(tmp_path, "info")
    info = json.loads((run / "info.json").read_text())
    kiln.train(resume=run, epochs=3, progress=False)
    assert json.loads((run / "info.json").read_text()) == info
