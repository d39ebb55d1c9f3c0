"""task=segment: the U-Net, mask folders and volumes, metrics, augmentation that keeps masks
aligned, and the CLI from `kiln data make` to `kiln predict`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_clean_error
from PIL import Image
from shared_data import require

import kiln
from kiln import checkpoint
from kiln import data as kdata
from kiln.config import build_config
from kiln.data import MemoryLoader, Normalize, Split, channel_stats
from kiln.data.batch_augment import IGNORE, BatchAugment
from kiln.data.registry import DataInfo
from kiln.data.transforms import resolve_augment
from kiln.engine.callbacks import Callback
from kiln.engine.trainer import TrainingInterrupted
from kiln.errors import ConfigError, DataError
from kiln.models import create_model
from kiln.tasks.segment import SegmentTask, dice_loss
from kiln.tasks.segment.metrics import confusion_matrix, scores


def info_for(channels=1, classes=3, depth=None, size=(32, 32)) -> DataInfo:
    names = [str(i) for i in range(classes)]
    return DataInfo("t", names, channels, *size, [0.0] * channels, [1.0] * channels, depth=depth)


# The U-Net ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("up", ["bilinear", "transpose"])
def test_unet_scores_every_pixel_of_odd_sized_images(up):
    model = create_model("unet", info_for(channels=3, classes=5), depth=3, width=4, up=up)
    for h, w in ((37, 45), (8, 8), (1, 3)):
        assert model(torch.randn(2, 3, h, w)).shape == (2, 5, h, w)


@pytest.mark.parametrize("up", ["bilinear", "transpose"])
def test_unet_3d_scores_every_voxel_of_an_odd_sized_volume(up):
    info = info_for(channels=2, classes=3, depth=20, size=(23, 17))
    model = create_model("unet", info, depth=2, width=4, up=up)  # dims=auto: 3 from the data
    assert any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
    assert model(torch.randn(1, 2, 20, 23, 17)).shape == (1, 3, 20, 23, 17)


def test_unet_options_are_checked():
    with pytest.raises(ConfigError, match="model.dims=3 does not fit the data"):
        create_model("unet", info_for(), dims=3)
    with pytest.raises(ConfigError, match="model.up must be one of bilinear, transpose"):
        create_model("unet", info_for(), up="nearest")
    with pytest.raises(ConfigError, match="model.depth must be a positive integer"):
        create_model("unet", info_for(), depth=0)


# Metrics and loss -------------------------------------------------------------------------------
def reference_scores(pred: np.ndarray, true: np.ndarray, k: int) -> tuple[list, list, float]:
    """IoU and Dice per class and pixel accuracy by counting pixels, class by class."""
    keep = true != IGNORE
    pred, true = pred[keep], true[keep]
    iou, dice = [], []
    for c in range(k):
        inter = np.sum((pred == c) & (true == c))
        p, t = np.sum(pred == c), np.sum(true == c)
        iou.append(inter / (p + t - inter) if p + t else float("nan"))
        dice.append(2 * inter / (p + t) if p + t else float("nan"))
    return iou, dice, float(np.mean(pred == true))


def test_metrics_match_a_pixel_count_and_torchmetrics():
    g = torch.Generator().manual_seed(0)
    true = torch.randint(0, 4, (3, 17, 19), generator=g, dtype=torch.uint8)
    pred = torch.where(torch.rand(3, 17, 19, generator=g) < 0.7, true.long(), 2)
    true[0, :3] = IGNORE  # unknown pixels count nowhere
    true[true == 3] = 1  # class 3 is only ever predicted (never true): IoU 0, in the mean
    pred[pred == 3] = 0
    pred[1, 0, 0] = 3
    s = scores(confusion_matrix(pred, true, 5))  # class 4: in neither, left out of the means
    iou, dice, acc = reference_scores(pred.numpy(), true.numpy(), 5)
    np.testing.assert_allclose(s["iou"], iou, equal_nan=True)
    np.testing.assert_allclose(s["dice"], dice, equal_nan=True)
    assert s["miou"] == pytest.approx(np.nanmean(iou)) and s["iou"][3] == 0.0
    assert s["mean_dice"] == pytest.approx(np.nanmean(dice))
    assert s["pixel_acc"] == pytest.approx(acc)

    from torchmetrics.classification import MulticlassJaccardIndex

    jaccard = MulticlassJaccardIndex(5, average="none", ignore_index=IGNORE)
    expected = jaccard(pred, true.long())
    np.testing.assert_allclose(s["iou"][:4], expected[:4].numpy(), rtol=1e-6)


def test_summing_batch_confusions_gives_the_whole_split_metric():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 3, 10, 10, generator=g)
    masks = torch.randint(0, 3, (8, 10, 10), generator=g, dtype=torch.uint8)
    task = SegmentTask(3)
    summed = task.score(logits[:5], masks[:5]) + task.score(logits[5:], masks[5:])
    whole = scores(confusion_matrix(logits.argmax(1), masks, 3))
    assert task.summarize(summed, 8)["miou"] == pytest.approx(whole["miou"])


def test_dice_loss_is_zero_when_right_and_near_one_when_wrong():
    masks = torch.randint(0, 3, (2, 9, 7), generator=torch.Generator().manual_seed(2))
    right = torch.nn.functional.one_hot(masks, 3).movedim(-1, 1).float() * 50
    wrong = torch.nn.functional.one_hot((masks + 1) % 3, 3).movedim(-1, 1).float() * 50
    assert float(dice_loss(right, masks)) < 1e-3
    assert float(dice_loss(wrong, masks)) > 0.95  # 1 but for the smoothing term


# Mask folders -----------------------------------------------------------------------------------
def write_seg_folder(root: Path, n_train=24, n_test=6, size=(20, 24), classes=True) -> Path:
    """Dark images with a bright square (class 1) and a dimmer bar (class 2), masks to match."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = size
            image = rng.integers(0, 40, size, dtype=np.uint8)
            mask = np.zeros(size, np.uint8)
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
            image[y : y + 6, x : x + 6], mask[y : y + 6, x : x + 6] = 230, 1
            col = rng.integers(0, w - 2)
            image[:, col : col + 2], mask[:, col : col + 2] = 140, 2
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    if classes:
        (root / "classes.txt").write_text("background\nsquare\nbar\n")
    return root


def build(root: Path, *overrides: str):
    cfg = build_config(None, ["data.name=seg-folder", f"data.root={root}", *overrides])
    return kdata.build(cfg.data)


def test_a_mask_folder_loads_as_images_and_aligned_masks(tmp_path):
    root = write_seg_folder(tmp_path / "seg")
    bundle = build(root)
    assert bundle.info.classes == ["background", "square", "bar"]
    assert bundle.info.input_shape == (1, 20, 24) and bundle.info.depth is None
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (22, 2, 6)  # val: 10%
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.labels.shape == (len(split), 20, 24) and split.labels.dtype == torch.uint8
        square = split.images[:, 0] == 230
        assert torch.equal(square, split.labels == 1)  # each mask stayed with its image
    without_test = tmp_path / "seg2"
    write_seg_folder(without_test, n_test=0)
    (without_test / "test").rename(tmp_path / "elsewhere")
    b2 = build(without_test, "data.test_fraction=0.25")
    assert (len(b2.train) + len(b2.val), len(b2.test)) == (18, 6)  # carved at random


def test_palette_and_rgb_masks_read_as_class_indices(tmp_path):
    root = write_seg_folder(tmp_path / "seg", n_train=4, n_test=1, classes=False)
    colours = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 0, 255)}
    for i, path in enumerate(sorted((root / "train" / "masks").glob("*.png"))):
        indices = np.asarray(Image.open(path))
        if i % 2:  # a palette PNG: the palette index is the class
            im = Image.fromarray(indices, mode="P")
            im.putpalette([v for k in range(3) for v in colours[k]])
        else:  # RGB colours, mapped by classes.txt
            im = Image.fromarray(np.array([colours[k] for k in range(3)], np.uint8)[indices])
        im.save(path)
    with pytest.raises(DataError, match="an RGB mask, but no colours are listed"):
        build(root)
    (root / "classes.txt").write_text("background #000000\nsquare #ff0000\nbar #0000ff\n")
    bundle = build(root, "data.val_fraction=0.25")
    for split in (bundle.train, bundle.val):
        assert torch.equal(split.images[:, 0] == 230, split.labels == 1)
        assert torch.equal(split.images[:, 0] == 140, split.labels == 2)


def test_mask_folder_problems_name_the_files(tmp_path):
    root = write_seg_folder(tmp_path / "seg", n_train=6, n_test=2)
    masks, images = root / "train" / "masks", root / "train" / "images"
    (masks / "000.png").unlink()  # an image without its mask
    (images / "001.png").rename(tmp_path / "001.png")  # a mask without its image
    Image.fromarray(np.zeros((20, 25), np.uint8)).save(masks / "002.png")  # wrong size
    Image.fromarray(np.full((20, 24), 7, np.uint8)).save(masks / "003.png")  # no class 7
    with pytest.raises(DataError) as error:
        build(root)
    message = str(error.value)
    assert "4 problem(s)" in message
    assert f"{images / '000.png'}: no mask; expected {masks / '000.png'}" in message
    assert f"{masks / '001.png'}: a mask without an image; expected {images / '001'}" in message
    assert f"{masks / '002.png'}: the mask is 25x20 but its image {images / '002.png'}" in message
    assert f"{masks / '003.png'}: class index 7 but classes.txt lists 3 classes" in message
    bundle = build(root, "data.on_bad=skip")  # the rest trains
    assert len(bundle.train) + len(bundle.val) == 2 and len(bundle.skipped) == 4


def write_volumes(root: Path, n=5, shape=(6, 7, 5)) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 2)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            mask = rng.integers(0, 3, shape).astype(np.uint8)
            np.save(root / split / "images" / f"{i}.npy", (mask * 0.5 + 0.1).astype(np.float32))
            np.save(root / split / "masks" / f"{i}.npy", mask)
    return root


def test_volumes_load_normalize_and_flip_with_their_masks(tmp_path):
    root = write_volumes(tmp_path / "vol")
    bundle = build(root, "data.val_fraction=0.2")
    train = bundle.train
    assert train.images.shape == (4, 1, 6, 7, 5) and train.images.dtype == torch.float32
    assert bundle.info.depth == 6 and bundle.info.input_shape == (1, 6, 7, 5)
    assert bundle.info.classes == ["background", "1", "2"]  # no classes.txt: indices found
    mean, std = channel_stats(train.images)
    assert mean[0] == pytest.approx(float(train.images.mean()), abs=1e-5)
    x = Normalize(mean, std, "cpu")(train.images)
    assert x.shape == train.images.shape and float(x.mean()) == pytest.approx(0, abs=1e-4)
    steps = resolve_augment(["flip", "vflip"])
    loader = MemoryLoader(train, 4, Normalize([0.0], [1.0], "cpu"), augment=BatchAugment(steps))
    for x, y in loader:  # the image is a function of its mask: flipped together, still so
        assert torch.allclose(x[:, 0], y.float() * 0.5 + 0.1)
    np.save(root / "train" / "masks" / "1.npy", np.zeros((6, 7, 4), np.uint8))
    with pytest.raises(DataError, match=r"1.npy: the mask is \(6, 7, 4\) but its volume"):
        build(root)


# Augmentation keeps images and masks aligned ----------------------------------------------------
@pytest.mark.parametrize("step", ["flip", "vflip", {"crop": 5}, {"translate": 0.3}])
def test_geometric_augmentation_moves_the_mask_with_the_image(step):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 1, 13, 11), dtype=torch.uint8, generator=g)
    masks = (images[:, 0] > 127).to(torch.uint8)  # the mask is the thresholded image
    augment = BatchAugment(resolve_augment([step]))
    out, out_masks = augment(images, torch.Generator().manual_seed(3), masks=masks)
    known = out_masks != IGNORE
    assert torch.equal((out[:, 0] > 127)[known], out_masks[known].bool())
    assert not torch.equal(out, images)  # something moved
    if "crop" in str(step) or "translate" in str(step):
        assert (~known).any() and (out[:, 0][~known] == 0).all()  # padding: fill and IGNORE
    same, _ = augment(images, torch.Generator().manual_seed(3), masks=masks)
    assert torch.equal(same, augment(images, torch.Generator().manual_seed(3)))  # same draws


def test_cutout_paints_the_image_and_leaves_the_mask():
    images = torch.full((8, 1, 10, 10), 200, dtype=torch.uint8)
    masks = torch.ones(8, 10, 10, dtype=torch.uint8)
    augment = BatchAugment(resolve_augment([{"cutout": 4}]))
    out, out_masks = augment(images, torch.Generator().manual_seed(0), masks=masks)
    assert (out == 0).any() and torch.equal(out_masks, masks)


def test_the_in_memory_loader_augments_masks_with_their_images():
    images = torch.randint(0, 256, (10, 1, 9, 9), dtype=torch.uint8)
    split = Split(images, (images[:, 0] > 127).to(torch.uint8))
    steps = resolve_augment(["flip", "vflip", {"crop": 2}])
    g = torch.Generator().manual_seed(0)
    identity = Normalize([0.0], [1 / 255], "cpu")  # keeps 0..255
    loader = MemoryLoader(
        split, 4, identity, shuffle=True, generator=g, augment=BatchAugment(steps)
    )
    for x, y in loader:
        known = y != IGNORE
        assert torch.equal((x[:, 0] > 127)[known], y[known].bool())


# Training, eval, predict ------------------------------------------------------------------------
@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """`kiln ARGS...` in this process (no second torch import), from tmp_path, offline, with an
    empty data folder; returns what a subprocess would (returncode, stdout, stderr)."""
    from kiln.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KILN_OFFLINE", "1")
    monkeypatch.setenv("KILN_DATA", str(tmp_path / "kiln-data"))
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def test_config_mistakes_are_named(tmp_path, run_cli):
    root = write_seg_folder(tmp_path / "seg", n_train=8, n_test=2)
    seg = ("task=segment", "data=seg-folder", f"data.root={root}", "model=unet", "epochs=1",
           "model.width=4", "model.depth=2")  # fmt: skip
    cases = {
        "task=segment needs a mask per image": ("task=segment", "model=unet", "epochs=1"),
        "data.augment: rotation would change the images but not their masks": (
            *seg, "data.augment=[flip, {rotation: 10}]"),
        "needs a model that scores every pixel (model=unet)": (*seg, "model=convnet"),
        "data.balance balances whole-image classes": (*seg, "data.balance=weights"),
        "a mask per image (a class per pixel): set task=segment": (*seg[1:], "model=convnet"),
    }  # fmt: skip
    for needle, args in cases.items():
        assert_clean_error(run_cli("train", *args), needle)
    runs = tmp_path / "runs"
    assert not runs.exists() or not list(runs.iterdir()), "mistakes leave no run folder behind"


def test_train_eval_predict_a_mask_folder(tmp_path, run_cli):
    root = write_seg_folder(tmp_path / "seg", n_train=48, n_test=8)
    trained = run_cli("train", "task=segment", "data=seg-folder", f"data.root={root}",
                      "model=unet", "model.depth=2", "model.width=8", "epochs=2", "lr=0.01",
                      "batch=8", "data.augment=[flip, {crop: 2}]", "name=seg")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "Report:" in trained.stdout and "test miou" in trained.stdout
    run = tmp_path / "runs" / "seg"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_miou", "val_miou", "val_dice", "val_pixel_acc"} <= set(header)
    assert (run / "plots" / "segment_samples.png").stat().st_size > 5000
    saved = json.loads((run / "eval-test.json").read_text())
    assert saved["samples"] == 8 and saved["pixels"] == 8 * 20 * 24
    assert [row["class"] for row in saved["per_class"]] == ["background", "square", "bar"]
    report = (run / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 2  # curves, test samples with masks
    assert f"{saved['miou']:.4f}" in report and "Per class" in report and "square" in report

    shown = run_cli("eval", run, "--split", "val")
    assert shown.returncode == 0, shown.stderr
    for needle in ("val split", "miou", "mean_dice", "pixel_acc", "square", "bar", "2,400 pixels"):
        assert needle in shown.stdout, shown.stdout  # 5 validation images (10%) of 20 x 24

    odd = tmp_path / "odd.png"  # any size: the mask matches the image given
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (31, 17), np.uint8)).save(odd)
    predicted = run_cli("predict", run, root / "test" / "images", odd, "-o", "out", "--overlay")
    assert predicted.returncode == 0, predicted.stderr
    masks = sorted((tmp_path / "out").glob("*[0-9d].png"))
    assert [m.name for m in masks] == [f"{i:03d}.png" for i in range(8)] + ["odd.png"]
    assert np.asarray(Image.open(masks[-1])).shape == (31, 17)
    assert np.asarray(Image.open(masks[0])).max() <= 2
    assert (tmp_path / "out" / "odd.overlay.png").is_file()
    assert f"{odd} -> out/odd.png" in predicted.stdout
    loaded = kiln.load(run).predict(odd)  # the same mask from Python
    assert torch.equal(loaded, torch.from_numpy(np.array(Image.open(masks[-1]))))
    assert_clean_error(run_cli("predict", run, odd, odd), "would both write odd.png")


def test_volumes_end_to_end(tmp_path, run_cli):
    made = run_cli("data", "make", "shapes3d", "--train", "10", "--test", "3", "--size", "16")
    assert made.returncode == 0, made.stderr
    root = tmp_path / "data" / "shapes3d"
    assert (root / "classes.txt").read_text().split() == ["background", "sphere", "cube"]
    mask = np.load(root / "train" / "masks" / "00000.npy")
    assert mask.shape == (16, 16, 16) and set(np.unique(mask)) <= {0, 1, 2}
    trained = run_cli("train", "task=segment", "data=seg-folder", f"data.root={root}",
                      "model=unet", "model.depth=2", "model.width=4", "epochs=1", "batch=4",
                      "data.augment=[flip]", "name=vol")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "runs" / "vol"
    assert json.loads((run / "info.json").read_text())["input_shape"] == [1, 16, 16, 16]
    assert (run / "plots" / "segment_samples.png").is_file()
    predicted = run_cli("predict", run, root / "test" / "images", "-o", "out")
    assert predicted.returncode == 0, predicted.stderr
    out = np.load(tmp_path / "out" / "00000.npy")
    assert out.shape == (16, 16, 16) and out.max() <= 2


def test_mnist_seg_maker(tmp_path, run_cli):
    shared = require("MNIST").parent
    made = run_cli("data", "make", "mnist-seg", "--data-root", shared, "--train", "30",
                   "--test", "5", "--size", "48")  # fmt: skip
    assert made.returncode == 0, made.stderr
    root = tmp_path / "data" / "mnist-seg"
    images = sorted((root / "train" / "images").glob("*.png"))
    assert len(images) == 30 and len(list((root / "test" / "masks").glob("*.png"))) == 5
    assert (root / "classes.txt").read_text().split() == ["background", *map(str, range(10))]
    for path in images[:10]:
        image = np.asarray(Image.open(path))
        mask = np.asarray(Image.open(root / "train" / "masks" / path.name))
        assert image.shape == mask.shape == (48, 48)
        assert np.array_equal(mask > 0, image >= 128)  # a digit's class where its pixel is on
        assert 2 <= len(np.unique(mask)) <= 5  # background and 1 to 4 digit classes
    wrong = run_cli("data", "make", "mnist-seg", "--data-root", shared, "--max-angle", "10")
    assert_clean_error(wrong, "--max-angle is not an option of mnist-seg")


class InterruptAt(Callback):
    def __init__(self, epoch: int, step: int):
        self.epoch, self.step = epoch, step

    def on_batch_end(self, trainer, epoch, step):
        if (epoch, step) == (self.epoch, self.step):
            trainer.stop.requested = True  # what the first Ctrl-C does


def test_an_interrupted_segment_run_resumes_to_the_same_weights(tmp_path):
    root = write_seg_folder(tmp_path / "seg", n_train=40, n_test=4, size=(12, 16))
    cfg = {
        "task": "segment",
        "data": {"name": "seg-folder", "root": str(root), "batch_size": 8, "augment": ["flip"]},
        "model": {"name": "unet", "depth": 2, "width": 4, "dropout": 0.2},
        "train": {"epochs": 2, "device": "cpu", "deterministic": True},
    }
    straight = kiln.train({**cfg, "run": {"dir": str(tmp_path), "name": "a"}}, progress=False)
    with pytest.raises(TrainingInterrupted):
        kiln.train({**cfg, "run": {"dir": str(tmp_path), "name": "b"}}, progress=False,
                   callbacks=[InterruptAt(2, 1)])  # fmt: skip
    resumed = kiln.train(resume=tmp_path / "b", progress=False)
    for which in ("last", "best"):
        a = checkpoint.load(straight.path / "checkpoints" / f"{which}.pt")["model"]
        b = checkpoint.load(resumed.path / "checkpoints" / f"{which}.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), which
    assert resumed.history[-1]["val_miou"] == straight.history[-1]["val_miou"]


def test_predictions_give_each_image_its_mask_and_class_shares():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 1  # image 0: all class 1
    logits[1, 2, 0] = 1  # image 1: top row class 2, bottom row background
    answers = SegmentTask.predictions(logits, info_for(classes=3))
    assert answers[0] == {"mask": [[1, 1], [1, 1]], "classes": {"1": 1.0}}
    assert answers[1] == {"mask": [[2, 2], [0, 0]], "classes": {"0": 0.5, "2": 0.5}}
