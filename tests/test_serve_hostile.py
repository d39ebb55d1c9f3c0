"""`kiln serve` against hostile requests: each one gets a JSON 4xx (or 503) that says what was
wrong, never a 500 and never unbounded work. benchmarks/hostile.py sends the same ones to a live
server and measures its memory and /health latency meanwhile."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import zlib
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from kiln.deploy import reading
from kiln.deploy.serve import Protection, create_app
from kiln.deploy.uploads import BadRequest
from kiln.deploy.workqueue import WorkQueue
from kiln.errors import RunError
from kiln.infer import load_servable, spec_from_run
from kiln.infer.spec import find_export
from kiln.rundir import RunDir


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height grey pixels (its pixel data is empty: only a decoder
    that goes past the header notices)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + (chunk(b"IEND", b""))
    )


@pytest.fixture(scope="module")
def servable(trained_run: Path):
    return load_servable(trained_run)


@pytest.fixture(scope="module")
def client(servable) -> TestClient:
    return TestClient(create_app(servable))


def post_png(client: TestClient, data: bytes, **kwargs) -> httpx.Response:
    return client.post("/predict", files=[("files", ("x.png", data, "image/png"))], **kwargs)


@pytest.mark.parametrize(
    "size,needle",
    [
        ((10_000_000, 1), "aspect ratio above the limit of 1000:1"),
        ((1, 40_000_000), "aspect ratio above the limit of 1000:1"),
        ((8_000, 6_000), "48,000,000 pixels, above the limit of 40,000,000"),
        ((10_000, 10_000), "above the limit of 40,000,000"),  # past Pillow's warning (89 MP)
        ((15_000, 15_000), "limit is 40,000,000 pixels"),  # Pillow's bomb error (179 MP)
    ],
)
def test_images_too_large_or_too_thin_are_413_before_decoding(client, size, needle):
    response = post_png(client, png_header(*size))
    assert response.status_code == 413, response.text
    assert needle in response.json()["detail"]


def test_a_json_body_of_millions_of_values_is_refused_before_parsing(client):
    body = b'{"images": [' + b'"",' * 3_300_000 + b'""]}'
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "far more than 64 images" in response.json()["detail"]


@pytest.mark.parametrize("depth,status", [(100_000, 413), (5_000, 400), (600, 422)])
def test_deeply_nested_json_is_a_4xx(client, depth, status):
    body = b'{"images": ' + b"[" * depth + b"]" * depth + b"}"
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_long_names_and_a_huge_top_k_are_refused(client):
    image = "iVBORw0KGgo="  # the bytes do not matter: validation comes first
    for body in ({"images": [image], "names": ["n" * 300]}, {"images": [image], "top_k": 10**9}):
        response = client.post("/predict", json=body)
        assert response.status_code == 422, response.text


@pytest.mark.parametrize("exc,status", [(MemoryError, 503), (RecursionError, 400)])
def test_memory_and_recursion_errors_are_json_not_500(servable, monkeypatch, exc, status):
    def explode(*args):
        raise exc()

    monkeypatch.setattr(reading, "read_image", explode)
    client = TestClient(create_app(servable), raise_server_exceptions=False)
    response = post_png(client, png_header(8, 8))
    assert response.status_code == status
    assert response.json()["detail"]


def test_bearer_scheme_is_case_insensitive_and_the_token_is_not(servable):
    guarded = TestClient(create_app(servable, token="s3cret"))
    for header, status in [("bearer s3cret", 200), ("BEARER s3cret", 200), ("Bearer S3CRET", 401),
                           ("Basic s3cret", 401), ("bearer", 401)]:  # fmt: skip
        got = guarded.get("/metadata", headers={"Authorization": header})
        assert got.status_code == status, header


def test_without_a_token_only_this_servers_addresses_are_answered(servable):
    hosts = frozenset({"127.0.0.1", "localhost"})
    app = create_app(servable, protection=Protection(hosts=hosts))
    client = TestClient(app)
    for host, status in [("127.0.0.1:8000", 200), ("localhost:8000", 200), ("[::1]:8000", 200),
                         ("10.1.2.3", 200), ("evil.example:8000", 403)]:  # fmt: skip
        got = client.get("/metadata", headers={"Host": host})
        assert got.status_code == status, host
    assert "DNS rebinding" in client.get("/", headers={"Host": "evil.example"}).json()["detail"]
    with_token = TestClient(create_app(servable, token="t", protection=Protection(hosts=hosts)))
    named = with_token.get("/metadata", headers={"Host": "my.server", "Authorization": "Bearer t"})
    assert named.status_code == 200  # a token is the protection: any name will do


def test_cors_is_off_unless_an_origin_is_allowed(servable):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = TestClient(create_app(servable)).options("/predict", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    opened = TestClient(create_app(servable, protection=Protection(
        allow_origins=("https://app.example",))))  # fmt: skip
    answer = opened.options("/predict", headers=preflight)
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    other = opened.options("/predict", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_body_that_trickles_in_is_cut_off(servable):
    app = create_app(servable, protection=Protection(body_timeout=0.5))

    async def trickle():
        for _ in range(100):
            yield b"x"
            await asyncio.sleep(0.1)

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            headers = {"content-type": "application/json"}
            return await c.post("/predict", content=trickle(), headers=headers)

    response = asyncio.run(send())
    assert response.status_code == 408
    assert "did not arrive within 0.5 s" in response.json()["detail"]


def test_past_the_queue_a_request_gets_503_with_retry_after():
    queue, release = WorkQueue(threads=1, waiting=0), threading.Event()

    async def scenario():
        first = asyncio.ensure_future(queue.run(release.wait, 5))
        await asyncio.sleep(0.05)
        with pytest.raises(BadRequest) as refused:
            await queue.run(len, "second")
        release.set()
        assert await first is True
        assert await queue.run(len, "after") == 5  # room again
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status == 503 and refused.headers == {"Retry-After": "1"}


def test_docs_are_served_from_this_server_with_the_model_name_escaped(servable):
    servable.spec.model.name = "<script>alert(1)</script>"
    try:
        client = TestClient(create_app(servable))
        page = client.get("/docs").text
    finally:
        servable.spec.model.name = "mlp"
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "cdn" not in page.lower() and "http" not in page.replace("http-equiv", "")
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert "/docs-assets/redoc.standalone.js" in client.get("/redoc").text


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/model.onnx", ".."])
def test_a_sidecar_may_only_name_a_file_beside_it(trained_run: Path, tmp_path: Path, name):
    spec = spec_from_run(RunDir(trained_run), "onnx", "best", 1, file=name)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    spec.write(tmp_path / "model.onnx.json")
    with pytest.raises(RunError, match="not a file name beside it"):
        find_export(tmp_path / "model.onnx.json")
    assert json.loads((tmp_path / "model.onnx.json").read_text())["file"] == name
