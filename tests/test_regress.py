"""task=regress: numbers per image from CSV columns. Metrics against scikit-learn, the CSV checks,
a quick end-to-end run on synthetic images whose brightness is the target, and MNIST digits
rotated by `kiln data make mnist-rotation` (real data; skipped without ../shared/datasets)."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_clean_error
from PIL import Image
from shared_data import require

from kiln.data.scan import scan_csv
from kiln.errors import DataError
from kiln.tasks.regress import regression_metrics

REPO = Path(__file__).resolve().parents[1]


def test_metrics_match_scikit_learn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(0)
    true = rng.normal(size=(200, 2)) * [3.0, 50.0]
    pred = true + rng.normal(size=(200, 2)) * [1.0, 10.0]
    got = regression_metrics(torch.tensor(pred), torch.tensor(true), ["a", "b"])
    for i, row in enumerate(got["per_target"]):
        assert row["rmse"] == pytest.approx(mean_squared_error(true[:, i], pred[:, i]) ** 0.5)
        assert row["mae"] == pytest.approx(mean_absolute_error(true[:, i], pred[:, i]))
        assert row["r2"] == pytest.approx(r2_score(true[:, i], pred[:, i]))
    assert got["r2"] == pytest.approx(r2_score(true, pred))  # uniform average over targets
    assert got["rmse"] == pytest.approx(mean_squared_error(true, pred) ** 0.5)


def brightness_set(folder: Path, n: int = 400) -> Path:
    """n 8x8 grey images; the target is each image's mean brightness (0-255), plus its
    double as a second target: a task any small model learns in a few epochs."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        level = rng.uniform(20, 235)
        pixels = np.clip(rng.normal(level, 12, (8, 8)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / "img" / f"{i}.png")
        mean = float(pixels.mean())
        rows.append([f"img/{i}.png", f"{mean:.3f}", f"{2 * mean:.3f}"])
    with open(folder / "targets.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "brightness", "double"], *rows])
    return folder / "targets.csv"


def test_csv_targets_must_be_numbers(tmp_path: Path):
    table = brightness_set(tmp_path, n=3)
    lines = table.read_text().splitlines()
    lines[2] = "img/1.png,dark,2"
    table.write_text("\n".join(lines) + "\n")
    scan = scan_csv(table, tmp_path, targets=["brightness", "double"])
    assert [s.label for s in scan.samples][0] == tuple(map(float, lines[1].split(",")[1:]))
    assert len(scan.samples) == 2 and scan.classes == ["brightness", "double"]
    (problem,) = scan.problems
    assert "line 3" in str(problem) and "target 'brightness' is 'dark', not a number" in str(
        problem
    )
    with pytest.raises(DataError, match="no 'angle' column .* set data.targets"):
        scan_csv(table, tmp_path, targets=["angle"])


def test_regress_end_to_end(cli, tmp_path: Path):
    table = brightness_set(tmp_path / "bright")
    result = cli(
        "train", "task=regress", "data.name=csv", f"data.csv={table}",
        f"data.root={tmp_path / 'bright'}", "data.targets=[brightness,double]", "model=mlp",
        "epochs=12", "lr=0.01", "name=bright",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rmse" in result.stdout and "Report:" in result.stdout
    run = tmp_path / "runs" / "bright"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["early_stop"]["monitor"] == "val_rmse"
    info = json.loads((run / "info.json").read_text())
    assert info["classes"] == ["brightness", "double"] and len(info["target_mean"]) == 2
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    rmse = [float(r["val_rmse"]) for r in rows]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 1 + rmse.index(min(rmse))  # lower is better
    test = json.loads((run / "eval-test.json").read_text())
    assert test["samples"] == 40 and test["r2"] > 0.9, test  # 10% of 400 held out for test
    by_target = {t["target"]: t for t in test["per_target"]}
    assert by_target["double"]["mae"] == pytest.approx(2 * by_target["brightness"]["mae"], 0.5)
    for plot in ("predicted_vs_true", "residuals", "curves"):
        assert (run / "plots" / f"{plot}.png").stat().st_size > 5000
    report = (run / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3  # curves, predicted vs true, residuals
    assert "Per target" in report and f"{test['rmse']:.4g}" in report
    assert "confusion" not in report.lower()  # no classification leftovers
    (run / "report.html").unlink()
    redone = cli("report", run)
    assert redone.returncode == 0, redone.stderr
    assert (run / "report.html").read_text().count("data:image/png;base64,") == 3
    shown = cli("eval", run, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["rmse"] == pytest.approx(test["rmse"], rel=1e-5)
    check_predict_export_serve(cli, run, tmp_path / "bright")


def check_predict_export_serve(cli, run: Path, folder: Path) -> None:
    """A regression run answers numbers in target units, the same through `kiln predict`, an
    ONNX and a TorchScript export, and `kiln serve`'s /predict."""
    from fastapi.testclient import TestClient

    from kiln.deploy.serve import create_app
    from kiln.infer import load_servable

    files = [folder / "img" / f"{i}.png" for i in range(6)]
    truth = [float(np.asarray(Image.open(f)).mean()) for f in files]
    predicted = cli("predict", run, *files, "--json")
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)
    values = [r["values"]["brightness"] for r in rows]
    assert all("label" not in r for r in rows)
    assert np.abs(np.array(values) - truth).max() < 25, (values, truth)  # 0-255 scale
    shown = cli("predict", run, files[0])
    assert f"brightness {values[0]:.4g}" in shown.stdout, shown.stdout
    for fmt in ("onnx", "torchscript"):
        exported = cli("export", run, "--format", fmt)
        assert exported.returncode == 0, exported.stderr
        assert "top-1" not in exported.stdout  # no classes to agree on
        model_file = next(f for f in (run / "exports").iterdir() if f.suffix != ".json"
                          and fmt[:4] in f.name)  # fmt: skip
        servable = load_servable(model_file)
        assert servable.spec.task == "regress" and servable.spec.target_mean is not None
        got = [r["values"]["brightness"] for r in servable.predict(files)]
        np.testing.assert_allclose(got, values, atol=1e-3)
    client = TestClient(create_app(servable))
    assert client.get("/metadata").json()["task"] == "regress"
    answer = client.post("/predict", files=[("files", (f.name, f.read_bytes(), "image/png"))
                                             for f in files[:2]])  # fmt: skip
    assert answer.status_code == 200, answer.text
    served = answer.json()["predictions"]
    assert [p["file"] for p in served] == ["0.png", "1.png"] and "top_k" not in served[0]
    np.testing.assert_allclose([p["values"]["double"] for p in served],
                               [r["values"]["double"] for r in rows[:2]], atol=1e-3)  # fmt: skip


def test_regress_needs_numeric_targets(cli, tmp_path: Path):
    table = brightness_set(tmp_path / "b", n=40)
    csv_args = ("data.name=csv", f"data.csv={table}", f"data.root={tmp_path / 'b'}",
                "data.targets=[brightness]", "epochs=1")  # fmt: skip
    cases = {  # digits has classes, not numbers; the CSV has numbers, not classes
        "task=regress needs numeric targets": ("train", "task=regress", "epochs=1"),
        "numeric targets (data.targets): set task=regress": ("train", *csv_args),
        "train.loss=mse is for task=regress": ("train", "train.loss=mse", "epochs=1"),
    }
    with ThreadPoolExecutor(len(cases)) as pool:  # each command pays torch's import
        found = dict(zip(cases, pool.map(lambda args: cli(*args), cases.values()), strict=True))
    for needle, result in found.items():
        assert_clean_error(result, needle)


@pytest.mark.slow
def test_mnist_rotation_angles_are_learned(cli, tmp_path: Path):
    shared = require("MNIST").parent
    made = cli("data", "make", "mnist-rotation", "--data-root", shared, "--train", "3000",
               "--test", "500")  # fmt: skip
    assert made.returncode == 0, made.stderr
    rows = list(csv.DictReader((tmp_path / "data" / "mnist-rotation" / "labels.csv").open()))
    assert len(rows) == 3500 and {r["split"] for r in rows} == {"train", "test"}
    angles = [float(r["angle"]) for r in rows]
    assert -45 <= min(angles) < -40 and 40 < max(angles) <= 45
    trained = cli("train", REPO / "recipes" / "mnist-rotation.yaml", "epochs=4")
    assert trained.returncode == 0, trained.stderr
    test = json.loads((tmp_path / "runs" / "mnist-rotation" / "eval-test.json").read_text())
    assert test["samples"] == 500 and test["r2"] > 0.6, test  # the angle is read, roughly


def test_numeric_targets_pass_through_batch_augmentation_unchanged():
    """Image regression with data.augment on the in-memory path: the images move, the (N, T)
    targets stay as they are (only segmentation masks move with their images)."""
    from kiln.data import BatchAugment, MemoryLoader, Normalize, Split
    from kiln.data.transforms import resolve_augment

    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    targets = torch.rand(16, 2) * 100
    augment = BatchAugment(resolve_augment([{"translate": 0.25}, "flip"]))
    loader = MemoryLoader(Split(images, targets), 8, Normalize([0.5], [0.25], "cpu"),
                          augment=augment)  # fmt: skip
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 8, 8) and torch.equal(y, targets[:8])


def test_normalize_leaves_a_tables_rows_untouched():
    from kiln.data import Normalize

    rows = torch.tensor([[[[10.0]], [[200.0]]], [[[30.0]], [[400.0]]]])  # (2 rows, 2 features)
    before = rows.clone()
    out = Normalize([20.0, 300.0], [10.0, 100.0], "cpu")(rows)
    assert torch.equal(rows, before)  # in-place arithmetic would corrupt the dataset
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, -1.0, 1.0, 1.0]))


def test_diabetes_recipe(cli, tmp_path: Path):
    result = cli("train", REPO / "recipes" / "diabetes.yaml")
    assert result.returncode == 0, result.stderr
    test = json.loads((tmp_path / "runs" / "diabetes" / "eval-test.json").read_text())
    # 88 test patients; scikit-learn's LinearRegression reaches R2 0.48 on the same split
    assert test["samples"] == 88 and test["r2"] > 0.35, test


def test_own_table(cli, tmp_path: Path):
    rng = np.random.default_rng(0)
    a, b, noise = rng.uniform(0, 10, 300), rng.uniform(-5, 5, 300), rng.normal(0, 0.5, 300)
    rows = zip(a, b, noise, strict=True)
    lines = ["a,b,y", *(f"{x:.4f},{z:.4f},{3 * x - 2 * z + e:.4f}" for x, z, e in rows)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    args = ("task=regress", "data.name=table", "data.csv=t.csv", "data.targets=[y]",
            "model=mlp", "model.hidden=[32]", "epochs=30", "lr=0.01", "name=t")  # fmt: skip
    result = cli("train", *args)
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "runs" / "t" / "info.json").read_text())
    assert info["input_shape"] == [2, 1, 1] and info["classes"] == ["y"]
    test = json.loads((tmp_path / "runs" / "t" / "eval-test.json").read_text())
    assert test["r2"] > 0.9, test
    # kiln predict on new rows: the feature columns by name, in any order, targets not needed
    (tmp_path / "new.csv").write_text("id,b,a\nx,0,5\ny,4,1\n")
    predicted = cli("predict", tmp_path / "runs" / "t", tmp_path / "new.csv", "--json")
    assert predicted.returncode == 0, predicted.stderr
    got = json.loads(predicted.stdout)
    assert [r["line"] for r in got] == [2, 3]
    np.testing.assert_allclose([r["values"]["y"] for r in got], [15, -5], atol=1.5)  # 3a - 2b
    (tmp_path / "bad.csv").write_text("a\n1\n")
    assert_clean_error(
        cli("predict", tmp_path / "runs" / "t", tmp_path / "bad.csv"),
        "lacks the column(s) b the run was trained on",
    )
    lines[5] = "1.0,n/a,3.0"
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    assert_clean_error(cli("train", *args), "t.csv line 6: column 'b' is 'n/a', not a number")
