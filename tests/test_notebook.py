"""examples/quickstart.ipynb, executed end to end by nbclient in a real IPython kernel (this
interpreter, this checkout), as Jupyter would: no cell fails, training shows a progress bar and
a table of epochs updated in place, and the run, the evaluation, the predictor and the
comparison render as HTML holding their numbers."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev dependency")
nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev dependency")
pytest.importorskip("ipykernel", reason="ipykernel is a dev dependency")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    work = tmp_path_factory.mktemp("notebook")
    kernels = work / "jupyter" / "kernels" / "kiln-test"  # this interpreter, whatever PATH says
    kernels.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "kiln test", "language": "python"}  # fmt: skip
    (kernels / "kernel.json").write_text(json.dumps(spec))
    env = {"JUPYTER_PATH": str(work / "jupyter"), "KILN_OFFLINE": "1",
           "KILN_DATA": str(work / "data"), "MPLBACKEND": "Agg"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(nb, kernel_name="kiln-test", timeout=600,
                                         resources={"metadata": {"path": str(work)}})  # fmt: skip
        client.execute()
        nbformat.write(nb, work / "executed.ipynb")  # to look at when a test fails
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb, work


def html_outputs(cell) -> list[str]:
    return [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]


def cell_with(nb, text: str):
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    return cell


def test_every_cell_runs_without_an_error(executed):
    nb, _ = executed
    for cell in nb.cells:
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, errors[0]["evalue"] if errors else ""


def test_training_shows_a_table_of_epochs_updated_in_place(executed):
    nb, work = executed
    cell = cell_with(nb, 'run__name="quickstart-mlp"')
    tables = [h for h in html_outputs(cell) if "val acc" in h and "<table>" in h]
    assert tables, "no table of epochs"
    rows = re.findall(r"<tr><td[^>]*>(\d+)</td>", tables[0])
    assert rows == ["1", "2", "3"], "each epoch's row, in the one table"
    with open(work / "runs" / "quickstart-mlp" / "metrics.csv") as f:
        last = f.read().splitlines()[-1].split(",")
    header = (work / "runs" / "quickstart-mlp" / "metrics.csv").read_text().splitlines()[0]
    val_acc = float(last[header.split(",").index("val_acc")])
    assert f"{val_acc:.2%}" in tables[0]
    streams = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    assert "Done in" in streams and "Writing report" in streams  # the log's plain lines


def test_the_run_renders_its_best_value_test_accuracy_and_curves(executed):
    nb, work = executed
    cell = cell_with(nb, 'run__name="quickstart-mlp"')
    (shown,) = [h for h in html_outputs(cell) if "Run quickstart-mlp" in h]
    test = json.loads((work / "runs" / "quickstart-mlp" / "eval-test.json").read_text())
    assert f"{test['accuracy']:.2%}" in shown and "best val_acc" in shown
    assert shown.count("data:image/png;base64,") >= 1  # the curves, inline
    assert "run.plot(" in shown  # and where the other plots are


def test_plots_evaluation_predictor_and_predictions_render(executed):
    nb, work = executed
    plot = cell_with(nb, 'run.plot("confusion")')
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)
    (evaluation,) = html_outputs(cell_with(nb, 'split="val"'))
    val = json.loads((work / "runs" / "quickstart-mlp" / "eval-val.json").read_text())
    assert "accuracy" in evaluation and f"{val['accuracy']:.2%}" in evaluation
    assert "precision" in evaluation and "support" in evaluation  # classify's per-class table
    (predictor,) = html_outputs(cell_with(nb, "predictor = kiln.load(run)"))
    assert "classify" in predictor and "runtime" in predictor
    (predictions,) = html_outputs(cell_with(nb, "kiln.predict(predictor, images)"))
    assert predictions.count("<tr><td") == 5


def test_the_comparison_renders_both_runs_and_their_curves(executed):
    nb, _ = executed
    shown = [h for h in html_outputs(cell_with(nb, "kiln.compare(run, small)")) if "Compare" in h]
    assert shown and "quickstart-mlp" in shown[-1] and "quickstart-small" in shown[-1]
    assert "best val acc" in shown[-1] and "data:image/png;base64," in shown[-1]
