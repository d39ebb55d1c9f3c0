"""Nothing a user can cause shows a raw traceback: markup in class names, a reader that stops
early (`kiln predict ... | head -1`), and, for real bugs, one line naming a saved traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from conftest import KILN, kiln_env
from PIL import Image

import kiln.cli
from kiln.cli import models as cli_models

CLASSES = ["$5", "a_b$c", r"\frac{1}", "50%", "<i>x"]


def test_class_names_with_math_markup_train_plot_and_report(cli, tmp_path: Path):
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        folder = tmp_path / "imgs" / name
        folder.mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 60, (8, 8)) + 40 * k
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    trained = cli("train", "data.name=folder", f"data.root={tmp_path / 'imgs'}", "epochs=1",
                  "model=mlp", "model.hidden=[16]", "name=marks")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "runs" / "marks"
    assert (run / "plots" / "confusion.png").is_file()
    report = cli("report", run)
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in trained.stderr + report.stderr
    assert "<i>x" not in (run / "report.html").read_text()  # escaped wherever it is shown


def test_a_reader_that_stops_early_is_no_error(trained_run: Path, tmp_path: Path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):
        Image.fromarray(np.full((8, 8), i % 256, np.uint8)).save(folder / f"{i:03d}.png")
    (tmp_path / "data").mkdir()
    env = kiln_env(tmp_path / "data")
    proc = subprocess.Popen([*KILN, "predict", trained_run, folder], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path, env=env)  # fmt: skip
    proc.stdout.readline()  # like `head -1`: one line, then the pipe closes
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert proc.returncode in (0, 141)


def test_a_bug_prints_one_line_and_saves_the_traceback(monkeypatch, capsys):
    def broken(ns):
        raise ZeroDivisionError("a bug in Kiln itself")

    monkeypatch.setattr(cli_models, "cmd_list", broken)
    assert kiln.cli.main(["list", "models"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected ZeroDivisionError"), err
    saved = Path(lines[0].split("the traceback is in ")[1].split(" ")[0])
    text = saved.read_text()
    assert "Traceback" in text and "a bug in Kiln itself" in text and "def broken" not in err
