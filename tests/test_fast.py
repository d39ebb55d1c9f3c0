"""The speed settings: auto choices per device, threads, channels_last, compile, TTA, FastNet,
and the direct MNIST file reader."""

import gzip
import os

import pytest
import torch
from torch import nn

import kiln
from kiln import checkpoint
from kiln.data.builtin import read_idx
from kiln.data.registry import DataInfo
from kiln.data.workers import cpu_count
from kiln.engine.device import set_threads, settle
from kiln.errors import ConfigError, DataError
from kiln.models import create_model
from kiln.models.tta import infer

AUTO = {"precision": "auto", "compile": "auto", "channels_last": "auto"}


def test_auto_settings_follow_the_device_and_the_model():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    cpu = torch.device("cpu")
    assert settle(AUTO, cpu, conv) == {"precision": "fp32", "compile": False, "channels_last": True}
    assert settle(AUTO, cpu, mlp)["channels_last"] is False
    chosen = {"precision": "bf16", "compile": True, "channels_last": False}
    assert settle(chosen, cpu, conv) == chosen  # what a user sets is kept


def test_threads_match_the_cores_this_process_may_use():
    assert 1 <= cpu_count() <= (torch.get_num_threads() + 64)
    assert set_threads() == cpu_count() == torch.get_num_threads()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_loader_workers_default_to_the_cores_this_process_may_use():
    from kiln.data.workers import default_workers

    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # pinned to one core, as under `taskset -c 0`
        assert default_workers(None) == 1
        assert default_workers(3) == 3  # data.workers as set
    finally:
        os.sched_setaffinity(0, before)
    assert default_workers(None) == min(4, cpu_count())


def test_flip_tta_averages_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.LazyLinear(4)).eval()
    x = torch.randn(5, 1, 8, 8)
    expected = (model(x) + model(x.flip(3))) / 2
    assert torch.allclose(infer(model, x, "flip"), expected)
    assert torch.equal(infer(model, x, "none"), model(x))


@pytest.mark.parametrize("size", [8, 28, 32, 40])
def test_fastnet_builds_for_small_and_larger_images(size):
    info = DataInfo("x", list("abc"), 3, size, size, [0.5] * 3, [0.2] * 3)
    model = create_model("fastnet", info, widths=[8, 16, 16])
    assert model(torch.randn(2, 3, size, size)).shape == (2, 3)
    with pytest.raises(ConfigError, match="model.widths"):
        create_model("fastnet", info, widths=[8, -1])


def test_a_run_records_the_settled_options_and_trains_channels_last(tmp_path):
    run = kiln.train(
        None, epochs=1, run__dir=str(tmp_path), run__report=False, progress=False
    )  # the default convnet on the CPU
    cfg = run.config
    assert (cfg.train.precision, cfg.train.compile, cfg.train.channels_last) == (
        "fp32",
        False,
        True,
    )
    assert "channels_last: true" in (run.path / "config.yaml").read_text()
    resumed = kiln.load(run.path).predict(torch.zeros(1, 8, 8, dtype=torch.uint8))
    assert resumed[0]["label"] in [str(i) for i in range(10)]


@pytest.mark.slow
def test_compile_trains_like_eager_and_saves_plain_weights(tmp_path):
    def train(compiled: bool):
        return kiln.train(
            None,
            epochs=2,
            model__name="mlp",
            model__hidden=[32],
            train__compile=compiled,
            run__dir=str(tmp_path),
            run__report=False,
            progress=False,
        )

    eager, compiled = train(False), train(True)
    assert compiled.config.train.compile is True
    weights = checkpoint.load(compiled.path / "checkpoints" / "best.pt")["model"]
    plain = checkpoint.load(eager.path / "checkpoints" / "best.pt")["model"]
    assert weights.keys() == plain.keys()  # no _orig_mod. prefix: loads into a plain model
    for a, b in zip(eager.history, compiled.history, strict=True):
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.02)


def test_tta_is_used_by_evaluation_and_prediction(tmp_path):
    run = kiln.train(
        None,
        epochs=1,
        model__name="mlp",
        model__tta="flip",
        run__dir=str(tmp_path),
        run__report=False,
        progress=False,
    )
    predictor = kiln.load(run.path)
    assert predictor.tta == "flip"
    image = torch.randint(0, 255, (1, 8, 8), dtype=torch.uint8)
    x = predictor.preprocess(image).unsqueeze(0)
    with torch.inference_mode():
        expected = ((predictor.model(x) + predictor.model(x.flip(3))) / 2).softmax(1)
    assert torch.allclose(predictor.predict_proba([image]), expected, atol=1e-6)


def test_idx_reader_reads_and_rejects(tmp_path):
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") * 2
    data = header + bytes(range(18))
    array = read_idx(data, tmp_path / "x")
    assert array.shape == (2, 3, 3) and array[1, 2, 2] == 17
    with pytest.raises(DataError, match="truncated"):
        read_idx(data[:-1], tmp_path / "x")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(gzip.compress(data), tmp_path / "x")


def test_denormals_count_as_zero_while_training_where_asked(tmp_path, monkeypatch):
    """train.flush_denormal: Adam's averages for dead units decay into denormals, which x86 CPUs
    compute many times slower. The mode is process-wide, so `auto` (the default) sets it in the
    kiln command's own process only; from Python it leaves the process as it was."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    torch.set_flush_denormal(False)
    from kiln import process
    from kiln.engine.callbacks import Callback

    tiny = torch.tensor([1e-39])  # a float32 denormal
    seen = {}

    class Probe(Callback):
        def on_batch_end(self, trainer, epoch: int, step: int) -> None:
            seen.setdefault(name, float(tiny * 1.0))

    def train(flush, name_):
        kiln.train(model__name="mlp", data__subset=128, epochs=1, device="cpu",
                   train__flush_denormal=flush, run__report=False, run__dir=str(tmp_path),
                   run__name=name_, progress=False, callbacks=[Probe()])  # fmt: skip

    try:
        for name, flush in (("auto, from Python", "auto"), ("true", True), ("false", False)):
            train(flush, name)
        monkeypatch.setattr(process, "_command", True)  # as `kiln train` marks its own process
        name = "auto, the kiln command"
        train("auto", name)
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default again, for the tests after this one
    assert seen == {"auto, from Python": pytest.approx(1e-39), "true": 0.0,
                    "false": pytest.approx(1e-39), "auto, the kiln command": 0.0}  # fmt: skip
