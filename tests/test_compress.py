"""`kiln prune` and `kiln compress`: pruned models are really sparse (or really narrower) and still
accurate after fine-tuning, their run folders rebuild them like any run, the table measures
every smaller form, and every bad input is answered in one line."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_clean_error
from torch import nn

import kiln
from kiln.compress.measure import layer_sparsity, nonzero_parameters
from kiln.compress.prune import prune_run
from kiln.compress.table import compress_run
from kiln.rundir import RunDir, load_model


def val_acc(run: Path) -> float:
    """The best validation accuracy in the run's metrics.csv."""
    with open(run / "metrics.csv") as f:
        return max(float(row["val_acc"]) for row in csv.DictReader(f))


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A convnet on digits (conv, batch norm, pooling, a linear head): what pruning works on."""
    work = tmp_path_factory.mktemp("parent")
    result = kiln.train(model__name="convnet", epochs=3, device="cpu", run__report=False,
                        run__dir=str(work / "runs"), run__name="conv", progress=False)  # fmt: skip
    return result.path


@pytest.fixture(scope="module")
def pruned(parent: Path):
    """The parent pruned to 50% of its weights, fine-tuned for one epoch."""
    return prune_run(parent, 0.5, epochs=1, progress=False)


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """`kiln ARGS...` in this process, from tmp_path; returns (returncode, stdout, stderr)."""
    from kiln.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KILN_OFFLINE", "1")

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def test_unstructured_pruning_is_sparse_and_still_accurate(parent: Path, pruned):
    child = pruned.run.path
    assert child.name == "conv-pruned50" and child.parent == parent.parent
    assert RunDir.open(child).load_config().train.keep_zeros  # resumed, it keeps them too
    summary = json.loads((child / "prune.json").read_text())
    assert summary["parent"] == str(parent.resolve()) and summary["sparsity"] == 0.5
    model, _ = load_model(RunDir.open(child), "best")  # plain tensors: no pruning masks saved
    layers = layer_sparsity(model)
    zeros, weights = sum(r["zeros"] for r in layers), sum(r["weights"] for r in layers)
    assert zeros / weights >= 0.5, "the pruned weights stayed at zero through fine-tuning"
    assert {r["layer"] for r in summary["layers"]} == {r["layer"] for r in layers}
    parent_model, _ = load_model(RunDir.open(parent), "best")
    assert nonzero_parameters(model) < 0.55 * nonzero_parameters(parent_model)
    assert summary["after_fine_tuning"] >= summary["before"] - 0.03
    assert summary["after_fine_tuning"] == pytest.approx(val_acc(child))
    section = (child / "report-sections" / "prune.html").read_text()
    assert "Sparsity per layer" in section and "features.4" in section


def test_structured_pruning_makes_a_narrower_faster_model(parent: Path):
    result = prune_run(parent, 0.5, structured="channels", epochs=2, progress=False,
                       overrides=["run.report=true"])  # fmt: skip
    child = RunDir.open(result.run.path)
    sizes = child.load_config().model.layer_sizes
    assert sizes["features.0"] == [1, 16] and sizes["features.4"] == [16, 32]
    assert sizes["head.3"] == [64, 10]
    model, _ = load_model(child, "best")  # rebuilt narrower from the run folder alone
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    parent_model, _ = load_model(RunDir.open(parent), "best")
    n, n_parent = (sum(p.numel() for p in m.parameters()) for m in (model, parent_model))
    assert n < 0.5 * n_parent
    small, big = (c.checkpoint("best").stat().st_size for c in (child, RunDir.open(parent)))
    assert small < 0.55 * big
    assert result.summary["after_fine_tuning"] >= 0.85
    assert "Pruning" in (child.path / "report.html").read_text()
    x = torch.randn(4, 1, 8, 8)
    assert model(x).shape == (4, 10)
    shown = kiln.load(child.path).predict([torch.zeros(1, 8, 8, dtype=torch.uint8)])
    assert shown[0]["label"] in [str(i) for i in range(10)]


def test_prune_refuses_bad_inputs_in_one_line(parent: Path, run_cli, tmp_path: Path):
    for sparsity in ("0", "1", "1.5", "-0.2"):
        assert_clean_error(run_cli("prune", parent, "--sparsity", sparsity),
                           "--sparsity must be between 0 and 1")  # fmt: skip
    assert_clean_error(run_cli("prune", parent, "--sparsity", "0.5", "--epochs", "0"), "--epochs")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "info.json"):
        (empty / name).write_text((parent / name).read_text())
    assert_clean_error(run_cli("prune", empty, "--sparsity", "0.5"), "has no checkpoint")
    assert_clean_error(run_cli("prune", tmp_path / "nowhere", "--sparsity", "0.5"),
                       "does not exist")  # fmt: skip
    assert_clean_error(run_cli("prune", parent, "--sparsity", "0.5", "optim.lr=-1"), "optim.lr")
    assert sorted(p.name for p in parent.parent.iterdir() if "pruned" in p.name) in (
        [], ["conv-pruned50"]), "a refused prune leaves no run folder"  # fmt: skip


def test_structured_pruning_refuses_a_model_without_prunable_channels(tmp_path, run_cli):
    mlp = kiln.train(model__name="mlp", epochs=1, device="cpu", run__report=False,
                     run__dir=str(tmp_path / "runs"), progress=False)  # fmt: skip
    assert_clean_error(
        run_cli("prune", mlp.path, "--sparsity", "0.5", "--structured", "channels"),
        "no convolution", "prune it without --structured",
    )  # fmt: skip


def test_compress_measures_every_form_in_one_table(parent: Path, pruned, capsys):
    # the pruned child is found beside its parent; naming it as well measures it once
    result = compress_run(parent, extra_runs=[str(pruned.run.path)], rounds=1, calls=20,
                          formats=("onnx",))  # fmt: skip
    assert [r["run"] for r in result["rows"]].count("conv-pruned50") == 1
    rows = {r["method"]: r for r in result["rows"]}
    fp32, dynamic = rows["fp32, ONNX Runtime"], rows["int8 dynamic, ONNX Runtime"]
    static = rows["int8 static, ONNX Runtime"]
    child = rows["pruned 50% weights, fine-tuned, fp32 ONNX"]
    for row in (fp32, dynamic, static, child):
        assert row["bytes"] > 0 and row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"]
        assert row["per_s"] > 0 and 0.8 <= row["accuracy"] <= 1.0
    assert static["bytes"] < 0.5 * fp32["bytes"] and dynamic["bytes"] < 0.5 * fp32["bytes"]
    assert abs(static["accuracy"] - fp32["accuracy"]) <= 0.01
    assert child["parameters"] < 0.55 * fp32["parameters"] and child["run"] == "conv-pruned50"
    assert len(result["load_average"]["before"]) == 3
    printed = capsys.readouterr().out
    assert "| format / method |" in printed and "Load average" in printed
    assert json.loads((parent / "compress.json").read_text())["rows"] == result["rows"]
    assert "Smaller and faster" in (parent / "report-sections" / "compress.html").read_text()


def test_compress_measures_up_to_date_exports_as_they_are(tmp_path: Path):
    # A second kiln compress measures the exports the first wrote; an export made another way,
    # a changed checkpoint or --export-again make it write them anew.
    from kiln import checkpoint
    from kiln.compress.table import current_export
    from kiln.deploy.export import export_run
    from kiln.deploy.quantize import Calibration
    from kiln.engine.evaluate import report_run
    from kiln.evaluate.report import ADDED

    runs = str(tmp_path / "runs")
    run = kiln.train(model__name="convnet", epochs=1, device="cpu", run__dir=runs,
                     run__name="c", progress=False).path  # fmt: skip
    page = (run / "report.html").read_text()
    names = {None: "", "dynamic": "-int8", "static": "-int8-static"}
    files = {q: run / "exports" / f"model{s}.onnx" for q, s in names.items()}

    def compress(**kw):
        lines: list[str] = []
        result = compress_run(run, rounds=1, calls=10, formats=("onnx",), log=lines.append, **kw)
        reused = [line.split(":")[0] for line in lines if "exported earlier" in line]
        return result, reused, {q: f.stat().st_mtime_ns for q, f in files.items()}

    first, reused, written = compress()
    assert reused == [] and all(f.is_file() for f in files.values())
    second, reused, again = compress()
    assert reused == [r["method"] for r in first["rows"]] and again == written
    assert [r["accuracy"] for r in second["rows"]] == [r["accuracy"] for r in first["rows"]]
    # the report gains the table in place of the last one, the rest of the page as it was
    refreshed = (run / "report.html").read_text()
    assert refreshed.count("Smaller and faster") == 1 and "Smaller and faster" not in page
    added = refreshed[refreshed.index(ADDED[0]) : refreshed.index(ADDED[1])]
    assert refreshed.replace(added, "") == page.replace(ADDED[0] + "\n", "")
    report_run(run)  # drawn whole: the same page (its PNGs' bytes aside)
    assert re.sub('base64,[^"]*', "", (run / "report.html").read_text()) == re.sub(
        'base64,[^"]*', "", refreshed
    )

    export_run(run, "onnx", quantize="static", calibration=Calibration(method="entropy"),
               log=lambda _: None)  # fmt: skip
    custom = files["static"].stat().st_mtime_ns
    _, reused, after = compress()
    assert reused == ["fp32, ONNX Runtime", "int8 dynamic, ONNX Runtime"]
    assert after[None] == written[None] and after["static"] != custom  # calibrated as compress does
    sidecar = json.loads((run / "exports" / "model-int8-static.onnx.json").read_text())
    assert sidecar["calibration"]["method"] == "minmax"

    _, reused, forced = compress(export_again=True)
    assert reused == [] and all(forced[q] != after[q] for q in files)

    def current() -> dict:
        return {q: current_export(RunDir.open(run), "onnx", q) is not None for q in names}

    assert current() == {None: True, "dynamic": True, "static": True}
    files["dynamic"].write_bytes(files["dynamic"].read_bytes() + b"\0")  # changed since
    assert current() == {None: True, "dynamic": False, "static": True}
    best = run / "checkpoints" / "best.pt"
    state = checkpoint.load(best)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v
                      for k, v in state["model"].items()}  # fmt: skip
    checkpoint.save({k: v for k, v in state.items() if k != "format"}, best)
    assert current() == {None: False, "dynamic": False, "static": False}
