from __future__ import annotations

import gzip

import pytest
import torch
from shared_data import copy_mnist_like

from kiln import data as kdata
from kiln.config import DataConfig
from kiln.data import MemoryLoader, Normalize, Split, channel_stats
from kiln.errors import ConfigError, DataError


def test_digits_splits_shapes_and_normalization():
    bundle = kdata.build(DataConfig(name="digits", val_fraction=0.1))
    info = bundle.info
    assert info.input_shape == (1, 8, 8) and info.classes == [str(i) for i in range(10)]
    assert bundle.train.images.dtype == torch.uint8
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 1797
    assert abs(len(bundle.val) - 0.1 * (len(bundle.train) + len(bundle.val))) <= 1
    # every class is represented in validation (stratified)
    assert set(bundle.val.labels.tolist()) == set(range(10))
    # normalization comes from the training split, not from constants
    x = bundle.train.images.float() / 255
    assert info.mean[0] == pytest.approx(x.mean().item(), abs=1e-5)
    assert info.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-5)


def test_digits_are_scikit_learns_images_and_test_split_read_without_scikit_learn():
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from kiln.data.builtin import load_digits as kiln_digits

    raw = kiln_digits(None, None)
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    train_x, test_x, train_y, test_y = train_test_split(
        images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0
    )
    assert np.array_equal(raw.train.images.numpy(), train_x)
    assert np.array_equal(raw.test.images.numpy(), test_x)
    assert np.array_equal(raw.train.labels.numpy(), train_y)
    assert np.array_equal(raw.test.labels.numpy(), test_y)
    code = (
        "import sys; from kiln.data.builtin import load_digits; load_digits(None, None); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_validation_split_is_fixed_whatever_the_seed():
    a = kdata.build(DataConfig(name="digits"))
    b = kdata.build(DataConfig(name="digits"))
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)


def test_subset_limits_training_samples():
    bundle = kdata.build(DataConfig(name="digits", subset=100))
    assert len(bundle.train) == 100


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown dataset 'nope'.*digits.*mnist"):
        kdata.build(DataConfig(name="nope"))


def test_channel_stats_match_torch_for_rgb():
    images = torch.randint(0, 256, (50, 3, 5, 7), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=7)
    x = images.float() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-5)


def test_memory_loader_visits_every_sample_once_per_epoch_and_normalizes():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    split = Split(images, torch.arange(10))
    loader = MemoryLoader(
        split,
        4,
        Normalize([0.5], [0.25], "cpu"),
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(loader) == 3
    seen = []
    for x, y in loader:
        expected = ((y.float() / 255 - 0.5) / 0.25).view(-1, 1, 1, 1).expand_as(x)
        assert torch.allclose(x, expected, atol=1e-6)
        seen += y.tolist()
    assert sorted(seen) == list(range(10)) and seen != list(range(10))
    # resuming from batch 1 with the same order yields the remaining batches
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    rest = [y.tolist() for _, y in loader.batches(order, start=1)]
    assert rest == [order[4:8].tolist(), order[8:].tolist()]


def test_unaugmented_split_normalized_up_front_gives_the_same_batches(monkeypatch):
    """Normalizing the whole split once is only a speed-up: every batch holds exactly the numbers
    that normalizing the batch gives; a split too big for its float copy stays uint8."""
    from kiln.data import memory, placement

    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    split = Split(images, torch.arange(50))
    norm = Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3], "cpu")

    def batches(loader):
        return list(loader.batches(torch.randperm(50, generator=torch.Generator().manual_seed(3))))

    ahead = MemoryLoader(split, 8, norm, shuffle=True)
    assert ahead.normalized and ahead.images.dtype == torch.float32
    monkeypatch.setattr(placement, "NORMALIZED_LIMIT", 50 * 3 * 4 * 4 * 4 - 1)
    per_batch = MemoryLoader(split, 8, norm, shuffle=True)
    assert not per_batch.normalized and per_batch.images.dtype == torch.uint8
    for (xa, ya), (xb, yb) in zip(batches(ahead), batches(per_batch), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert split.images.dtype == torch.uint8  # the dataset itself is untouched
    assert memory.fits_normalized(images) is False  # the limit above, seen by the loader


def test_mnist_missing_files_offline_names_each_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        kdata.build(DataConfig(name="mnist", root=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        assert name in msg


def test_mnist_partially_missing_names_only_the_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_OFFLINE", "1")
    copy_mnist_like("MNIST", tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        kdata.build(DataConfig(name="mnist", root=str(tmp_path)))
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)
    assert "train-images-idx3-ubyte.gz" not in str(err.value)


def test_mnist_corrupt_file_is_rejected_by_checksum(tmp_path):
    copy_mnist_like("MNIST", tmp_path)
    gz = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(b"not the labels"))
    with pytest.raises(DataError, match="corrupt"):
        kdata.build(DataConfig(name="mnist", root=str(tmp_path)))


def test_mnist_from_official_files_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_OFFLINE", "1")
    copy_mnist_like("MNIST", tmp_path)
    bundle = kdata.build(DataConfig(name="mnist", root=str(tmp_path)))
    assert bundle.info.input_shape == (1, 28, 28)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    assert bundle.info.mean[0] == pytest.approx(0.1307, abs=2e-3)
    assert bundle.info.std[0] == pytest.approx(0.3081, abs=2e-3)


def test_kiln_data_env_is_the_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_DATA", str(tmp_path))
    assert kdata.resolve_root(DataConfig()) == tmp_path
    assert kdata.resolve_root(DataConfig(root="/elsewhere")).as_posix() == "/elsewhere"


def test_cifar10_from_png_folders(tmp_path):
    import shutil

    from shared_data import require

    source = require("cifar10")
    from kiln.data.builtin import CIFAR10_CLASSES

    for split, per_class in (("train", 12), ("test", 3)):
        for name in CIFAR10_CLASSES:
            target = tmp_path / "cifar10" / split / name
            target.mkdir(parents=True)
            for png in sorted((source / split / name).glob("*.png"))[:per_class]:
                shutil.copy(png, target / png.name)
    bundle = kdata.build(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.2))
    assert bundle.info.input_shape == (3, 32, 32) and bundle.info.classes == CIFAR10_CLASSES
    assert len(bundle.train) + len(bundle.val) == 120 and len(bundle.test) == 30
    assert bundle.test.labels.tolist() == [i for i in range(10) for _ in range(3)]
    assert len(bundle.info.mean) == 3 and all(0.2 < m < 0.7 for m in bundle.info.mean)


def test_subset_is_a_stratified_sample_and_leaves_val_and_test_alone():
    full = kdata.build(DataConfig(name="digits"))
    small = kdata.build(DataConfig(name="digits", subset=100))
    assert len(small.train) == 100
    counts = torch.bincount(small.train.labels, minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11  # every class, in proportion
    assert torch.equal(small.val.labels, full.val.labels)  # untouched without data.subset_eval
    assert torch.equal(small.test.labels, full.test.labels)
    again = kdata.build(DataConfig(name="digits", subset=100))
    assert torch.equal(again.train.images, small.train.images)  # a fixed sample
    both = kdata.build(DataConfig(name="digits", subset=100, subset_eval=50))
    assert len(both.val) == 50 and len(both.test) == 50
    assert set(both.test.labels.tolist()) == set(range(10))


def test_subset_of_the_class_ordered_cifar10_folder_holds_every_class(tmp_path):
    """The CIFAR-10 PNG folder lists its files class by class: the first N were one class."""
    import shutil

    from shared_data import require

    source = require("cifar10") / "train"
    for folder in sorted(source.iterdir()):  # 30 real images per class, in the same layout
        (tmp_path / folder.name).mkdir()
        for png in sorted(folder.glob("*.png"))[:30]:
            shutil.copy(png, tmp_path / folder.name / png.name)
    bundle = kdata.build(DataConfig(name="folder", root=str(tmp_path), subset=40, workers=0))
    assert len(bundle.train) == 40
    assert set(bundle.train.labels.tolist()) == set(range(10))
