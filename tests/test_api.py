"""The Python API at the top level: one function per verb with the CLI's keyword names, runs as
paths or objects, overrides as a dict or `__` keywords, result objects with attributes,
`to_dict()` and HTML; what training says on its way (through logging); the API reference page
built from the docstrings with pdoc."""

from __future__ import annotations

import inspect
import io
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

import kiln
import kiln.api
from kiln.errors import ConfigError, KilnError

API = ("train", "resume", "load", "evaluate", "predict", "export", "serve", "tune", "lr_find",
       "compare", "summary")  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run trained in this process, with what it printed."""
    work = tmp_path_factory.mktemp("api")
    out = io.StringIO()  # Kiln's plain log lines go to the sys.stdout of the moment
    with redirect_stdout(out):
        run = kiln.train(None, {"run.dir": str(work / "runs")}, epochs=2, model="mlp",
                         model__hidden=[32], optim__lr=1e-2, device="cpu")  # fmt: skip
    return run, out.getvalue()


# The package -----------------------------------------------------------------------------------
def test_dir_lists_the_api_and_nothing_else():
    assert dir(kiln) == sorted(kiln.__all__)
    assert set(API) | {"Run", "__version__", "trust_imports"} == set(kiln.__all__)
    for name in ("Any", "TYPE_CHECKING", "annotations"):
        assert name not in dir(kiln)


def test_each_function_has_a_docstring_and_the_cli_keyword_names():
    for name in API:
        function = getattr(kiln.api, name)
        assert inspect.getdoc(function), name
    params = {name: set(inspect.signature(getattr(kiln.api, name)).parameters) for name in API}
    for name in ("load", "evaluate", "predict", "export"):
        assert "checkpoint" in params[name], name
    assert "split" in params["evaluate"]
    assert {"output", "top_k"} <= params["predict"] and "output" in params["export"]


def test_evaluate_and_tune_are_callable_beside_their_subpackages():
    import kiln.evaluate.plots  # noqa: F401 (the subpackage is an attribute of kiln now)
    import kiln.tune.space  # noqa: F401

    assert callable(kiln.evaluate) and callable(kiln.tune)
    assert kiln.evaluate.plots.read_metrics  # and still the packages


def test_overrides_as_a_dict_or_keywords_name_the_same_key():
    for call in (lambda: kiln.train(None, {"optim.lrr": 1}), lambda: kiln.train(optim__lrr=1)):
        with pytest.raises(ConfigError, match="optim.lrr: unknown key"):
            call()


# Training and its result -------------------------------------------------------------------------
def test_training_says_what_it_does_in_one_format(trained):
    run, out = trained
    assert "Writing report" in out and "Report written in" in out
    done = next(line for line in out.splitlines() if line.startswith("Done in"))
    best = f"{run.best:.2%}"
    assert f"Best val_acc {best}" in done, done  # the same format as the other figures
    assert f"test acc {run.test['accuracy']:.2%}" in done


def test_run_has_a_short_repr_to_dict_and_html(trained):
    run, _ = trained
    text = repr(run)
    assert text.startswith(f"Run('{run.path}'") and "optim" not in text and len(text) < 200
    data = run.to_dict()
    assert json.loads(json.dumps(data))["best"] == run.best
    assert data["test"]["accuracy"] == run.test["accuracy"]
    html = run._repr_html_()
    assert f"{run.best:.2%}" in html and f"{run.test['accuracy']:.2%}" in html
    assert "data:image/png;base64," in html


def test_run_open_reads_the_same_run_back(trained):
    run, _ = trained
    again = kiln.Run.open(run.path)
    assert again.best == pytest.approx(run.best) and again.test == run.test
    assert again.plot("confusion").path == run.path / "plots" / "confusion.png"
    with pytest.raises(KilnError, match="no plot 'nope'.*confusion"):
        again.plot("nope")


def test_evaluate_takes_a_path_or_a_run_and_returns_every_number(trained, tmp_path):
    run, _ = trained
    copy = Path(shutil.copytree(run.path, tmp_path / "run"))
    ev = kiln.evaluate(str(copy), split="val", checkpoint="last")
    saved = json.loads((copy / "eval-val.json").read_text())
    assert ev.to_dict() == saved and ev.accuracy == saved["accuracy"] == ev["accuracy"]
    assert ev.checkpoint == "last" and f"{ev.accuracy:.2%}" in ev._repr_html_()
    assert kiln.evaluate(kiln.Run.open(copy)).split == "test"


def test_predict_load_summary_and_compare(trained, tmp_path):
    from PIL import Image

    run, _ = trained
    Image.new("L", (8, 8), 200).save(tmp_path / "a.png")
    answers = kiln.predict(run, [tmp_path / "a.png"], top_k=2)
    assert len(answers) == 1 and len(answers[0]["top_k"]) == 2
    assert answers.to_dict()["answers"][0]["file"] == str(tmp_path / "a.png")
    predictor = kiln.load(run.path, checkpoint="last")
    assert "classify" in predictor._repr_html_()

    by_dict = kiln.summary("mlp", {"model.hidden": [16]})
    by_keyword = kiln.summary("mlp", model__hidden=[16])
    assert by_dict.table == by_keyword.table and by_dict.to_dict()["parameters"] > 0

    other = Path(shutil.copytree(run.path, tmp_path / "other"))
    compared = kiln.compare(run, other, output=tmp_path / "c.html")
    rows = compared.to_dict()["runs"]
    assert [r["run"] for r in rows] == [run.path.name, "other"]
    assert rows[0]["best"] == pytest.approx(run.best) and (tmp_path / "c.html").is_file()
    assert "Compare 2 runs" in compared._repr_html_()


def test_a_study_renders_its_best_trial(tmp_path):
    from kiln.tune.run import StudyResult

    study = StudyResult("s", tmp_path, "sqlite:///x", 0.97, {"optim.lr": 0.01}, {},
                        {"COMPLETE": 3, "PRUNED": 1})  # fmt: skip
    html = study._repr_html_()
    assert "3 COMPLETE" in html and "optim.lr" in html and "0.97" in html
    assert json.loads(json.dumps(study.to_dict()))["best_params"] == {"optim.lr": 0.01}


# The reference page ------------------------------------------------------------------------------
def test_the_api_reference_is_built_from_the_docstrings(tmp_path):
    pytest.importorskip("pdoc", reason="pdoc is a dev dependency")
    built = subprocess.run([sys.executable, "-m", "pdoc", "kiln.api", "-o", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    page = (tmp_path / "kiln" / "api.html").read_text()
    for name in API:
        first = inspect.getdoc(getattr(kiln.api, name)).splitlines()[0]
        assert f'id="{name}"' in page, name
        assert first.split("`")[0].strip()[:30] in page, name
