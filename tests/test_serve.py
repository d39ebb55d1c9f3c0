"""`kiln serve`'s HTTP API through httpx (FastAPI's TestClient): answers, limits, errors, token.

The app serves the session's trained digits run; answers are checked against `kiln.load`, the
Python API, on the same raw PNG files.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import assert_clean_error, run_kiln
from fastapi.testclient import TestClient
from PIL import Image

import kiln
from kiln.deploy.export import export_run
from kiln.deploy.serve import create_app
from kiln.deploy.uploads import Limits
from kiln.infer import load_servable


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    rng = np.random.default_rng(1)
    return [png(rng.integers(0, 256, (16, 16))) for _ in range(5)]


@pytest.fixture(scope="module")
def servable(trained_run: Path):
    return load_servable(trained_run)


@pytest.fixture(scope="module")
def client(servable) -> TestClient:
    return TestClient(create_app(servable))


def expected(trained_run: Path, data: list[bytes], top_k: int = 5) -> list[dict]:
    images = [Image.open(io.BytesIO(d)) for d in data]
    return kiln.load(trained_run).predict(images, top_k=top_k)


def files(data: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"img{i}.png", d, "image/png")) for i, d in enumerate(data)]


def test_health_metadata_docs(client: TestClient, trained_run: Path):
    assert client.get("/health").json() == {"status": "ok", "model": "mlp"}
    meta = client.get("/metadata").json()
    info = kiln.load(trained_run).info
    assert meta["classes"] == info.classes
    assert (meta["input"]["channels"], meta["input"]["height"], meta["input"]["width"]) == (
        1, 8, 8,
    )  # fmt: skip
    assert meta["input"]["mean"] == info.mean and meta["input"]["std"] == info.std
    assert meta["model"]["name"] == "mlp" and meta["model"]["run"] == "digits-run"
    assert meta["model"]["kiln_version"] == kiln.__version__
    assert meta["limits"] == {"max_upload_bytes": 10 * 2**20, "max_pixels": 40_000_000,
                              "max_images": 64}  # fmt: skip
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text


def test_predict_multipart_one_and_many(client: TestClient, trained_run: Path, pngs):
    one = client.post("/predict", files=files(pngs[:1])).json()
    assert one["model"] == "mlp" and len(one["predictions"]) == 1
    many = client.post("/predict?top_k=3", files=files(pngs)).json()["predictions"]
    want = expected(trained_run, pngs, top_k=3)
    assert [p["file"] for p in many] == [f"img{i}.png" for i in range(5)]
    for got, ref in zip(many, want, strict=True):
        assert got["label"] == ref["label"] and len(got["top_k"]) == 3
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in ref["top_k"]]
        assert abs(got["probability"] - ref["probability"]) < 1e-6
    assert one["predictions"][0]["top_k"][:3] == many[0]["top_k"]


def test_predict_json_base64_and_data_url(client: TestClient, trained_run: Path, pngs):
    b64 = base64.b64encode(pngs[0]).decode()
    body = {"images": [b64, f"data:image/png;base64,{b64}"], "names": ["a", "b"], "top_k": 2}
    got = client.post("/predict", json=body).json()["predictions"]
    ref = expected(trained_run, pngs[:1])[0]
    assert [p["file"] for p in got] == ["a", "b"]
    assert all(p["label"] == ref["label"] and len(p["top_k"]) == 2 for p in got)


def test_run_and_onnx_export_serve_the_same(trained_run: Path, tmp_path: Path, pngs):
    result = export_run(trained_run, "onnx", output=tmp_path, log=lambda _: None)
    onnx_client = TestClient(create_app(load_servable(result.path)))
    meta = onnx_client.get("/metadata").json()
    assert meta["format"] == "onnx" and meta["runtime"] == "onnxruntime"
    got = onnx_client.post("/predict", files=files(pngs)).json()["predictions"]
    want = expected(trained_run, pngs)
    for g, w in zip(got, want, strict=True):
        assert g["label"] == w["label"] and abs(g["probability"] - w["probability"]) < 1e-5


@functools.cache
def bomb() -> bytes:
    """A small PNG (about 60 KB) that decodes to 64 million pixels."""
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG")
    return buf.getvalue()


BAD_REQUESTS = {
    "text body": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415,
                  "content type 'text/plain' is not accepted"),
    "no content type": (dict(content=b"hello"), 415, "is not accepted"),
    "text part": (dict(files=[("files", ("notes.txt", b"hi", "text/plain"))]), 415,
                  "part 'notes.txt' has content type text/plain"),
    "not an image": (dict(files=[("files", ("fake.png", b"\x89PNG nope", "image/png"))]), 400,
                     "fake.png is not an image Kiln can read"),
    "truncated png": (dict(files=[("files", ("cut.png", None, "image/png"))]), 400,
                      "cut.png is not an image Kiln can read"),
    "empty file": (dict(files=[("files", ("empty.png", b"", "image/png"))]), 400,
                   "empty.png is empty"),
    "no files": (dict(content=b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3'
                              b"\r\n--b--\r\n",
                      headers={"content-type": "multipart/form-data; boundary=b"}), 400,
                 "no image in the request"),
    "text field": (dict(data={"files": "abc"}), 415, "x-www-form-urlencoded"),
    "broken multipart": (dict(content=b"--x\r\nbroken",
                              headers={"content-type": "multipart/form-data"}), 400,
                         "cannot parse the multipart body"),
    "bad json": (dict(content=b"{", headers={"content-type": "application/json"}), 400,
                 "the body is not valid JSON"),
    "json wrong key": (dict(json={"image": "x"}), 422, "images: Field required"),
    "json empty list": (dict(json={"images": []}), 422, "images: List should have at least 1"),
    "bad base64": (dict(json={"images": ["***"]}), 400, "images[0] is not valid base64"),
    "names mismatch": (dict(json={"images": ["aGk="], "names": []}), 422, "0 names for 1 images"),
    "top_k zero": (dict(params={"top_k": 0}, files=[("files", ("a.png", "PNG", "image/png"))]),
                   422, "query top_k"),
    "pixel bomb": (dict(files=[("files", ("bomb.png", "BOMB", "image/png"))]), 413,
                   "bomb.png is 8000x8000 = 64,000,000 pixels, above the limit of 40,000,000"),
    "too many images": (dict(files=[("files", (f"{i}.png", "PNG", "image/png"))
                                    for i in range(65)]), 413, "65 images in one request"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(client: TestClient, pngs, case):
    kwargs, status, needle = BAD_REQUESTS[case]
    good, kwargs = pngs[0], dict(kwargs)
    if "files" in kwargs:  # placeholders: None = a truncated PNG, "PNG" = a good one, "BOMB"
        kwargs["files"] = [
            (field, (name, {None: good[: len(good) // 2], "PNG": good}.get(d, d)
                     if d != "BOMB" else bomb(), ctype))
            for field, (name, d, ctype) in kwargs["files"]
        ]  # fmt: skip
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert needle in response.json()["detail"]
    assert client.post("/predict", files=files(pngs[:1])).status_code == 200


def test_body_limit_with_and_without_content_length(servable, pngs):
    limited = TestClient(create_app(servable, limits=Limits(max_upload_bytes=1000)))
    big = png(np.random.default_rng(0).integers(0, 256, (64, 64)))
    assert len(big) > 1000
    declared = limited.post("/predict", files=files([big]))
    assert declared.status_code == 413 and "limit of 1,000 bytes" in declared.json()["detail"]

    def chunks():  # streamed: no Content-Length, so the server must count
        yield from (big[i : i + 256] for i in range(0, len(big), 256))

    streamed = limited.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert limited.post("/predict", files=files(pngs[:1])).status_code == 200


def test_token_guards_everything_but_health_and_the_page(servable, pngs):
    guarded = TestClient(create_app(servable, token="s3cret"))
    good = {"Authorization": "Bearer s3cret"}
    assert guarded.get("/health").status_code == 200
    assert guarded.get("/").status_code == 200  # static HTML; it sends the token itself
    for method, path in [("get", "/metadata"), ("get", "/docs"), ("get", "/openapi.json"),
                         ("post", "/predict"), ("get", "/nowhere")]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = getattr(guarded, method)(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer TOKEN" in response.json()["detail"]
    assert guarded.get("/metadata", headers=good).status_code == 200
    assert guarded.post("/predict", files=files(pngs[:1]), headers=good).status_code == 200


def test_concurrent_requests_each_get_their_own_answer(servable, trained_run: Path, pngs):
    """Requests that arrive together share forward passes; each must still get its own rows."""
    app = create_app(servable)
    want = expected(trained_run, pngs)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kiln") as c:
            jobs = [c.post("/predict", files=files([pngs[i % 5]] * (1 + i % 3))) for i in range(30)]
            return await asyncio.gather(*jobs)

    for i, response in enumerate(asyncio.run(main())):
        rows = response.json()["predictions"]
        assert len(rows) == 1 + i % 3
        assert all(r["label"] == want[i % 5]["label"] for r in rows)
        assert all(abs(r["probability"] - want[i % 5]["probability"]) < 1e-6 for r in rows)


def test_serve_refuses_bad_targets(tmp_path: Path):
    missing = run_kiln("serve", tmp_path / "nothing", cwd=tmp_path, data_dir=tmp_path)
    assert_clean_error(missing, "does not exist")
    bad_port = run_kiln("serve", tmp_path, "--port", "70000", cwd=tmp_path, data_dir=tmp_path)
    assert_clean_error(bad_port, "--port must be between 0 and 65535")
