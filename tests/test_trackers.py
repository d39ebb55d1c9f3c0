"""Experiment trackers (`run.loggers`): MLflow against a real `mlflow server` this module starts
on 127.0.0.1 with a SQLite database, and Weights & Biases offline (WANDB_MODE=offline), read
back from the run's offline files. Each run trains one epoch, then is extended to a second with
`kiln.resume`: the tracker's run must go on, not start again."""

from __future__ import annotations

import csv
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import kiln

pytestmark = pytest.mark.slow
SETTINGS = {"model.name": "mlp", "model.hidden": [32], "train.device": "cpu"}


def metrics_csv(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# MLflow -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow", reason="the trackers extra is not installed")
    work = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = open(work / "server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
         "--artifacts-destination", str(work / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=work,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # it migrates a fresh database first
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start:\n" + (work / "server.log").read_text())
            time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def mlflow_run(mlflow_server, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    try:
        work = tmp_path_factory.mktemp("mlflow-runs")
        loggers = {"run.loggers": ["csv", "mlflow"], "run.project": "kiln-test"}
        first = kiln.train(None, {**SETTINGS, **loggers, "train.epochs": 1, "run.dir": str(work)})
        first_id = json.loads((first.path / "trackers.json").read_text())["mlflow"]["run_id"]
        run = kiln.resume(first, epochs=2)  # the same MLflow run goes on
        return run, first_id
    finally:
        mp.undo()


def test_mlflow_gets_params_metrics_per_epoch_and_the_test_metrics(mlflow_server, mlflow_run):
    from mlflow.tracking import MlflowClient

    run, first_id = mlflow_run
    ids = json.loads((run.path / "trackers.json").read_text())["mlflow"]
    assert ids["run_id"] == first_id, "resume must continue the same MLflow run"
    client = MlflowClient(mlflow_server)
    found = client.get_run(first_id)
    assert found.info.status == "FINISHED"
    assert client.get_experiment(found.info.experiment_id).name == "kiln-test"
    assert found.data.params["model.name"] == "mlp"
    assert float(found.data.params["optim.lr"]) == run.config.optim.lr
    rows = metrics_csv(run.path)
    history = client.get_metric_history(first_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["val_acc"]) for r in rows]
    assert found.data.metrics["test_accuracy"] == pytest.approx(run.test["accuracy"])


def test_mlflow_gets_the_plots_report_and_a_model_that_loads(mlflow_server, mlflow_run):
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from kiln.rundir import RunDir, load_model
    from kiln.tasks.common import normalized

    run, run_id = mlflow_run
    client = MlflowClient(mlflow_server)
    files = {a.path for a in client.list_artifacts(run_id)}
    files |= {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"report.html", "metrics.csv", "config.yaml", "plots/confusion.png"} <= files

    mlflow.set_tracking_uri(mlflow_server)
    uri = json.loads((run.path / "trackers.json").read_text())["mlflow"]["model_uri"]
    logged = mlflow.pytorch.load_model(uri)
    info = RunDir(run.path).data_info()
    images = torch.randint(0, 256, (4, *info.input_shape), dtype=torch.uint8)
    x = normalized(images, info.mean, info.std)
    ours, _ = load_model(RunDir(run.path), "best", "cpu")
    with torch.inference_mode():
        assert torch.allclose(logged(x), ours.eval()(x), atol=1e-5)


# Weights & Biases ---------------------------------------------------------------------------------
def wandb_records(path: Path):
    """The records of an offline run file (run-ID.wandb): W&B's LevelDB-style log, 32 KiB
    blocks of chunks, each chunk a 7-byte header (CRC, length, type) and a piece of a protobuf
    Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a W&B run file"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # padding to the block's end
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def key(item) -> str:
    """An item's name: `key`, or its `nested_key` path (what wandb-core writes)."""
    return item.key or ".".join(item.nested_key)


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    pytest.importorskip("wandb", reason="the trackers extra is not installed")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    try:
        work = tmp_path_factory.mktemp("wandb-runs")
        loggers = {"run.loggers": ["wandb"], "run.project": "kiln-test"}
        first = kiln.train(None, {**SETTINGS, **loggers, "train.epochs": 1, "run.dir": str(work)})
        return kiln.resume(first, epochs=2)
    finally:
        mp.undo()


def test_wandb_offline_files_hold_the_config_epochs_test_metrics_and_artifacts(wandb_run):
    run = wandb_run
    run_id = json.loads((run.path / "trackers.json").read_text())["wandb"]["id"]
    files = sorted((run.path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2, "resume: the same W&B run"
    records = [r for f in files for r in wandb_records(f)]

    configs = {key(i): json.loads(i.value_json) for r in records if r.HasField("run")
               for i in r.run.config.update}  # fmt: skip
    assert configs["model"]["name"] == "mlp" and configs["run"]["project"] == "kiln-test"

    epochs = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            values = {key(i): json.loads(i.value_json) for i in r.history.item}
            epochs.setdefault(r.history.step.num, {}).update(values)
    rows = metrics_csv(run.path)
    assert sorted(epochs) == [1, 2]
    for row in rows:
        assert epochs[row["epoch"]]["val_acc"] == pytest.approx(row["val_acc"])

    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary |= {key(i): json.loads(i.value_json) for i in r.summary.update}
    assert summary["test_accuracy"] == pytest.approx(run.test["accuracy"])

    artifacts = {}
    for r in records:
        if r.WhichOneof("record_type") == "artifact":
            artifacts[r.artifact.type] = {f.path for f in r.artifact.manifest.contents}
    assert {"report.html", "metrics.csv", "plots/confusion.png"} <= artifacts["report"]
    assert artifacts["model"] == {"best.pt"}
