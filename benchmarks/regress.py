"""Regression recipes against a plain baseline on the same split.

    python benchmarks/regress.py --data-root ../shared/datasets --write-readme

recipes/diabetes.yaml (table) against scikit-learn's LinearRegression fitted on the same training
rows; recipes/mnist-rotation.yaml (images, after `kiln data make mnist-rotation`) against
predicting the training mean. Figures are the test split's, from the run's eval-test.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from readme_block import cpu_name, run_kiln, write_block

REPO = Path(__file__).resolve().parents[1]


def linear_baseline() -> dict:
    from sklearn.linear_model import LinearRegression

    from kiln import data as kdata
    from kiln.config import build_config
    from kiln.tasks.regress import regression_metrics

    bundle = kdata.build(build_config(REPO / "recipes" / "diabetes.yaml").data)
    x = lambda split: split.images.view(len(split), -1).numpy()  # noqa: E731
    fit = LinearRegression().fit(x(bundle.train), bundle.train.labels.numpy())
    import torch

    pred = torch.tensor(fit.predict(x(bundle.test)), dtype=torch.float32)
    return regression_metrics(pred, bundle.test.labels, bundle.info.classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-regress-") as tmp:
        work = Path(tmp)
        seconds = run_kiln("train", REPO / "recipes" / "diabetes.yaml", f"run.dir={work}", cwd=work)
        test = json.loads((work / "diabetes" / "eval-test.json").read_text())
        rows.append(("diabetes.yaml (linear, SGD)", test, seconds))
        rows.append(("LinearRegression, same split", linear_baseline(), None))
        root = args.data_root.resolve()
        run_kiln("data", "make", "mnist-rotation", "--data-root", root, cwd=work)
        seconds = run_kiln("train", REPO / "recipes" / "mnist-rotation.yaml", f"run.dir={work}",
                       cwd=work)  # fmt: skip
        test = json.loads((work / "mnist-rotation" / "eval-test.json").read_text())
        rows.append(("mnist-rotation.yaml (convnet)", test, seconds))
        rows.append(("predicting the mean angle", {"rmse": None, "mae": None, "r2": 0.0}, None))

    lines = [
        f"Measured on {cpu_name()}; test splits (diabetes: 88 patients, progression units; "
        "mnist-rotation: 2,000 digits, degrees). Time: the whole `kiln train` process.",
        "",
        "| model | test RMSE | test MAE | test R2 | time |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m, seconds in rows:
        rmse = "-" if m["rmse"] is None else f"{m['rmse']:.2f}"
        mae = "-" if m["mae"] is None else f"{m['mae']:.2f}"
        took = "-" if seconds is None else f"{seconds:.0f} s"
        lines.append(f"| {name} | {rmse} | {mae} | {m['r2']:.3f} | {took} |")
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        write_block("regress", text)


if __name__ == "__main__":
    main()
