"""The fast recipes reach the test accuracy README.md and their own headers promise, trained as a
person trains them (`kiln train recipes/NAME.yaml data.root=DIR`, seed 0). Their times are
benchmarks/recipes.py's business, never asserted here.

Needs ../shared/datasets (MNIST, FashionMNIST); skipped where absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_kiln
from shared_data import require

pytestmark = pytest.mark.slow
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(
    ("recipe", "dataset", "target"),
    [("mnist-fast", "MNIST", 0.99), ("fashion-mnist-fast", "FashionMNIST", 0.91)],
)
def test_fast_recipe_reaches_its_test_accuracy(tmp_path: Path, recipe, dataset, target):
    shared = require(dataset).parent
    trained = run_kiln(
        "train", RECIPES / f"{recipe}.yaml", f"data.root={shared}", "run.report=false",
        f"run.dir={tmp_path / 'runs'}", "name=fast", cwd=tmp_path, data_dir=tmp_path / "data",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    result = json.loads((tmp_path / "runs" / "fast" / "eval-test.json").read_text())
    assert result["samples"] == 10_000
    assert result["accuracy"] >= target, f"{recipe}: {result['accuracy']:.2%} < {target:.0%}"
