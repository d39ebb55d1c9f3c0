"""Augmentation on whole batches (the in-memory path) and the choice of data path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln import data as kdata
from kiln.config import DataConfig, build_config, parse_size
from kiln.data import MemoryLoader, Normalize, Split, WorkerLoader, describe_path, make_loader
from kiln.data.batch_augment import BatchAugment, cutout, flip, random_crop, shift, translate
from kiln.data.placement import place
from kiln.data.transforms import resolve_augment
from kiln.errors import ConfigError


def batch(n=6, c=3, h=7, w=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize(
    "mode,numpy_mode", [("reflect", "reflect"), ("edge", "edge"), ("symmetric", "symmetric")]
)
def test_shift_matches_a_crop_of_the_padded_image(mode, numpy_mode):
    x = batch()
    pad = 3
    dy = torch.tensor([-3, -1, 0, 2, 3, 1])
    dx = torch.tensor([3, 0, -2, -3, 1, 2])
    out = shift(x, dy, dx, mode)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=numpy_mode)
    for i in range(len(x)):
        top, left = pad - int(dy[i]), pad - int(dx[i])
        expected = padded[i, :, top : top + 7, left : left + 9]
        assert np.array_equal(out[i].numpy(), expected), f"image {i}"


def test_shift_fills_with_a_constant_per_channel():
    x = batch(n=2)
    out = shift(x, torch.tensor([2, 0]), torch.tensor([0, -1]), "constant", [10, 20, 30])
    padded = F.pad(x, (1, 1, 2, 2), value=0)
    assert torch.equal(out[0, :, 2:], x[0, :, :-2])
    assert out[0, :, :2].tolist() == [[[10] * 9] * 2, [[20] * 9] * 2, [[30] * 9] * 2]
    assert torch.equal(out[1, :, :, :-1], x[1, :, :, 1:])
    assert out[1, :, :, -1].tolist() == [[10] * 7, [20] * 7, [30] * 7]
    assert padded.shape[-1] == 11  # sanity of the reference


def test_random_crop_moves_each_image_by_at_most_the_padding_and_varies():
    x = batch(n=64, c=1, h=12, w=12).clamp_min(1)  # no zero pixels: zeros mark the padding
    g = torch.Generator().manual_seed(1)
    out = random_crop(x, g, padding=2, mode="constant", fill=0)
    offsets = set()
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        found = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if torch.equal(out[i], padded[i, :, top : top + 12, left : left + 12])
        ]
        assert found, f"image {i} is not a crop of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 10  # images get their own draws


def test_flip_probability_and_identity():
    x = batch(n=400, h=4, w=5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(flip(x, g, p=0.0), x)
    assert torch.equal(flip(x, g, p=1.0), x.flip(3))
    assert torch.equal(flip(x, g, p=1.0, dim=2), x.flip(2))
    out = flip(x, g, p=0.5)
    flipped = sum(torch.equal(out[i], x[i].flip(2)) for i in range(len(x)))
    assert 150 < flipped < 250


def test_cutout_paints_one_square_of_the_given_size():
    x = torch.full((200, 3, 16, 16), 200, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = cutout(x, g, size=6, p=1.0, value=0)
    painted = (out == 0).all(dim=1)  # (N, H, W)
    counts = painted.flatten(1).sum(1)
    assert counts.max() == 36 and counts.min() > 0  # a square, cut where it hangs over an edge
    for i in range(len(x)):
        rows, cols = painted[i].any(1).nonzero(), painted[i].any(0).nonzero()
        assert painted[i].sum() == len(rows) * len(cols)  # a rectangle, not scattered pixels
    assert torch.equal(cutout(x, g, size=6, p=0.0), x)
    assert (cutout(x, g, size=0.5, p=1.0) == 0).all(dim=1).flatten(1).sum(1).max() == 64


def test_translate_stays_within_the_fraction():
    x = batch(n=100, c=1, h=20, w=10).clamp_min(1)
    g = torch.Generator().manual_seed(0)
    out = translate(x, g, (0.1, 0.2), fill=0)  # up to 1 px across, 4 px down or up
    empty_rows = (out == 0).all(dim=3).sum(dim=(1, 2))
    empty_cols = (out == 0).all(dim=2).sum(dim=(1, 2))
    assert empty_rows.max() <= 4 and empty_cols.max() <= 1
    assert empty_rows.max() == 4 and empty_cols.max() == 1


def test_memory_loader_augments_reproducibly_and_resumes_mid_epoch():
    split = Split(batch(n=50, c=1, h=8, w=8), torch.arange(50) % 3)
    steps = resolve_augment(["flip", {"crop": 2}, {"cutout": 3}])

    def loader():
        return MemoryLoader(
            split,
            8,
            Normalize([0.5], [0.25], "cpu"),
            shuffle=True,
            generator=torch.Generator().manual_seed(3),
            augment=BatchAugment(steps),
        )

    a, b = loader(), loader()
    order_a, order_b = a.order(), b.order()
    full = list(a.batches(order_a))
    assert len(full) == 7
    resumed = list(b.batches(order_b, start=4))
    for (xa, ya), (xb, yb) in zip(full[4:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    plain = MemoryLoader(split, 8, Normalize([0.5], [0.25], "cpu"))
    assert not torch.equal(full[0][0], next(iter(plain))[0])  # augmentation did something
    second = list(a.batches(a.order()))
    assert not torch.equal(second[0][0], full[0][0])  # a new epoch draws anew


def test_the_path_follows_the_augmentation_steps():
    split = Split(batch(n=20, c=1, h=8, w=8), torch.arange(20) % 2)
    norm = Normalize([0.5], [0.25], "cpu")
    fast = resolve_augment(["flip", "crop", "translate", "cutout", "vflip"])
    loader = make_loader(split, 4, norm, augment=fast)
    assert isinstance(loader, MemoryLoader)
    line = describe_path(loader, None, fast)
    assert "in memory on cpu" in line and "whole batches (flip, crop, translate" in line

    slow = resolve_augment(["flip", {"rotation": 10}])
    loader = make_loader(split, 4, norm, augment=slow, shuffle=True)
    assert isinstance(loader, WorkerLoader)
    line = describe_path(loader, None, slow)
    assert "DataLoader" in line and "rotation run per sample" in line
    x, _ = next(iter(loader))
    assert x.shape == (4, 1, 8, 8)


def test_cutout_runs_per_sample_on_the_dataloader_path():
    split = Split(torch.full((8, 3, 10, 10), 255, dtype=torch.uint8), torch.zeros(8).long())
    steps = resolve_augment([{"cutout": {"size": 4, "value": 0}}, {"rotation": 0}])
    loader = make_loader(split, 8, Normalize([0.0] * 3, [1.0] * 3, "cpu"), augment=steps)
    x, _ = next(iter(loader))
    painted = (x == 0).all(dim=1).flatten(1).sum(1)
    assert painted.max() == 16 and painted.min() >= 1


def test_placement_budget_and_reasons():
    split = Split(torch.zeros(100, 1, 10, 10, dtype=torch.uint8), torch.zeros(100).long())
    cpu = torch.device("cpu")
    assert place("auto", [split], cpu).in_memory
    small = place("5KB", [split], cpu)
    assert not small.in_memory and "10 KB decoded > data.memory=5KB" in small.reason
    assert place("1MB", [split], cpu).in_memory
    assert not place(False, [split], cpu).in_memory
    assert parse_size("1.5 GB") == int(1.5 * 2**30) and parse_size("500mb") == 500 * 2**20
    with pytest.raises(ConfigError, match="a size like 2GB"):
        parse_size("lots")


def test_data_memory_accepts_a_size_and_names_the_key_when_wrong():
    assert build_config(None, {"data.memory": "2GB"}).data.memory == "2GB"
    with pytest.raises(ConfigError, match="data.memory"):
        build_config(None, {"data.memory": "plenty"})


def test_a_small_budget_sends_digits_through_the_dataloader():
    bundle = kdata.build(DataConfig(name="digits", memory="10KB"))
    assert not bundle.placement.in_memory
    norm = Normalize(bundle.info.mean, bundle.info.std, "cpu")
    loader = make_loader(bundle.train, 64, norm, placement=bundle.placement)
    assert isinstance(loader, WorkerLoader)
    assert "data.memory=10KB" in describe_path(loader, bundle.placement, [])


def test_training_with_batched_augmentation_says_so(tmp_path, capsys):
    import kiln

    run = kiln.train(
        None,
        epochs=5,
        model__name="mlp",
        run__dir=str(tmp_path),
        data__augment=[{"crop": 1}, {"cutout": 2}],
        run__report=False,
    )
    out = capsys.readouterr().out
    assert "Data: in memory on cpu, batched by index" in out
    assert "augmentation on whole batches (crop, cutout)" in out
    assert run.history[-1]["val_acc"] > 0.8
