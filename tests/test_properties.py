"""Property-based tests (Hypothesis) of the inputs users control: whatever they are, the answer is
a valid result or Kiln's own clear error, never a crash, a traceback or a hang.

- config overrides: any key=value gives a ConfigError or a valid RunConfig;
- image bytes, random or a real PNG/JPEG with bytes flipped, cut or inserted, through the server's
  decoder and `kiln predict`'s: an image or a 4xx/KilnError;
- CSV files of random rows through the bad-data scan: samples and problems, or a DataError;
- the HTTP API with random multipart parts and random JSON bodies: never a 5xx, always JSON.

Each runs a fixed, small number of examples (derandomized: the same ones on every run) with a
deadline per example, so the file takes seconds; KILN_PROPERTY_EXAMPLES=N runs N new ones.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kiln.config import RunConfig, build_config
from kiln.data.images import to_uint8
from kiln.data.scan import scan_csv
from kiln.deploy.uploads import BadRequest, Upload, read_image
from kiln.errors import ConfigError, DataError, KilnError

# KILN_PROPERTY_EXAMPLES=2000 searches harder, with new random examples each run.
EXAMPLES = int(os.environ.get("KILN_PROPERTY_EXAMPLES", "80"))
FAST = settings(
    max_examples=EXAMPLES, deadline=timedelta(seconds=5), derandomize="KILN_PROPERTY_EXAMPLES"
    not in os.environ, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip

KEYS = st.one_of(
    st.sampled_from(
        [
            "epochs",
            "lr",
            "model",
            "data.batch_size",
            "train.device",
            "optim.name",
            "model.hidden",
            "data.size",
            "tune.storage",
            "imports",
            "sched.name",
            "data.memory",
            "run.name",
            "train.early_stop.patience",
            "data",
        ]
    ),  # fmt: skip
    st.text(min_size=1, max_size=30).filter(lambda k: "=" not in k),
)
VALUES = st.one_of(
    st.text(max_size=40),
    st.integers().map(str),
    st.floats(allow_nan=True).map(repr),
    st.sampled_from(["[1, 2]", "{a: 1}", "null", "true", "-1", "1e400", "[[[]]]", "'", "{"]),
)


@FAST
@given(pairs=st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_any_overrides_give_a_config_or_a_config_error(pairs):
    try:
        cfg = build_config(None, [f"{k}={v}" for k, v in pairs])
    except ConfigError as exc:
        assert str(exc).strip()
    else:
        assert isinstance(cfg, RunConfig)


def encoded(fmt: str, width: int, height: int, mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, len(mode))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, fmt)
    return buf.getvalue()


@st.composite
def image_bytes(draw) -> bytes:
    """Random bytes, or a real small PNG/JPEG with a few bytes flipped, cut off or inserted."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=2000))
    fmt = draw(st.sampled_from(["PNG", "JPEG"]))
    mode = draw(st.sampled_from(["L", "RGB"] + (["RGBA", "LA"] if fmt == "PNG" else [])))
    size = draw(st.tuples(st.integers(1, 40), st.integers(1, 40)))
    data = bytearray(encoded(fmt, *size, mode, draw(st.integers(0, 9))))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@FAST
@given(data=image_bytes())
def test_any_image_bytes_decode_or_get_a_clear_error(data):
    try:
        image = read_image(Upload("upload.png", data), max_pixels=1_000_000)
    except BadRequest as exc:
        assert 400 <= exc.status < 500 and "upload.png" in exc.detail
    else:
        assert image.width * image.height <= 1_000_000
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "file.png"
        path.write_bytes(data)
        try:
            tensor = to_uint8(path, (3, 8, 8))
        except KilnError as exc:
            assert "file.png" in str(exc)
        else:
            assert tuple(tensor.shape) == (3, 8, 8)


CELLS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "a.png",
            "b.png",
            "../a.png",
            "/etc/passwd",
            "",
            "train",
            "val",
            "x.png",
            "sub/../a.png",
            "1.5",
            "nan",
        ]
    ),  # fmt: skip
)


@FAST
@given(
    header=st.lists(
        st.one_of(st.sampled_from(["file", "label", "split", "y"]), st.text(max_size=8)), max_size=5
    ),  # fmt: skip
    rows=st.lists(st.lists(CELLS, max_size=6), max_size=12),
    raw=st.one_of(st.none(), st.text(max_size=300)),
)
def test_any_csv_is_scanned_or_refused_clearly(header, rows, raw):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name in ("a.png", "b.png"):
            Image.new("L", (4, 4)).save(root / name)
        table = root / "labels.csv"
        if raw is not None:
            table.write_text(raw)
        else:
            with table.open("w", newline="") as f:
                csv.writer(f).writerows([header, *rows])
        for targets in (None, ["y"]):
            try:
                result = scan_csv(table, root, targets=targets)
            except DataError as exc:
                assert str(exc).strip()
            else:
                for sample in result.samples:
                    assert root in Path(sample.path).resolve().parents


@pytest.fixture(scope="module")
def client(trained_run: Path):
    from fastapi.testclient import TestClient

    from kiln.deploy.serve import create_app
    from kiln.deploy.uploads import Limits
    from kiln.infer import load_servable

    app = create_app(load_servable(trained_run), limits=Limits(200_000, 1_000_000, 8))
    return TestClient(app, raise_server_exceptions=False)


def check_answer(response) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.text
    body = response.json()
    assert ("predictions" in body) if response.status_code == 200 else body["detail"]


PART = st.tuples(
    st.text(max_size=12),  # field name
    st.one_of(st.none(), st.text(max_size=20)),  # file name
    st.one_of(
        st.sampled_from(
            ["image/png", "image/jpeg", "application/octet-stream", "text/plain", "image/"]
        ),
        st.text(max_size=15),
    ),  # fmt: skip
    image_bytes(),
)


def multipart_body(parts, boundary: str = "kilnboundary") -> bytes:
    """The raw body, names and types as they are (a client library would refuse some)."""
    out = b""
    for field, name, kind, data in parts:
        disposition = f'form-data; name="{field}"' + (
            "" if name is None else f'; filename="{name}"'
        )
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@FAST
@given(parts=st.lists(PART, max_size=10), top_k=st.one_of(st.none(), st.integers(-5, 2000)))
def test_any_multipart_body_gets_json_never_a_server_error(client, parts, top_k):
    params = {} if top_k is None else {"top_k": top_k}
    headers = {"content-type": "multipart/form-data; boundary=kilnboundary"}
    check_answer(client.post("/predict", content=multipart_body(parts), params=params,
                             headers=headers))  # fmt: skip


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def json_bodies(draw):
    import base64

    if draw(st.booleans()):
        return draw(JSON)
    body = {"images": [base64.b64encode(draw(image_bytes())).decode()
                       for _ in range(draw(st.integers(0, 10)))]}  # fmt: skip
    if draw(st.booleans()):
        body["names"] = draw(st.lists(st.text(max_size=300), max_size=10))
    if draw(st.booleans()):
        body["top_k"] = draw(st.one_of(st.integers(-3, 5000), JSON))
    if draw(st.booleans()):
        body[draw(st.text(max_size=5))] = draw(JSON)
    return body


@FAST
@given(body=json_bodies(), raw=st.one_of(st.none(), st.binary(max_size=200)))
def test_any_json_body_gets_json_never_a_server_error(client, body, raw):
    import json

    content = raw if raw is not None else json.dumps(body).encode()
    check_answer(client.post("/predict", content=content,
                             headers={"content-type": "application/json"}))  # fmt: skip
