"""A sixth task is one module and one decorator: an ordinal-regression task written here, in a
file of the user's, trains, evaluates, reports, predicts, exports and serves through Kiln's
unchanged code (nothing outside the task's own module knows it exists)."""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

ORDINAL_TASK = '''
"""Ordered classes (digits 0-9 read as amounts): cross-entropy plus the expected distance to
the true class, scored by the mean absolute error of the expected class."""

import torch
import torch.nn.functional as F

from kiln.tasks import Task, register_task


def expected(logits):
    values = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
    return (logits.float().softmax(dim=1) * values).sum(dim=1)


@register_task("ordinal", "ordered classes: cross-entropy + expected distance; MAE")
class OrdinalTask(Task):
    metric = "mae"
    higher_is_better = False

    def train_loss(self, logits, labels):
        distance = (expected(logits) - labels.float()).abs()
        return F.cross_entropy(logits.float(), labels) + 0.1 * distance.mean()

    def score(self, logits, labels):
        return (expected(logits) - labels.float()).abs().sum()

    @staticmethod
    def predictions(outputs, info, top_k=5):
        values = expected(outputs).tolist()
        return [{"value": round(v, 4), "label": info.classes[round(v)]} for v in values]
'''


@pytest.fixture(scope="module")
def ordinal(tmp_path_factory):
    """The user's folder (with ordinal_task.py), a trained run in it, and a digit image."""
    from conftest import run_kiln

    home = tmp_path_factory.mktemp("ordinal")
    (home / "ordinal_task.py").write_text(ORDINAL_TASK)
    data = home / "kiln-data"
    data.mkdir()
    result = run_kiln(
        "train", "task=ordinal", "imports=[ordinal_task]", "model=mlp", "model.hidden=[64]",
        "epochs=4", "lr=0.01", "name=ordinal", cwd=home, data_dir=data,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from sklearn.datasets import load_digits

    digits = load_digits()
    seven = digits.images[digits.target == 7][0]
    Image.fromarray((seven * 255 / 16).astype(np.uint8)).save(home / "seven.png")
    return home, data, home / "runs" / "ordinal", result


def test_it_trains_with_its_own_metric_and_report(ordinal):
    home, _, run, result = ordinal
    assert "mae 0." in result.stdout and "Report:" in result.stdout
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["task"] == "ordinal"
    assert config["train"]["early_stop"]["monitor"] == "val_mae"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_mae", "val_mae"} <= set(header) and "val_acc" not in header
    test = json.loads((run / "eval-test.json").read_text())
    assert 0 <= test["mae"] < 1.5 and test["samples"] > 100  # it learned the digits' order
    page = (run / "report.html").read_text()
    assert "val_mae" in page and f"{test['mae']:.4f}" in page
    info = json.loads((run / "info.json").read_text())
    assert info["metric"] == {"name": "mae", "test_key": "mae", "percent": False,
                              "monitor": "val_mae", "mode": "min"}  # fmt: skip


def test_eval_report_and_predict_from_the_command_line(ordinal):
    from conftest import run_kiln

    home, data, run, _ = ordinal
    # The run's config names the user's module under `imports:`: loading it runs that code, so
    # it takes --trust-imports (the user trusts their own folder).
    trusted = "--trust-imports"
    shown = run_kiln("eval", run, "--json", trusted, cwd=home, data_dir=data)
    assert shown.returncode == 0, shown.stderr
    saved = json.loads((run / "eval-test.json").read_text())
    assert json.loads(shown.stdout) == saved  # everything the eval file holds
    table = run_kiln("eval", run, trusted, cwd=home, data_dir=data)
    assert table.returncode == 0 and "mae" in table.stdout, table.stderr
    (run / "report.html").unlink()
    assert run_kiln("report", run, trusted, cwd=home, data_dir=data).returncode == 0
    assert (run / "report.html").is_file()
    predicted = run_kiln("predict", run, home / "seven.png", "--json", trusted, cwd=home,
                         data_dir=data)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    (answer,) = json.loads(predicted.stdout)
    assert answer["file"].endswith("seven.png") and answer["label"] == "7"
    assert abs(answer["value"] - 7) < 1.5


def test_export_and_serve(ordinal, monkeypatch):
    from fastapi.testclient import TestClient

    from kiln.deploy.export import export_run
    from kiln.deploy.serve import create_app
    from kiln.infer import load_servable

    home, _, run, _ = ordinal
    monkeypatch.syspath_prepend(str(home))
    monkeypatch.chdir(home)
    importlib.import_module("ordinal_task")  # the user's module, as `imports:` names it
    result = export_run(run, "onnx", log=lambda _: None)
    assert result.spec.task == "ordinal" and result.spec.parity.max_abs_logit_diff <= 1e-4
    servable = load_servable(result.path)
    client = TestClient(create_app(servable))
    image = (home / "seven.png").read_bytes()
    answer = client.post("/predict", files=[("files", ("seven.png", image, "image/png"))])
    assert answer.status_code == 200, answer.text
    (served,) = answer.json()["predictions"]
    assert served["file"] == "seven.png" and served["label"] == "7"
    assert served["value"] == pytest.approx(servable.predict([home / "seven.png"])[0]["value"])
    sys.modules.pop("ordinal_task", None)
