"""Why a model decided: heat maps that land where the evidence is (a synthetic dataset whose class
is decided by one marked region), in `kiln predict --explain`, POST /explain, the page, the
report's figure (tests/test_report.py), per class for segmentation, and a clear refusal where a
task or an export cannot explain."""

from __future__ import annotations

import base64
import io
import json
from importlib.resources import files as package_files
from pathlib import Path

import pytest
import torch
from conftest import assert_clean_error, run_kiln
from fastapi.testclient import TestClient
from PIL import Image

from kiln.data.registry import DataInfo
from kiln.deploy.export import export_run
from kiln.deploy.serve import create_app
from kiln.errors import KilnError
from kiln.evaluate.explain import grad_cam_layer, mass_inside
from kiln.infer import load_servable
from kiln.models.convnet import ConvNet
from kiln.tasks import get_task

SIZE, PATCH = 32, 10
CLASSES = ["across", "down", "diagonal", "antidiagonal"]


def marked(n: int, seed: int):
    """Noise, and one grey square at a random place holding a bright stroke: across, down, or
    along either diagonal (the four classes). Nothing outside the square tells them apart."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 70, (n, 1, SIZE, SIZE), generator=g).float()
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    corners = torch.randint(0, SIZE - PATCH + 1, (n, 2), generator=g)
    stroke = torch.zeros(len(CLASSES), PATCH, PATCH, dtype=torch.bool)
    middle, inner = slice(PATCH // 2 - 1, PATCH // 2 + 1), slice(1, PATCH - 1)
    stroke[0, middle, inner] = stroke[1, inner, middle] = True
    for k in range(1, PATCH - 1):
        stroke[2, k, k] = stroke[2, k, k - 1] = stroke[3, k, PATCH - 1 - k] = True
        stroke[3, k, PATCH - k] = True
    for i, (y, x) in enumerate(corners.tolist()):
        square = images[i, 0, y : y + PATCH, x : x + PATCH]
        square[:] = 120
        square[stroke[labels[i]]] = 255
    return images / 255.0, labels, corners


def region(y: int, x: int, margin: int = 2) -> torch.Tensor:
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[max(0, y - margin) : y + PATCH + margin, max(0, x - margin) : x + PATCH + margin] = True
    return inside


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, DataInfo]:
    images, labels, _ = marked(800, 0)
    mean, std = images.mean().item(), images.std().item()
    x = (images - mean) / std
    torch.manual_seed(0)
    model = ConvNet(1, len(CLASSES), SIZE, depth=3, width=8)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(3):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start : start + 64]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    info = DataInfo("marked", CLASSES, 1, SIZE, SIZE, [mean], [std])
    return model.eval(), info


@pytest.mark.parametrize("method", ["gradcam", "ig"])
def test_the_map_puts_most_of_its_mass_on_the_marked_region(trained, method: str):
    model, info = trained
    images, labels, corners = marked(12, 1)
    x = (images - info.mean[0]) / info.std[0]
    with torch.no_grad():
        assert (model(x).argmax(1) == labels).float().mean() >= 0.9  # it learned the task
    explained = get_task("classify").explain(model, x, info, top_k=1, method=method)
    masses = [mass_inside(e[0].heat, region(*c)) for e, c in zip(explained, corners.tolist(),
                                                                   strict=True)]  # fmt: skip
    share_of_area = region(11, 11).float().mean().item()  # a map spread evenly: about 0.19
    assert sum(masses) / len(masses) > 0.5 > share_of_area, masses
    assert sorted(masses)[len(masses) // 2] > 0.5, masses  # the median image too
    first = explained[0][0]
    assert first.heat.shape == (SIZE, SIZE) and 0 <= first.heat.min() <= first.heat.max() <= 1
    assert first.label in info.classes and 0 <= first.score <= 1
    assert first.method.startswith("gradcam (features." if method == "gradcam" else "integrated")


def test_grad_cam_needs_a_convolution(trained):
    model, info = trained
    x = torch.zeros(1, 1, SIZE, SIZE)
    assert grad_cam_layer(model, x)[0] == "features.10"  # 8x8 maps, after the ReLU
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, len(CLASSES)))
    assert grad_cam_layer(mlp, x) is None
    with pytest.raises(KilnError, match="use --explain ig"):
        get_task("classify").explain(mlp, x, info, method="gradcam")
    (auto,) = get_task("classify").explain(mlp, x, info, top_k=2)
    assert [e.method for e in auto] == ["integrated gradients"] * 2


def test_segmentation_explains_each_class_it_finds():
    from kiln.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(1, 3, depth=2, width=4).eval()
    info = DataInfo("seg", ["background", "a", "b"], 1, 16, 16, [0.5], [0.25])
    x = torch.randn(1, 1, 16, 16)
    (explained,) = get_task("segment").explain(model, x, info, top_k=3)
    with torch.no_grad():
        found = set(model(x).argmax(1).unique().tolist())
    assert [e.label for e in explained] and {e.label for e in explained} == {
        info.classes[c] for c in found
    }  # every class it found, with its share of the pixels
    assert abs(sum(e.score for e in explained) - 1) < 1e-5
    for e in explained:
        assert e.heat.shape == (16, 16) and float(e.heat.max()) <= 1


def test_tasks_without_explanations_say_so():
    info = DataInfo("t", ["y"], 1, 8, 8, [0.0], [1.0])
    with pytest.raises(KilnError, match="not available for task=regress"):
        get_task("regress").explain(torch.nn.Identity(), torch.zeros(1, 1, 8, 8), info)


def digit_png(path: Path) -> Path:
    Image.fromarray((torch.rand(12, 20) * 255).to(torch.uint8).numpy()).save(path)
    return path


def test_kiln_predict_explain_writes_a_map_per_top_class(trained_run: Path, tmp_path: Path):
    image = digit_png(tmp_path / "digit.png")
    out = tmp_path / "why"
    args = ("predict", trained_run, image, "--explain", "--top-k", "2", "-o", out, "--json")
    result = run_kiln(*args, cwd=tmp_path, data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    (answer,) = json.loads(result.stdout)
    assert answer["method"] == "integrated gradients"  # an MLP: nothing for Grad-CAM to hook
    assert len(answer["explanations"]) == 2
    for item in answer["explanations"]:
        with Image.open(item["map"]) as png:
            assert png.mode == "RGB" and min(png.size) >= 224  # 8x8 digits, enlarged
    refused = run_kiln("predict", trained_run, image, "--explain", "gradcam", "-o", out,
                       cwd=tmp_path, data_dir=tmp_path)  # fmt: skip
    assert_clean_error(refused, "use --explain ig")


@pytest.fixture(scope="module")
def state_dict_export(trained_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sd")
    return export_run(trained_run, "state_dict", output=out, log=lambda _: None).path


def test_post_explain_answers_maps_and_the_page_offers_them(trained_run, state_dict_export):
    png = io.BytesIO()
    Image.fromarray((torch.rand(30, 30) * 255).to(torch.uint8).numpy()).save(png, "PNG")
    upload = [("files", ("x.png", png.getvalue(), "image/png"))]
    client = TestClient(create_app(load_servable(trained_run)))
    assert client.get("/metadata").json()["explain"] is True
    response = client.post("/explain?top_k=2", files=upload)
    assert response.status_code == 200, response.text
    (item,) = response.json()["explanations"]
    assert item["file"] == "x.png" and len(item["explanations"]) == 2
    for e in item["explanations"]:
        for key in ("overlay_png", "heat_png"):
            with Image.open(io.BytesIO(base64.b64decode(e[key]))) as picture:
                assert picture.size == (8, 8)  # the model's input size (digits)
    assert client.post("/explain", files=[("files", ("bad.png", b"nope", "image/png"))]
                       ).status_code == 400  # fmt: skip
    export = TestClient(create_app(load_servable(state_dict_export)))
    assert export.get("/metadata").json()["explain"] is False
    refused = export.post("/explain", files=upload)
    assert refused.status_code == 404 and "serve the run directory" in refused.json()["detail"]
    page = package_files("kiln.deploy").joinpath("page.html").read_text()
    assert 'fetch("explain?top_k=1"' in page and 'id="why-button"' in page
