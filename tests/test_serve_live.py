"""`kiln serve` as a user runs it: a real process on loopback serving an ONNX export of an MNIST
model. A real MNIST test digit, saved as PNG, goes through the page in headless Chromium and
through the API; 50 clients load the server for 20 s with zero errors.

Needs ../shared/datasets (MNIST); the browser test also needs chromium and chromium-driver.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser import missing_browser
from conftest import KILN, kiln_env, run_kiln
from PIL import Image
from shared_data import require

from kiln.data.builtin import read_idx
from kiln.deploy.load import free_port, multipart, run_load, wait_for_health

pytestmark = pytest.mark.slow
TOKEN = "live-t0ken"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int]]:
    """The first 8 MNIST test digits as PNG files, with their true labels."""
    raw = require("MNIST") / "raw"
    images = read_idx(gzip.decompress((raw / "t10k-images-idx3-ubyte.gz").read_bytes()), raw)
    labels = read_idx(gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes()), raw)
    folder = tmp_path_factory.mktemp("digits")
    out = []
    for i in range(8):
        path = folder / f"digit{i}-label{labels[i]}.png"
        Image.fromarray(images[i]).save(path)
        out.append((path, int(labels[i])))
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """recipes/mnist-fast.yaml for one epoch (~98% here), exported to ONNX."""
    require("MNIST")
    work = tmp_path_factory.mktemp("mnist-serve")
    (work / "data").mkdir()
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "mnist-fast.yaml"
    shared = require("MNIST").parent
    trained = run_kiln(
        "train", recipe, "epochs=1", f"data.root={shared}", "run.report=false",
        f"run.dir={work / 'runs'}", "name=mnist", cwd=work, data_dir=work / "data",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    exported = run_kiln("export", work / "runs" / "mnist", "-o", work / "export" / "",
                        cwd=work, data_dir=work / "data")  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    return work / "export" / "model.onnx"


@pytest.fixture(scope="module")
def server(export: Path, tmp_path_factory: pytest.TempPathFactory):
    """`kiln serve EXPORT --port P` with KILN_TOKEN set; yields the base URL."""
    port = free_port()
    work = tmp_path_factory.mktemp("server")
    env = {**kiln_env(work), "KILN_TOKEN": TOKEN}
    log = open(work / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [*KILN, "serve", export, "--port", str(port)], cwd=work, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_health(url, proc):
            pytest.fail(f"kiln serve did not answer /health: {(work / 'server.log').read_text()}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def post(url: str, body: bytes, content_type: str, token: str | None = TOKEN):
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}/predict", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_reads_real_digits(server: str, digits):
    body, ctype = multipart([(p.name, p.read_bytes()) for p, _ in digits])
    status, answer = post(server, body, ctype)
    assert status == 200, answer
    labels = [int(p["label"].split(" ")[0]) for p in answer["predictions"]]
    truth = [label for _, label in digits]
    assert sum(a == b for a, b in zip(labels, truth, strict=True)) >= 7, (labels, truth)
    assert post(server, body, ctype, token=None)[0] == 401
    assert post(server, body, ctype, token="wrong")[0] == 401


@pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))
def test_page_shows_the_top_prediction(server: str, digits):
    from browser import chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path, label = digits[0]  # a 7
    body, ctype = multipart([(path.name, path.read_bytes())])
    api_label = post(server, body, ctype)[1]["predictions"][0]["label"]
    assert api_label.startswith(str(label))
    driver = chromium()
    try:
        driver.get(f"{server}/#token={TOKEN}")
        WebDriverWait(driver, 30).until(lambda d: "mnist" in d.title.lower() or "Kiln" in d.title)
        driver.find_element(By.ID, "file").send_keys(str(path))
        result = driver.find_element(By.ID, "result")
        WebDriverWait(driver, 30).until(
            lambda d: result.get_attribute("data-state") in ("done", "error")
        )
        error = driver.find_element(By.ID, "error").text
        assert result.get_attribute("data-state") == "done", error
        assert driver.find_element(By.ID, "top-label").text == api_label
        rows = driver.find_elements(By.CSS_SELECTOR, "#result .row")
        assert len(rows) == 5
        shown = [float(r.find_element(By.CLASS_NAME, "prob").text.rstrip("%")) for r in rows]
        assert shown == sorted(shown, reverse=True) and shown[0] > 50
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()


def test_fifty_clients_for_twenty_seconds_without_an_error(server: str, digits):
    body, ctype = multipart([(digits[0][0].name, digits[0][0].read_bytes())])
    result = run_load(f"{server}/predict", body, ctype, clients=50, seconds=20,
                      headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert result.errors == [], result.errors[:5]
    assert result.requests > 50  # every client got answers, not just one each
    assert urllib.request.urlopen(f"{server}/health", timeout=5).status == 200
