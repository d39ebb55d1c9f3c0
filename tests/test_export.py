"""`kiln export`: every format loads back, answers like the run (raw image in, same top-k out),
ONNX accepts any batch size, quantized exports report their costs, and a bad export ships nothing.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_clean_error, run_kiln
from PIL import Image

import kiln
from kiln.deploy import export as export_mod
from kiln.deploy.export import ExportError, export_run
from kiln.errors import KilnError, RunError
from kiln.infer import load_servable
from kiln.infer.spec import ExportSpec, sidecar_path

FORMATS = ("onnx", "torchscript", "state_dict")


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A convnet (conv, batch norm, pooling) on digits, with test-time flips: the layers and the
    TTA an export must carry. Tests export with -o into their own folders and never modify it."""
    work = tmp_path_factory.mktemp("conv")
    (work / "data").mkdir()
    result = run_kiln(
        "train", "model=convnet", "epochs=1", "model.tta=flip", "device=cpu", "run.report=false",
        f"run.dir={work / 'runs'}", "name=conv", cwd=work, data_dir=work / "data",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return work / "runs" / "conv"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Files of other sizes and modes than the 8x8 grey training images: preprocessing counts."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (size, mode) in enumerate([((32, 32), "L"), ((40, 24), "RGB"), ((8, 8), "L")]):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
        paths.append(path)
    return paths


def probabilities(results: list[dict]) -> dict[str, float]:
    return {t["label"]: t["probability"] for t in results["top_k"]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_answers_like_the_run(conv_run: Path, images: list[Path], tmp_path: Path, fmt):
    result = export_run(conv_run, fmt, output=tmp_path, log=lambda _: None)
    assert result.path.parent == tmp_path and result.sidecar == sidecar_path(result.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [result.path.name, result.sidecar.name]
    ), "temporary files left behind"
    parity = result.spec.parity
    assert parity.images == 144 and "validation images of digits" in parity.source
    assert parity.max_abs_logit_diff <= 1e-4 and parity.top1_agreement == 1.0

    expected = kiln.load(conv_run).predict(images, top_k=10)
    served = load_servable(result.path).predict(images, top_k=10)
    for want, got in zip(expected, served, strict=True):
        assert got["label"] == want["label"]
        want_p, got_p = probabilities(want), probabilities(got)
        assert want_p.keys() == got_p.keys()
        assert max(abs(want_p[k] - got_p[k]) for k in want_p) < 1e-5


def test_onnx_file_is_valid_and_takes_any_batch(conv_run: Path, tmp_path: Path):
    import onnx
    import onnxruntime as ort

    result = export_run(conv_run, "onnx", output=tmp_path / "m.onnx", log=lambda _: None)
    onnx.checker.check_model(str(result.path), full_check=True)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape[1:] == [1, 8, 8]
    model = kiln.load(conv_run).model
    for batch in (1, 3, 256):
        x = torch.randn(batch, 1, 8, 8)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.inference_mode():
            want = ((model(x) + model(x.flip(3))) / 2).numpy()  # the run's model.tta=flip
        assert got.shape == (batch, 10)
        assert np.abs(got - want).max() < 1e-4


def test_sidecar_carries_the_preprocessing(conv_run: Path, tmp_path: Path):
    result = export_run(conv_run, "onnx", output=tmp_path, log=lambda _: None)
    raw = json.loads(result.sidecar.read_text())
    info = json.loads((conv_run / "info.json").read_text())
    assert raw["file"] == result.path.name and raw["format"] == "onnx"
    assert raw["classes"] == info["classes"]
    assert raw["input"]["mean"] == info["mean"] and raw["input"]["std"] == info["std"]
    assert (raw["input"]["channels"], raw["input"]["height"], raw["input"]["width"]) == (1, 8, 8)
    assert raw["tta"] == "flip" and raw["tta_in_graph"] is True
    assert raw["model"]["name"] == "convnet" and raw["model"]["run"] == "conv"
    assert len(raw["sha256"]) == 64
    ExportSpec.read(result.sidecar)  # and it validates


def test_cli_export_prints_parity(conv_run: Path, tmp_path: Path):
    out = tmp_path / "exports"
    result = run_kiln("export", conv_run, "-o", f"{out}/", cwd=tmp_path, data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    match = re.search(r"largest output difference (\S+) \(limit 1e-04\)", result.stdout)
    assert match and float(match.group(1)) <= 1e-4, result.stdout
    assert (out / "model.onnx").is_file() and (out / "model.onnx.json").is_file()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_quantized_export_reports_size_latency_accuracy(conv_run: Path, tmp_path: Path, fmt):
    result = export_run(conv_run, fmt, quantize="dynamic", output=tmp_path, log=lambda _: None)
    q = result.quantized
    assert result.path.name.startswith("model-int8") and result.spec.quantize == "dynamic"
    assert q["int8_bytes"] == result.path.stat().st_size
    assert q["fp32_latency_ms"] > 0 and q["int8_latency_ms"] > 0
    assert q["images"] == 144 and 0 <= q["int8_accuracy"] <= 1
    assert abs(q["int8_accuracy"] - q["fp32_accuracy"]) < 0.1  # int8 weights, same model
    assert result.spec.parity.tolerance is None  # measured, not gated
    if fmt == "onnx":  # onnxruntime quantizes the convolutions too, not only the linear layer
        assert q["int8_bytes"] < q["fp32_bytes"]
    served = load_servable(result.path)
    assert served.spec.quantize == "dynamic" and len(served.classes) == 10


def test_cli_quantized_export(trained_run: Path, tmp_path: Path):
    result = run_kiln(
        "export", trained_run, "--quantize", "dynamic", "-o", tmp_path / "q.onnx",
        cwd=tmp_path, data_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for line in ("Size: ", "Latency, one image: ", "Accuracy on 144 validation images: "):
        assert line in result.stdout, result.stdout
    assert (tmp_path / "q.onnx").is_file() and (tmp_path / "q.onnx.json").is_file()


def test_static_int8_is_calibrated_and_within_a_point_of_fp32(conv_run: Path, tmp_path: Path):
    result = export_run(conv_run, "onnx", quantize="static", output=tmp_path, log=lambda _: None)
    q, spec = result.quantized, result.spec
    assert result.path.name == "model-int8-static.onnx" and spec.quantize == "static"
    assert spec.calibration == {"method": "minmax", "per_channel": True, "images": 512,
                                "source": "training images of digits",
                                "images_asked": 512}  # fmt: skip
    assert q["images"] == 144 and abs(q["int8_accuracy"] - q["fp32_accuracy"]) <= 0.01
    assert q["int8_bytes"] < 0.5 * q["fp32_bytes"]
    assert spec.parity.top1_agreement >= 0.97 and spec.parity.tolerance is None
    import onnx  # weights and activations both quantized: QDQ pairs around the convolutions

    ops = {node.op_type for node in onnx.load(str(result.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    served = load_servable(result.path)
    assert served.spec.quantize == "static" and served.spec.calibration["images"] == 512


def test_cli_static_export_prints_agreement_and_accuracy(conv_run: Path, tmp_path: Path):
    result = run_kiln(
        "export", conv_run, "--quantize", "static", "--calibration", "entropy",
        "--no-per-channel", "--calibration-images", "200", "-o", tmp_path,  # 6 batches of 32
        cwd=tmp_path, data_dir=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Calibrating on 192 training images of digits (entropy, per tensor)" in out, out
    assert re.search(r"top-1 agreement \d+\.\d+%", out), out
    assert re.search(r"Accuracy on 144 validation images: \S+% fp32, \S+% int8", out), out
    assert "bins" not in out  # the entropy calibrator's own prints stay quiet
    sidecar = json.loads((tmp_path / "model-int8-static.onnx.json").read_text())
    assert sidecar["calibration"]["method"] == "entropy"
    assert sidecar["calibration"]["per_channel"] is False


def test_executorch_program_answers_like_the_run(conv_run: Path, images: list[Path], tmp_path):
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed")
    result = export_run(conv_run, "executorch", output=tmp_path, log=lambda _: None)
    assert result.path.name == "model.pte" and result.sidecar.name == "model.pte.json"
    parity = result.spec.parity
    assert parity.max_abs_logit_diff <= 1e-4 and parity.top1_agreement == 1.0
    served = load_servable(result.path)
    assert served.runtime.startswith("executorch")
    expected = kiln.load(conv_run).predict(images, top_k=10)
    for want, got in zip(expected, served.predict(images, top_k=10), strict=True):
        assert got["label"] == want["label"]
    many = torch.randn(150, 1, 8, 8)  # more than one call's planned batch (64): split up
    assert served.logits(many).shape == (150, 10)


def test_int8_executorch_program_with_test_time_flips_loads_and_agrees(conv_run: Path, tmp_path):
    """The run's model.tta=flip runs the net on an image and its mirror: the graph calls the net
    once on both, since XNNPACK refuses to load an int8 convolution whose weights another call
    of the same layer already used (what CIFAR-10's fast recipe hit)."""
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed")
    result = export_run(conv_run, "executorch", quantize="static", output=tmp_path,
                        log=lambda _: None)  # fmt: skip
    assert result.path.name == "model-int8-static.pte" and result.spec.tta == "flip"
    q = result.quantized
    assert abs(q["int8_accuracy"] - q["fp32_accuracy"]) <= 0.01
    assert result.spec.parity.top1_agreement >= 0.97
    served = load_servable(result.path)
    assert served.logits(torch.randn(70, 1, 8, 8)).shape == (70, 10)


def test_without_executorch_the_format_names_what_to_install(conv_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "executorch", None)  # `import executorch` now fails
    with pytest.raises(KilnError, match=r"pip install 'executorch==1\.5\.1'") as caught:
        export_run(conv_run, "executorch", output=tmp_path, log=lambda _: None)
    assert len(str(caught.value).splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_disagreeing_export_is_refused_and_nothing_written(
    trained_run: Path, tmp_path: Path, monkeypatch
):
    real = export_mod.load_file

    def off_by_a_little(path, spec, final=None):
        servable = real(path, spec, final)
        inner = servable._logits
        servable._logits = lambda x: inner(x) + 1e-3
        return servable

    monkeypatch.setattr(export_mod, "load_file", off_by_a_little)
    with pytest.raises(ExportError, match=r"largest logit difference 0\.001 > 0\.0001"):
        export_run(trained_run, "onnx", output=tmp_path, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_does_not_load_back_is_named_as_asked_and_not_written(
    trained_run: Path, tmp_path: Path, monkeypatch
):
    """The runtime's refusal (here: made up) names the file asked for, not the temporary one."""

    def refuse(path, spec):
        raise RunError(f"ExecuTorch cannot load {path}: Failed to load method forward")

    monkeypatch.setattr(export_mod, "open_export", refuse)
    with pytest.raises(ExportError) as caught:
        export_run(trained_run, "onnx", output=tmp_path / "m.onnx", log=lambda _: None)
    message = str(caught.value)
    assert f"cannot load {tmp_path / 'm.onnx'}:" in message and ".tmp" not in message
    assert "nothing was written" in message and len(message.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_without_the_data_parity_uses_random_images(run_copy: Path, tmp_path: Path):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["data"]["name"], config["data"]["root"] = "mnist", str(tmp_path / "nowhere")
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    result = export_run(run_copy, "onnx", output=tmp_path / "out", log=lambda _: None)
    assert result.spec.parity.source.startswith("random images (the run's data is unavailable")
    assert result.spec.parity.images == 256 and result.spec.parity.max_abs_logit_diff <= 1e-4


def test_predict_accepts_an_export(trained_run: Path, images: list[Path], tmp_path: Path):
    export_run(trained_run, "torchscript", output=tmp_path, log=lambda _: None)
    args = ("--json", *images)
    from_run = run_kiln("predict", trained_run, *args, cwd=tmp_path, data_dir=tmp_path)
    from_export = run_kiln("predict", tmp_path, *args, cwd=tmp_path, data_dir=tmp_path)
    assert from_run.returncode == 0 and from_export.returncode == 0, from_export.stderr
    want, got = json.loads(from_run.stdout), json.loads(from_export.stdout)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert [r["file"] for r in got] == [str(p) for p in images]


def test_changed_or_lonely_export_files_are_refused(trained_run: Path, tmp_path: Path):
    result = export_run(trained_run, "onnx", output=tmp_path / "a", log=lambda _: None)
    lonely = tmp_path / "b" / "model.onnx"
    lonely.parent.mkdir()
    shutil.copy(result.path, lonely)
    with pytest.raises(KilnError, match=r"no sidecar model\.onnx\.json beside it"):
        load_servable(lonely)
    with open(result.path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(KilnError, match="has changed since it was exported"):
        load_servable(result.path)
    damaged = json.loads(result.sidecar.read_text())
    damaged["input"]["channels"] = "three"
    result.sidecar.write_text(json.dumps(damaged))
    with pytest.raises(KilnError, match=r"input\.channels"):
        load_servable(result.path)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--format", "state_dict", "--quantize", "dynamic"], ["--quantize needs --format onnx"]),
        (["-o", "model.pt"], ["must end in .onnx"]),
        (["--format", "tflite"], ["invalid choice: 'tflite'"]),
        (["--parity-images", "0"], ["--parity-images must be at least 1"]),
        (["--format", "torchscript", "--quantize", "static"], ["--quantize static writes ONNX"]),
        (["--format", "executorch", "--quantize", "dynamic"], ["use --quantize static"]),
        (["--quantize", "static", "--calibration-images", "0"], ["--calibration-images"]),
    ],
)
def test_export_errors(trained_run: Path, tmp_path: Path, args, needles):
    result = run_kiln("export", trained_run, *args, cwd=tmp_path, data_dir=tmp_path)
    if "invalid choice" in needles[0]:  # argparse's own message
        assert result.returncode == 2 and needles[0] in result.stderr
        return
    assert_clean_error(result, *needles)
    assert not (trained_run / "exports").exists()


def test_a_state_dict_export_loads_as_the_tutorials_load_one(conv_run: Path, tmp_path: Path):
    """`model.load_state_dict(torch.load(path, weights_only=True))`, exactly: the file holds the
    model's own keys and nothing else (what it is lives in the JSON sidecar)."""
    from kiln.models import create_model
    from kiln.rundir import RunDir

    result = export_run(conv_run, "state_dict", output=tmp_path, log=lambda _: None)
    path = result.path
    run = RunDir(conv_run)
    options = {k: v for k, v in run.load_config().model.kwargs().items()}
    model = create_model("convnet", run.data_info(), **options)
    model.load_state_dict(torch.load(path, weights_only=True))
    saved = torch.load(conv_run / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["format"] == "state_dict" and sidecar["classes"] == [str(i) for i in range(10)]
