"""What a run writes to RUN/tb, read back the way TensorBoard reads it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

import kiln
from kiln.engine.callbacks import Callback
from kiln.engine.trainer import TrainingInterrupted

SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "acc/train": "train_acc",
           "acc/val": "val_acc", "lr": "lr"}  # fmt: skip


def config(tmp_path: Path, epochs: int = 2, **train) -> dict:
    return {
        "data": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [32]},
        "optim": {"lr": 0.003},
        "train": {"epochs": epochs, "device": "cpu", **train},
        "run": {"dir": str(tmp_path)},
    }


def load_events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(
        str(run / "tb"),
        size_guidance={"compressedHistograms": 0, "images": 0, "scalars": 0, "histograms": 0,
                       "tensors": 0, "graph": 0, "meta_graph": 0},
    )  # fmt: skip
    acc.Reload()
    return acc


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def session_hparams(acc: EventAccumulator) -> dict[str, object]:
    """The hyperparameters of the run's one hparams session, as TensorBoard's HPARAMS tab sees."""
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    assert hp_metadata.SESSION_START_INFO_TAG in content, content.keys()
    assert hp_metadata.EXPERIMENT_TAG in content
    data = HParamsPluginData.FromString(content[hp_metadata.SESSION_START_INFO_TAG])
    out: dict[str, object] = {}
    for key, value in data.session_start_info.hparams.items():
        out[key] = value.string_value if value.HasField("string_value") else value.number_value
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return kiln.train(config(tmp_path_factory.mktemp("tb")), progress=False).path


def test_scalars_match_metrics_csv(run):
    acc = load_events(run)
    rows = metrics_rows(run)
    assert len(rows) == 2
    tags = acc.Tags()["scalars"]
    for tag, column in SCALARS.items():
        assert tag in tags, tags
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        expected = [float(row[column]) for row in rows]
        assert [e.value for e in events] == pytest.approx(expected, rel=1e-6), tag


def test_images_graph_and_histograms(run):
    acc = load_events(run)
    tags = acc.Tags()
    assert "samples/train" in tags["images"]
    assert tags["graph"] is True
    assert acc.Graph().node, "empty graph"
    weights = [t for t in tags["histograms"] if t.startswith("weights/")]
    assert weights, tags["histograms"]
    assert [e.step for e in acc.Histograms(weights[0])] == [1, 2]


def test_hparams_hold_the_resolved_config_and_final_metrics(run):
    acc = load_events(run)
    hp = session_hparams(acc)
    assert hp["optim.lr"] == pytest.approx(0.003)
    assert hp["data.name"] == "digits"
    assert hp["model.name"] == "mlp"
    assert hp["model.hidden"] == "[32]"
    assert hp["train.epochs"] == 2
    assert hp["train.deterministic"] == "false"
    rows = metrics_rows(run)
    best = max(float(row["val_acc"]) for row in rows)
    (event,) = acc.Scalars("hparam/best_val_acc")
    assert event.value == pytest.approx(best, rel=1e-6)
    (event,) = acc.Scalars("hparam/final_train_loss")
    assert event.value == pytest.approx(float(rows[-1]["train_loss"]), rel=1e-6)
    assert len(list((run / "tb").glob("*.hparams"))) == 1


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, epoch, row):
        trainer.stop.requested = True  # what the first Ctrl-C does


def test_hparams_are_written_once_at_the_end_of_a_resumed_run(tmp_path):
    with pytest.raises(TrainingInterrupted):
        kiln.train(config(tmp_path), progress=False, callbacks=[StopAfterFirstEpoch()])
    run = next(tmp_path.iterdir())
    assert not list((run / "tb").glob("*.hparams")), "an interrupted run logged hparams"
    kiln.train(resume=run, progress=False)
    kiln.train(resume=run, progress=False, epochs=3)  # a finished run, extended
    assert len(list((run / "tb").glob("*.hparams"))) == 1
    acc = load_events(run)
    assert session_hparams(acc)["train.epochs"] == 3
    assert [e.step for e in acc.Scalars("loss/val")] == [1, 2, 3]
    (event,) = acc.Scalars("hparam/final_val_loss")
    assert event.step == 3
    assert event.value == pytest.approx(float(metrics_rows(run)[-1]["val_loss"]), rel=1e-6)


def test_hparams_survive_writer_numbers_that_sort_out_of_order(tmp_path):
    """TensorBoard reads a run's event files in name order; files made by one process in the same
    second are told apart by a counter it compares as text. With the extension's event file
    numbered 9 and the hparams file 10 (a long-lived process: a notebook, a sweep), the hparams
    file came first and its metrics were purged with the replayed step (a flake of the test
    above, in a busy pytest process)."""
    from tensorboard.summary.writer import event_file_writer

    with pytest.raises(TrainingInterrupted):
        kiln.train(config(tmp_path), progress=False, callbacks=[StopAfterFirstEpoch()])
    run = next(tmp_path.iterdir())
    kiln.train(resume=run, progress=False)
    counter = event_file_writer._global_uid  # the next two writers: epoch 3's scalars, hparams
    while len(str(counter._value)) == len(str(counter._value + 1)):  # numbered 9 and 10, 99...
        counter.get()
    kiln.train(resume=run, progress=False, epochs=3)
    names = sorted(p.name for p in (run / "tb").glob("events.out.tfevents.*"))
    assert names[-1].endswith(".hparams"), names
    (event,) = load_events(run).Scalars("hparam/final_val_loss")
    assert event.step == 3
