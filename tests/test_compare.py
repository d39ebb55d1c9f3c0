"""`kiln compare`: overlaid curves and a table of final metrics, as PNG or self-contained HTML."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import assert_clean_error
from PIL import Image

import kiln
from kiln.errors import KilnError, RunError
from kiln.evaluate.compare import compare_runs, load_runs


def tiny(tmp: Path, name: str, dropout: float) -> Path:
    cfg = {
        "data": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [32], "dropout": dropout},
        "train": {"epochs": 2, "device": "cpu"},
        "run": {"dir": str(tmp), "name": name},
    }
    return kiln.train(cfg, progress=False).path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("compare")
    return [tiny(tmp, "plain", 0.0), tiny(tmp, "dropout-<b>&", 0.5)]  # a name to escape


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


def test_png_is_a_real_image(runs, tmp_path):
    out = tmp_path / "compare.png"
    compare_runs(runs, out)
    width, height = png_size(out.read_bytes())
    assert width > 100 and height > 100


def test_html_is_self_contained_and_names_both_runs(runs, tmp_path):
    out = tmp_path / "sub" / "compare.html"
    compare_runs(runs, out)
    page = out.read_text()
    assert "plain" in page
    assert "dropout-&lt;b&gt;&amp;" in page and "dropout-<b>" not in page
    assert not re.search(r"https?://", page)
    assert "<link" not in page and "<script" not in page
    (image,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert min(png_size(base64.b64decode(image))) > 100


def test_table_rows_come_from_the_run_directories(runs):
    loaded = load_runs(runs)
    for run, path in zip(loaded, runs, strict=True):
        row = run.summary()
        with open(path / "metrics.csv", newline="") as f:
            history = list(csv.DictReader(f))
        accs = [float(r["val_acc"]) for r in history]
        assert row["run"] == path.name
        assert row["best_val_acc"] == pytest.approx(max(accs))
        assert row["best_epoch"] == 1 + accs.index(max(accs))
        assert row["final_val_loss"] == pytest.approx(float(history[-1]["val_loss"]))
        assert row["epochs"] == 2
        assert row["seconds"] == pytest.approx(sum(float(r["seconds"]) for r in history))
        info = json.loads((path / "info.json").read_text())
        assert row["parameters"] == info["parameters"]
        test = json.loads((path / "eval-test.json").read_text())
        assert row["test_acc"] == test["accuracy"]


def test_runs_with_the_same_folder_name_are_labelled_by_path(runs, tmp_path):
    other = Path(shutil.copytree(runs[0], tmp_path / "elsewhere" / runs[0].name))
    labels = [r.name for r in load_runs([runs[0], other])]
    assert labels == [str(runs[0]), str(other)]
    with pytest.raises(KilnError, match="more than once"):
        load_runs([runs[0], runs[0]])


def test_a_run_without_eval_or_info_still_compares(runs, tmp_path):
    bare = Path(shutil.copytree(runs[1], tmp_path / "bare"))
    (bare / "eval-test.json").unlink()
    (bare / "info.json").write_text("{not json")
    row = load_runs([runs[0], bare])[1].summary()
    assert row["test_acc"] is None and row["parameters"] is None


def test_errors_in_the_library(runs, tmp_path):
    with pytest.raises(KilnError, match="at least 2"):
        compare_runs(runs[:1], tmp_path / "c.html")
    with pytest.raises(KilnError, match=r"\.html .* \.png"):
        compare_runs(runs, tmp_path / "c.pdf")
    with pytest.raises(RunError, match="no metrics.csv"):
        compare_runs([runs[0], tmp_path], tmp_path / "c.html")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.csv").write_text("epoch,train_loss\n")
    with pytest.raises(RunError, match="no epochs"):
        compare_runs([runs[0], empty], tmp_path / "c.html")


def test_cli_html_and_png(runs, cli, tmp_path):
    result = cli("compare", *runs, "-o", "out.html")
    assert result.returncode == 0, result.stderr
    assert "plain" in result.stdout and "wrote out.html" in result.stdout
    assert "best val acc" in result.stdout
    assert "data:image/png;base64," in (tmp_path / "out.html").read_text()
    result = cli("compare", *runs, "-o", "out.png")
    assert result.returncode == 0, result.stderr
    assert min(png_size((tmp_path / "out.png").read_bytes())) > 100


def test_cli_errors_are_one_line(runs, cli, tmp_path):
    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    assert_clean_error(cli("compare", runs[0], not_a_run), "notes", "metrics.csv", "kiln train")
    assert_clean_error(cli("compare", runs[0], tmp_path / "missing"), "missing", "does not exist")
    assert_clean_error(cli("compare", runs[0]), "at least 2")
    assert_clean_error(cli("compare", *runs, "-o", "c.pdf"), "c.pdf", ".html", ".png")
    assert not (tmp_path / "c.pdf").exists()
