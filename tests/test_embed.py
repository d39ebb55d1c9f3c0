"""`kiln export --embed-preprocessing`: the graph takes decoded images of any size and answers what
`kiln predict` answers on the image files; `kiln serve` passes decoded pixels in; the README's
onnxruntime script, run exactly as printed there, reproduces Kiln's answers."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_kiln
from fastapi.testclient import TestClient
from PIL import Image

import kiln
from kiln.data.images import decode, normalize, resize
from kiln.deploy.export import export_run
from kiln.deploy.preprocess import ImagePreprocess
from kiln.deploy.serve import create_app
from kiln.errors import ConfigError, KilnError
from kiln.infer import load_servable
from kiln.infer.raw import raw_rgb
from kiln.infer.spec import ExportSpec, sidecar_path

README = Path(__file__).resolve().parents[1] / "README.md"
SIZES = [(1, 1), (3, 7), (8, 8), (9, 8), (31, 17), (64, 64), (120, 45), (13, 400)]


def random_image(rng: np.random.Generator, height: int, width: int, mode: str) -> Image.Image:
    bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
    pixels = np.cumsum(pixels, axis=0).astype(np.uint8)  # some smooth parts, not only noise
    return Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_graph_preprocesses_exactly_as_kiln_decodes(channels: int):
    """Pixel for pixel: Pillow's bilinear cover-resize and crop (up and down, any aspect), the
    RGB -> grey conversion, transparency on black, scaling and mean/std."""
    rng = np.random.default_rng(channels)
    mean, std = [0.3] * channels, [0.2] * channels
    shape = (-1, 1, 1)
    for height, width in ((28, 28), (24, 40)):
        module = ImagePreprocess(channels, height, width, mean, std)
        for (h, w), mode in zip(SIZES, ["L", "RGB", "RGBA"] * 3, strict=False):
            image = random_image(rng, h, w, mode)
            pixels = decode(image, channels, height, width)
            want = normalize(pixels, torch.tensor(mean).view(shape), torch.tensor(std).view(shape))
            got = module(raw_rgb(image).unsqueeze(0))[0]
            assert torch.equal(got, want), (h, w, mode)


def test_stretch_resizes_each_side_as_pillow_does():
    rng = np.random.default_rng(5)
    module = ImagePreprocess(3, 20, 30, [0.0] * 3, [1.0] * 3, resize="stretch")
    for h, w in SIZES:
        image = random_image(rng, h, w, "RGB")
        want = np.asarray(resize(image, (30, 20), Image.Resampling.BILINEAR), dtype=np.float32)
        got = module(raw_rgb(image).unsqueeze(0))[0].permute(1, 2, 0).numpy() * 255.0
        assert np.abs(got - want).max() < 1e-3, (h, w)
    with pytest.raises(ValueError, match="resize must be one of"):
        ImagePreprocess(3, 20, 30, [0.0] * 3, [1.0] * 3, resize="squash")


@pytest.fixture(scope="module")
def exports(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("embedded")
    made = {}
    for fmt in ("onnx", "torchscript"):
        result = export_run(trained_run, fmt, output=out / fmt, embed_preprocessing=True,
                            parity_images=64, log=lambda _: None)  # fmt: skip
        made[fmt] = result.path
    return made


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Image files of the sizes and modes a user has: none is the run's 8x8 grey."""
    folder = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    paths = []
    for i, ((h, w), mode) in enumerate(zip(SIZES[1:], ["RGB", "L", "RGBA"] * 3, strict=False)):
        path = folder / f"image{i}.png"
        random_image(rng, h, w, mode).save(path)
        paths.append(path)
    return paths


def top(answers: list[dict]) -> list[tuple[str, float]]:
    return [(a["label"], a["probability"]) for a in answers]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_embedded_export_answers_like_the_run(exports, trained_run: Path, files, fmt: str):
    spec = ExportSpec.read(sidecar_path(exports[fmt]))
    assert spec.raw_input is not None and spec.raw_input.layout == "NHWC"
    assert spec.output["name"] == "probabilities"
    for parity in (spec.parity, spec.parity_resized):
        assert parity.max_abs_logit_diff <= 1e-4 and parity.top1_agreement == 1.0
    assert "resized" in spec.parity_resized.source
    want = kiln.load(trained_run).predict(files, top_k=3)
    got = kiln.load(exports[fmt]).predict(files, top_k=3)
    assert [a["label"] for a in got] == [a["label"] for a in want]
    for g, w in zip(top(got), top(want), strict=True):
        assert abs(g[1] - w[1]) < 1e-5


def test_executorch_program_takes_one_size_and_answers_like_the_run(trained_run, tmp_path):
    """--format executorch: the program takes decoded images of one size (a camera's frames,
    --input-size), resizes them to the model's size itself, and answers what the run answers
    on the same files; images of another size are refused in one line."""
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is in the dev extra")
    result = export_run(
        trained_run, "executorch", output=tmp_path / "et", parity_images=32,
        embed_preprocessing=True, input_size=(30, 20), log=lambda _: None,
    )  # fmt: skip
    spec = ExportSpec.read(result.sidecar)
    raw = spec.raw_input
    assert (raw.height, raw.width, raw.max_batch) == (30, 20, 8) and "30x20" in raw.size
    for parity in (spec.parity, spec.parity_resized):
        assert parity.max_abs_logit_diff <= 1e-4 and parity.top1_agreement == 1.0
    rng = np.random.default_rng(1)
    files = []
    for i, mode in enumerate(["RGB", "L", "RGBA"] * 4):  # 12 images: two calls of at most 8
        files.append(tmp_path / f"frame{i}.png")
        random_image(rng, 30, 20, mode).save(files[-1])
    want = kiln.load(trained_run).predict(files, top_k=3)
    got = kiln.load(result.path).predict(files, top_k=3)
    assert [a["label"] for a in got] == [a["label"] for a in want]
    for g, w in zip(top(got), top(want), strict=True):
        assert abs(g[1] - w[1]) < 1e-5
    other = tmp_path / "other.png"
    random_image(rng, 20, 30, "RGB").save(other)
    with pytest.raises(KilnError, match="exactly 30x20 pixels"):
        kiln.load(result.path).predict([other])
    with pytest.raises(ConfigError, match="--input-size fixes the image size"):
        export_run(trained_run, "onnx", output=tmp_path / "x", embed_preprocessing=True,
                   input_size=(30, 20), log=lambda _: None)  # fmt: skip


def readme_script() -> str:
    """The script exactly as README.md prints it (the block after its marker)."""
    text = README.read_text()
    after = text.split("<!-- embedded-onnx-script -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_onnxruntime_script_reproduces_kiln_predict(exports, trained_run, files, tmp_path):
    code = readme_script()
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(code))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert "kiln" not in imported and len(code.strip().splitlines()) <= 14
    script = tmp_path / "predict.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(exports["onnx"]), *map(str, files)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.strip().splitlines()]
    want = kiln.load(trained_run).predict(files, top_k=1)
    assert [line[1] for line in lines] == [a["label"] for a in want]
    for line, answer in zip(lines, want, strict=True):
        assert abs(float(line[2]) - answer["probability"]) < 1e-5


def test_serve_passes_decoded_pixels_in(exports, trained_run: Path, files):
    """One request with images of several sizes: the embedded ONNX graph answers each as the
    run's own server does."""
    uploads = [("files", (p.name, p.read_bytes(), "image/png")) for p in files]
    answers = {}
    for name, source in (("export", exports["onnx"]), ("run", trained_run)):
        client = TestClient(create_app(load_servable(source)))
        response = client.post("/predict?top_k=2", files=uploads)
        assert response.status_code == 200, response.text
        answers[name] = response.json()["predictions"]
    assert [a["label"] for a in answers["export"]] == [a["label"] for a in answers["run"]]
    for got, want in zip(answers["export"], answers["run"], strict=True):
        assert abs(got["probability"] - want["probability"]) < 1e-5
    meta = TestClient(create_app(load_servable(exports["onnx"]))).get("/metadata").json()
    assert meta["raw_input"]["dtype"] == "uint8"


def test_embedded_export_refuses_what_it_cannot_carry(trained_run: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="use --format onnx, torchscript or executorch"):
        export_run(trained_run, "state_dict", output=tmp_path, embed_preprocessing=True)
    with pytest.raises(ConfigError, match="drop --quantize"):
        export_run(trained_run, "onnx", quantize="dynamic", output=tmp_path,
                   embed_preprocessing=True)  # fmt: skip
    assert not any(tmp_path.iterdir())


def test_raw_images_of_a_bad_kind_are_refused():
    with pytest.raises(KilnError, match="uint8"):
        raw_rgb(torch.zeros(4, 5, 6))
    assert raw_rgb(Image.open(io.BytesIO(png_bytes()))).shape == (5, 4, 3)


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("LA", (4, 5)).save(buf, "PNG")
    return buf.getvalue()


def test_cli_prints_both_parity_checks(trained_run: Path, tmp_path: Path):
    out = tmp_path / "x.torchscript.pt"
    args = ("--embed-preprocessing", "--format", "torchscript", "--parity-images", "16", "-o", out)
    result = run_kiln("export", trained_run, *args, cwd=tmp_path, data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resized to other sizes" in result.stdout and out.is_file()
    assert json.loads(sidecar_path(out).read_text())["raw_input"]["resize"] == "cover"
