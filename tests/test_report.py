"""Plots and the HTML report of a finished run: the files, a page that needs nothing but itself,
`kiln report`, and the page as a real (headless) Chromium renders it.

One tiny digits run is trained for the module; the browser test is skipped where Chromium,
chromedriver or selenium are missing (`.ci/run` installs them).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from browser import chromium, missing_browser
from conftest import assert_clean_error, run_kiln
from PIL import Image

import kiln
from kiln.engine.evaluate import report_run

PLOTS = ("curves", "confusion", "samples", "mistakes", "per_class", "explained")
REPO = Path(__file__).resolve().parents[1]
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
REMOTE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    config = {
        "data": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"epochs": 3, "device": "cpu"},
        "run": {"dir": str(tmp)},
    }
    run = kiln.train(config, progress=False)
    return report_run(run.path)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes every pixel: a truncated file fails here
        assert image.format == "PNG"
        return image.size


def test_every_plot_is_a_png(report: Path):
    for name in PLOTS:
        path = report.parent / "plots" / f"{name}.png"
        assert path.is_file(), f"{path} missing"
        width, height = png_size(path.read_bytes())
        assert width > 100 and height > 100, (name, width, height)


def test_report_is_self_contained(report: Path):
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not REMOTE.findall(page), "the report refers to remote files"
    assert "<script" not in page.lower()
    inlined = DATA_URI.findall(page)
    assert len(inlined) == len(PLOTS)
    for data in inlined:
        assert min(png_size(base64.b64decode(data))) > 100
    plots = {base64.b64encode((report.parent / "plots" / f"{n}.png").read_bytes()).decode()
             for n in PLOTS}  # fmt: skip
    assert plots == set(inlined), "every plot is inlined, as written to plots/"


def test_report_content(report: Path):
    page = report.read_text()
    run = report.parent
    for digit in range(10):  # the per-class table of the test metrics names every class
        assert f"<tr><td>{digit}</td>" in page
    assert html.escape((run / "config.yaml").read_text()) in page
    summary = (run / "summary.txt").read_text()
    assert "Total params: 2,410" in summary  # 64*32+32 + 32*10+10
    assert html.escape(summary.rstrip("\n")) in page
    for text in ("digits", "mlp", "Epochs run", "3 of 3", "Best epoch", "Test accuracy", "torch"):
        assert text in page, text


def test_kiln_report_command(report: Path, tmp_path: Path):
    run = shutil.copytree(report.parent, tmp_path / "run")
    shutil.rmtree(run / "plots")
    (run / "report.html").unlink()
    data_dir = tmp_path / "kiln-data"
    data_dir.mkdir()
    result = run_kiln("report", run, "--checkpoint", "last", cwd=tmp_path, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(run / "report.html")
    assert "from the last checkpoint" in (run / "report.html").read_text()
    assert all((run / "plots" / f"{name}.png").is_file() for name in PLOTS)


def test_kiln_report_missing_run(tmp_path: Path):
    missing = tmp_path / "runs" / "nope"
    data_dir = tmp_path / "kiln-data"
    data_dir.mkdir()
    result = run_kiln("report", missing, cwd=tmp_path, data_dir=data_dir)
    assert_clean_error(result, str(missing))
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))
def test_report_in_headless_chromium(report: Path):
    driver = chromium()
    try:
        driver.get(report.as_uri())
        assert "Kiln report" in driver.title
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.complete, i.naturalWidth, i.alt]);"
        )
        assert len(images) == len(PLOTS)
        for complete, width, alt in images:
            assert complete and width > 0, f"image not rendered: {alt}"
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);"
        )
        assert not [name for name in fetched if not name.startswith("data:")], fetched
        screenshot = full_page_screenshot(driver)
    finally:
        driver.quit()
    out = Path(os.environ.get("KILN_TEST_OUTPUT", REPO / "test-output"))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "report-screenshot.png"
    shot.write_bytes(screenshot)
    shutil.copyfile(report, out / "report.html")
    assert shot.stat().st_size > 0
    width, height = png_size(shot.read_bytes())
    assert width >= 800 and height > 2000, "the whole page, not only the first screen"


def full_page_screenshot(driver) -> bytes:
    """The whole page as PNG bytes, through the DevTools protocol (Chrome's own screenshot stops
    at the window)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True, "clip": clip},
    )
    return base64.b64decode(shot["data"])


@pytest.mark.parametrize("k", [3, 25])
def test_confusion_cell_numbers_only_for_few_classes(k: int):
    from kiln.tasks.classify.metrics import confusion_counts
    from kiln.tasks.classify.plots import CELL_TEXT_LIMIT, confusion_figure

    labels = torch.arange(4 * k) % k
    counts = confusion_counts(torch.randn(4 * k, k).argmax(dim=1), labels, k)
    assert int(counts.sum()) == 4 * k and counts.sum(dim=1).tolist() == [4] * k
    figure = confusion_figure(counts, [f"class {i}" for i in range(k)])
    assert len(figure.axes[0].texts) == (k * k if k <= CELL_TEXT_LIMIT else 0)


def test_the_report_draws_from_the_test_evaluation_without_a_second_pass(tmp_path: Path):
    """After training, the test split goes through the model once: its outputs make the final
    line, eval-test.json and the report's figures."""
    from torch import nn

    from kiln.engine.callbacks import Callback

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
            self.evaluated: list[int] = []  # batch sizes seen in evaluation mode, no gradients
            self.explained: list[int] = []  # the same with gradients: the explanations' passes

        def forward(self, x):
            if not self.training:
                (self.explained if torch.is_grad_enabled() else self.evaluated).append(len(x))
            return self.layers(x)

    class ForgetTraining(Callback):  # count only what happens once training has ended
        def on_fit_end(self, trainer):
            trainer.model.evaluated.clear()

    model = Counting()
    config = {"train": {"epochs": 1}, "run": {"dir": str(tmp_path)}}
    run = kiln.train(config, model=model, callbacks=[ForgetTraining()], progress=False)
    test_images = run.metrics["test"]["samples"]
    assert test_images == 360
    # one pass over the test split; besides it only the one-image pass of the report's model
    # summary and explained.png's scores of the 8 highest-loss images (its maps take gradients)
    passes = sorted(model.evaluated)
    assert passes.count(test_images) == 1
    assert sorted(n for n in passes if n != test_images) == [1, 8]
    assert model.explained and max(model.explained) < test_images
    assert (run.path / "report.html").is_file()
    for name in PLOTS:
        assert (run.path / "plots" / f"{name}.png").is_file()
