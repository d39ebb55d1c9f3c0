"""Export and serving beyond classification: a segmentation run answers masks (ONNX, served as
PNGs), VAE and GAN runs export their generator (latent z in, images out) and `kiln serve` samples
from it. Tiny runs on synthetic masks and scikit-learn's digits: no shared data needed."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_generate import config as generate_config
from test_segment import write_seg_folder

import kiln
from kiln.deploy.export import export_run
from kiln.deploy.serve import create_app
from kiln.infer import load_servable, sample_images
from kiln.models.tta import infer


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A U-Net on synthetic masks, a VAE, and a GAN scored by a small classifier (digits)."""
    tmp = tmp_path_factory.mktemp("deploy-tasks")
    root = write_seg_folder(tmp / "seg", n_train=40, n_test=6)
    kiln.train(
        {
            "task": "segment",
            "data": {"name": "seg-folder", "root": str(root), "batch_size": 8},
            "model": {"name": "unet", "depth": 2, "width": 8},
            "train": {"epochs": 2, "device": "cpu", "seed": 0},
            "optim": {"lr": 0.01},
            "run": {"dir": str(tmp / "runs"), "name": "seg", "report": False},
        },
        progress=False,
    )
    kiln.train(generate_config(tmp, "vae", "vae", name="vae", latent=4, width=8), progress=False)
    clf = generate_config(tmp, "classifier", "classify", name="convnet", width=8, depth=2)
    kiln.train({**clf, "train": {**clf["train"], "epochs": 1}}, progress=False)
    gan = generate_config(tmp, "gan", "gan", name="dcgan", latent=8, width=8)
    gan["train"]["epochs"] = 1
    gan["gan"] = {"frechet_classifier": str(tmp / "runs" / "classifier")}
    kiln.train(gan, progress=False)
    return {"root": root, **{name: tmp / "runs" / name for name in ("seg", "vae", "gan")}}


def test_flip_tta_mirrors_dense_scores_back():
    """model.tta=flip on a per-pixel model: the mirror image's scores are mirrored back, so a
    model that just copies its input answers the input itself."""
    identity = torch.nn.Identity()
    x = torch.arange(24.0).view(1, 1, 4, 6)
    assert torch.equal(infer(identity, x, "flip"), x)
    pooled = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24, 3))  # (N, classes)
    expected = (pooled(x) + pooled(x.flip(-1))) / 2
    assert torch.allclose(infer(pooled, x, "flip"), expected)


def test_segment_export_and_serve_answer_masks(runs):
    run, root = runs["seg"], runs["root"]
    result = export_run(run, "onnx", log=lambda _: None)
    parity = result.spec.parity
    assert parity.max_abs_logit_diff <= 1e-4 and parity.top1_agreement > 0.999  # per pixel
    assert result.spec.task == "segment" and result.spec.output["per"] == "pixel"
    files = sorted((root / "test" / "images").glob("*.png"))[:3]
    exported = load_servable(result.path)
    from_run = load_servable(run)
    for servable in (exported, from_run):
        rows = servable.predict(files)
        masks = [np.array(r["mask"], dtype=np.uint8) for r in rows]
        assert all(m.shape == (20, 24) and m.max() <= 2 for m in masks)
    truth = [np.asarray(Image.open(root / "test" / "masks" / f.name)) for f in files]
    accuracy = np.mean([(m == t).mean() for m, t in zip(masks, truth, strict=True)])
    assert accuracy > 0.8, accuracy  # the model learned the square and the bar

    client = TestClient(create_app(exported))
    sent = [("files", (f.name, f.read_bytes(), "image/png")) for f in files]
    answer = client.post("/predict", files=sent)
    assert answer.status_code == 200, answer.text
    served = answer.json()["predictions"]
    assert [p["file"] for p in served] == [f.name for f in files]
    for p, m in zip(served, masks, strict=True):
        got = png(base64.b64decode(p["mask_png"]))
        assert np.array_equal(got, m)  # the run's eager answer, through ONNX and PNG
        assert sum(p["classes"].values()) == pytest.approx(1, abs=1e-3)
        assert "label" not in p and "top_k" not in p
    assert client.get("/metadata").json()["task"] == "segment"


@pytest.mark.parametrize(("name", "fmt"), [("vae", "onnx"), ("gan", "torchscript")])
def test_generators_export_and_serve_samples(runs, name, fmt):
    run = runs[name]
    result = export_run(run, fmt, log=lambda _: None)
    spec = result.spec
    assert spec.latent == (4 if name == "vae" else 8) and spec.output["name"] == "images"
    assert spec.parity.max_abs_logit_diff <= 1e-4 and spec.parity.top1_agreement is None
    assert "latent vectors" in spec.parity.source
    servable = load_servable(result.path)
    drawn = servable.sample(6, seed=3)
    expected = sample_images(run, 6, seed=3)  # what `kiln sample --seed 3` makes
    assert drawn.shape == (6, 1, 8, 8) and drawn.dtype == torch.uint8
    assert (drawn.int() - expected.int()).abs().max() <= 1  # rounding at most

    client = TestClient(create_app(servable))
    grid = client.get("/sample", params={"n": 4, "seed": 3})
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert png(grid.content).shape == (2 * 10 + 2, 2 * 10 + 2)  # 2 x 2 cells of 8 + padding
    many = client.get("/sample", params={"n": 3, "seed": 3, "format": "json"}).json()
    first = png(base64.b64decode(many["images"][0]))
    three = sample_images(run, 3, seed=3)  # n draws of a seed depend on n (torch.randn)
    assert len(many["images"]) == 3 and np.abs(first.astype(int) - three[0, 0].numpy()).max() <= 1
    too_many = client.get("/sample", params={"n": 1000})
    assert too_many.status_code == 422
    refused = client.post("/predict", files=[("files", ("a.png", b"x", "image/png"))])
    assert refused.status_code == 404 and "GET /sample" in refused.json()["detail"]
    assert client.get("/metadata").json()["task"] == name
