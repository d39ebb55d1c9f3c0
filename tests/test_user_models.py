"""A person's own model: registered in their own module and used by name from YAML."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

MODULE = '''
"""A model of my own, as a user writes it."""
from torch import nn

import kiln.models


@kiln.models.register("tiny", "A tiny MLP of my own")
def tiny(info, hidden: int = 32):
    c, h, w = info.input_shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, info.num_classes)
    )
'''


def kiln_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_registered_model_in_my_module_trains_predicts_and_summarises(tmp_path):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "mine.yaml").write_text(
        "imports: [my_models]\n"
        "data: {name: digits}\n"
        "model: {name: tiny, hidden: 48}\n"
        "train: {epochs: 3, device: cpu}\n"
        "run: {name: mine}\n"
    )
    result = kiln_cli("train", "mine.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "mine"
    saved = (run / "config.yaml").read_text()
    assert "imports:\n- my_models" in saved and "hidden: 48" in saved
    digit = np.zeros((8, 8), np.uint8)
    digit[1:7, 3:5] = 255  # a one
    Image.fromarray(digit).save(tmp_path / "one.png")
    refused = kiln_cli("predict", run, "one.png", cwd=tmp_path)  # code named by a run folder
    assert refused.returncode == 1 and "--trust-imports" in refused.stderr, refused.stderr
    assert "my_models" in refused.stderr and "Traceback" not in refused.stderr
    predicted = kiln_cli("predict", run, "one.png", "--json", "--trust-imports", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)[0]["top_k"]) == 3
    summary = kiln_cli("summary", run, "--trust-imports", cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr
    assert "[64, 48]" in summary.stdout and "[64, 10]" in summary.stdout


def test_an_import_that_fails_names_the_key(tmp_path):
    result = kiln_cli("train", "imports=[not_my_models]", "model=tiny", cwd=tmp_path)
    assert result.returncode == 2
    assert "imports[0]: cannot import 'not_my_models'" in result.stderr
    assert "Traceback" not in result.stderr
