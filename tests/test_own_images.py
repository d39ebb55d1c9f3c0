"""A person's own images: folders and CSVs through train, eval, predict, resume, and bad data."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import require

import kiln
from kiln import checkpoint
from kiln import data as kdata
from kiln.config import DataConfig
from kiln.errors import DataError

CLASSES = ["dark", "light", "stripes"]


def pattern(label: str, rng: np.random.Generator, size=(20, 16), mode="RGB") -> Image.Image:
    """Three easy-to-learn kinds of picture, with noise so no two are the same."""
    h, w = size
    base = rng.integers(0, 60, (h, w, 3)) if label == "dark" else rng.integers(170, 255, (h, w, 3))
    if label == "stripes":
        base = rng.integers(0, 40, (h, w, 3))
        base[::3] = 240
    return Image.fromarray(base.astype(np.uint8)).convert(mode)


def make_folder(root: Path, per_class: int = 20, splits=None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits or [None]:
        for label in CLASSES:
            folder = root / split / label if split else root / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pattern(label, rng).save(folder / f"{i}.png")
    return root


def kiln_cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_folder_without_splits_is_split_stratified(tmp_path):
    make_folder(tmp_path / "imgs", per_class=20)
    cfg = DataConfig(
        name="folder", root=str(tmp_path / "imgs"), val_fraction=0.2, test_fraction=0.25
    )
    bundle = kdata.build(cfg)
    assert bundle.info.classes == CLASSES
    assert bundle.info.input_shape == (3, 20, 16)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (36, 9, 15)
    assert sorted(torch.bincount(bundle.test.labels).tolist()) == [5, 5, 5]


def test_channels_and_size_default_to_the_commonest_and_can_be_set(tmp_path):
    root = tmp_path / "mixed"
    rng = np.random.default_rng(1)
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for i in range(6):
            size, mode = ((30, 40), "L") if i < 4 else ((50, 50), "RGBA")
            pattern(label, rng, size, mode).save(root / label / f"{i}.png")
    bundle = kdata.build(DataConfig(name="folder", root=str(root), memory=False))
    assert bundle.info.input_shape == (1, 30, 40)
    assert bundle.train.image(0).shape == (1, 30, 40)
    assert bundle.sizes == {"30x40": 12, "50x50": 6} and bundle.modes == {"L": 12, "RGBA": 6}
    forced = kdata.build(DataConfig(name="folder", root=str(root), channels=3, size=[24, 24]))
    assert forced.info.input_shape == (3, 24, 24)
    assert forced.train.images.shape[1:] == (3, 24, 24)


def write_csv(path: Path, rows: list[dict], fields=("file", "label", "split")) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_csv_dataset_with_split_column(tmp_path):
    make_folder(tmp_path / "images", per_class=12)
    rows = []
    for label in CLASSES:
        for i in range(12):
            split = "train" if i < 8 else ("val" if i < 10 else "test")
            rows.append({"file": f"{label}/{i}.png", "label": label.upper(), "split": split})
    labels = write_csv(tmp_path / "labels.csv", rows)
    cfg = DataConfig(name="csv", csv=str(labels), root=str(tmp_path / "images"))
    bundle = kdata.build(cfg)
    assert bundle.info.classes == ["DARK", "LIGHT", "STRIPES"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 6)


def test_bad_data_stops_before_training_listing_every_problem(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=10)
    good = (root / "dark" / "0.png").read_bytes()
    (root / "dark" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "light" / "empty.png").write_bytes(b"")
    (root / "stripes" / "notes.txt").write_text("not an image")
    (root / "unused").mkdir()
    out = kiln_cli("train", "data=folder", f"data.root={root}", "epochs=1", cwd=tmp_path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    for name in ("truncated.png", "empty.png", "notes.txt", "unused"):
        assert name in out.stderr
    assert "data.on_bad=skip" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_skip_trains_on_the_rest_and_lists_the_skipped(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=10)
    (root / "light" / "empty.png").write_bytes(b"")
    out = kiln_cli(
        "train", "data=folder", f"data.root={root}", "data.on_bad=skip", "epochs=1",
        "model=mlp", "model.hidden=[16]", "name=skip", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    skipped = (tmp_path / "runs" / "skip" / "skipped.txt").read_text()
    assert "empty.png" in skipped and "0 bytes" in skipped
    # a warning since the kiln logger (issue 20): on stderr, with the file that lists them
    assert "warning: Skipped 1 bad file" in out.stderr and "skipped.txt" in out.stderr


def test_csv_problems_name_the_line(tmp_path):
    make_folder(tmp_path / "images", per_class=4)
    rows = [{"file": f"{c}/{i}.png", "label": c, "split": ""} for c in CLASSES for i in range(4)]
    rows.insert(3, {"file": "dark/missing.png", "label": "dark", "split": ""})
    rows.insert(5, {"file": "../../etc/passwd", "label": "dark", "split": ""})
    labels = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError) as err:
        kdata.build(DataConfig(name="csv", csv=str(labels), root=str(tmp_path / "images")))
    message = str(err.value)
    assert "line 5" in message and "missing.png" in message
    assert "line 7" in message and "escapes" in message


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory) -> Path:
    """A small ImageFolder with train/val/test copied from the real CIFAR-10 PNGs."""
    source = require("cifar10")
    root = tmp_path_factory.mktemp("cifar")
    for split, src, start, count in (("train", "train", 0, 40), ("val", "train", 40, 8),
                                     ("test", "test", 0, 8)):  # fmt: skip
        for name in sorted(p.name for p in (source / src).iterdir()):
            target = root / split / name
            target.mkdir(parents=True)
            for png in sorted((source / src / name).glob("*.png"))[start : start + count]:
                shutil.copy(png, target / png.name)
    return root


def test_folder_end_to_end_streaming_with_augmentation(cifar_folder, tmp_path):
    out = kiln_cli(
        "train", "data=folder", f"data.root={cifar_folder}", "model=lenet", "epochs=2",
        "data.memory=false", "data.augment=standard", "data.workers=2", "name=cifar",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "cifar"
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["augment"][0]["random_resized_crop"]["scale"] == [0.8, 1.0]
    info = json.loads((run / "info.json").read_text())
    assert info["input_shape"] == [3, 32, 32] and len(info["classes"]) == 10
    assert info["samples"] == {"train": 400, "val": 80, "test": 80}
    ev = kiln_cli("eval", run, "--json", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert sum(map(sum, json.loads(ev.stdout)["confusion_matrix"])) == 80
    image = next((cifar_folder / "test" / "cat").glob("*.png"))
    big = tmp_path / "cat.jpg"
    Image.open(image).resize((96, 80)).save(big)  # another size and format
    pred = kiln_cli("predict", run, big, "--json", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)[0]["label"] in info["classes"]


def test_data_stats_and_show(cifar_folder, tmp_path):
    out = kiln_cli("data", "stats", "folder", f"data.root={cifar_folder}", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["totals"] == {"train": 400, "val": 80, "test": 80}
    assert stats["per_split"]["train"]["cat"] == 40 and stats["imbalance_ratio"] == 1.0
    assert stats["sizes"] == {"32x32": 560} and stats["modes"] == {"RGB": 560}
    grid = tmp_path / "grid.png"
    show = kiln_cli("data", "show", "folder", f"data.root={cifar_folder}", "data.augment=strong",
                    "--augmented", "--n", "16", "-o", grid, cwd=tmp_path)  # fmt: skip
    assert show.returncode == 0, show.stderr
    with Image.open(grid) as im:
        assert im.width > 300 and im.height > 150


def test_imbalance_warning_and_balanced_sampling(tmp_path):
    root = tmp_path / "imb"
    rng = np.random.default_rng(0)
    for label, n in zip(CLASSES, (40, 10, 5), strict=True):
        (root / label).mkdir(parents=True)
        for i in range(n):
            pattern(label, rng).save(root / label / f"{i}.png")
    out = kiln_cli("data", "stats", "folder", f"data.root={root}", cwd=tmp_path)
    assert out.returncode == 0 and "imbalanced above 3:1" in out.stdout
    from kiln.data.memory import MemoryLoader, Normalize

    bundle = kdata.build(DataConfig(name="folder", root=str(root), val_fraction=0.2))
    counts = torch.bincount(bundle.train.labels, minlength=3).float()
    loader = MemoryLoader(bundle.train, 8, Normalize([0.5] * 3, [0.5] * 3, "cpu"), shuffle=True,
                          generator=torch.Generator().manual_seed(0),
                          weights=(1 / counts)[bundle.train.labels])  # fmt: skip
    drawn = torch.cat([torch.cat([y for _, y in loader]) for _ in range(30)])
    share = torch.bincount(drawn, minlength=3).float() / len(drawn)
    assert (share - 1 / 3).abs().max() < 0.06
    for how in ("weights", "sampler"):
        run = kiln.train(None, progress=False, data__name="folder", data__root=str(root),
                         data__balance=how, epochs=2, model__name="mlp",
                         run__dir=str(tmp_path / how))  # fmt: skip
        assert run.history[-1]["val_acc"] > 0.5


def test_resume_with_workers_and_augmentation_is_bitwise_identical(tmp_path):
    import os
    import signal

    from kiln.engine.callbacks import Callback
    from kiln.engine.trainer import TrainingInterrupted

    root = make_folder(tmp_path / "imgs", per_class=16)
    cfg = {
        "data": {"name": "folder", "root": str(root), "memory": False, "workers": 2,
                 "augment": "strong", "batch_size": 8},
        "model": {"name": "mlp", "hidden": [32], "dropout": 0.1},
        "train": {"epochs": 3, "device": "cpu", "deterministic": True, "seed": 3},
    }  # fmt: skip

    def with_name(name):
        return {**cfg, "run": {"dir": str(tmp_path / "runs"), "name": name}}

    straight = kiln.train(with_name("a"), progress=False).path

    class Interrupt(Callback):
        def on_batch_end(self, trainer, epoch, step):
            if (epoch, step) == (2, 2):
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        kiln.train(with_name("b"), progress=False, callbacks=[Interrupt()])
    resumed = kiln.train(resume=tmp_path / "runs" / "b", progress=False).path
    a = checkpoint.load(straight / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(resumed / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
