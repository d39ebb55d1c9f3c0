"""The decoded-image cache (data.cache): a later run opens what the first one decoded, gets the
same tensors, and notices every change to the files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KILN, assert_clean_error
from PIL import Image
from shared_data import require

from kiln import data as kdata
from kiln.config import DataConfig
from kiln.data import cache as kcache
from kiln.data import verify
from kiln.data.files import FileSplit
from kiln.errors import ConfigError, DataError

CLASSES = ("cat", "dog", "fox")


def make_folder(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    """Images of mixed sizes and modes (RGB 12x10 mostly, some grey, RGBA, palette and
    EXIF-rotated ones of other sizes), so the cached path converts, rotates and resizes like the
    uncached one."""
    rng = np.random.default_rng(seed)
    kinds = [((12, 10), "RGB"), ((12, 10), "RGB"), ((16, 20), "L"), ((9, 9), "RGBA"),
             ((12, 10), "P"), ((10, 14), "RGB")]  # fmt: skip
    for label in CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size, mode = kinds[i % len(kinds)]
            pixels = rng.integers(0, 255, (*size, 4), dtype=np.uint8)
            image = Image.fromarray(pixels, "RGBA")
            image = image.convert("RGB").convert("P") if mode == "P" else image.convert(mode)
            exif = Image.Exif()
            if i % len(kinds) == 5:
                exif[0x0112] = 6  # orientation: shown rotated a quarter turn
            image.save(root / label / f"{i}.png", exif=exif)
    return root


def build(root: Path, cache, **options) -> kdata.DataBundle:
    return kdata.build(DataConfig(name="folder", root=str(root), cache=str(cache), **options))


def pixels(split) -> torch.Tensor:
    return split.load(0).images if isinstance(split, FileSplit) else split.images


def entries_in(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]


def assert_same(a: kdata.DataBundle, b: kdata.DataBundle) -> None:
    for name in ("train", "val", "test"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(pixels(x), pixels(y)), name
        assert torch.equal(x.labels, y.labels), name
    assert a.info == b.info
    assert (a.skipped, a.sizes, a.modes) == (b.skipped, b.sizes, b.modes)


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hit must neither list the folder nor open an image."""

    def fail(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(kcache.Source, "scan", fail)
    monkeypatch.setattr(verify, "_decode_all", fail)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "images")


# ----------------------------------------------------------------------------- hits


def test_second_run_opens_the_cache_without_scanning_or_decoding(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = build(folder, cache)
    assert first.note.startswith("Data cache: decoded 24 images once into")
    (entry,) = entries_in(cache)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["dataset"] == str(folder.resolve())
    assert sorted(manifest["files"]) == sorted(f"{c}/{i}.png" for c in CLASSES for i in range(8))

    forbid_decoding(monkeypatch)
    second = build(folder, cache)
    assert second.note.startswith(f"Data cache: 24 decoded images from {entry} (files unchanged")
    assert_same(first, second)


def test_cached_data_equal_uncached_in_memory_and_streamed(folder, tmp_path):
    uncached = build(folder, "off")
    assert_same(uncached, build(folder, tmp_path / "cache"))  # the run that writes it
    assert_same(uncached, build(folder, tmp_path / "cache"))  # a run that reads it
    streamed = build(folder, tmp_path / "cache", memory=False)
    assert isinstance(streamed.train, FileSplit) and streamed.train.decoded is not None
    assert_same(uncached, streamed)
    assert torch.equal(streamed.train.image(3), uncached.train.images[3])
    resized = build(folder, tmp_path / "cache", size=[8, 8], channels=1)  # its own entry
    assert_same(build(folder, "off", size=[8, 8], channels=1), resized)
    assert len(entries_in(tmp_path / "cache")) == 2


def test_csv_dataset_is_cached_and_a_missing_file_that_appears_rebuilds(tmp_path):
    root = make_folder(tmp_path / "images", per_class=4)
    table = tmp_path / "labels.csv"
    rows = [(f"{c}/{i}.png", c, "test" if i == 3 else "train") for c in CLASSES for i in range(4)]
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([("file", "label", "split"), *rows, ("cat/9.png", "cat", "")])

    def run(cache):
        cfg = DataConfig(name="csv", csv=str(table), root=str(root), cache=str(cache),
                         on_bad="skip")  # fmt: skip
        return kdata.build(cfg)

    uncached = run("off")
    assert any("cat/9.png" in s and "not found" in s for s in uncached.skipped)
    assert_same(uncached, run(tmp_path / "cache"))
    again = run(tmp_path / "cache")
    assert_same(uncached, again)
    assert "files unchanged" in again.note

    shutil.copy(root / "cat" / "0.png", root / "cat" / "9.png")
    now = run(tmp_path / "cache")
    assert now.note.startswith("Data cache: cat/9.png appeared; decoded 13 images again")
    assert now.skipped == [] and len(now.train) + len(now.val) == len(uncached.train) + 2


# ----------------------------------------------------------------------------- changes


@pytest.mark.parametrize(
    "change, said",
    [
        ("touch", "dog/2.png changed"),
        ("rewrite", "dog/2.png changed"),
        ("add", "1 image(s) were added (e.g. dog/new.png)"),
        ("remove", "1 image(s) were removed (e.g. dog/2.png)"),
    ],
)
def test_a_changed_file_rebuilds_the_cache_saying_which(folder, tmp_path, change, said):
    cache = tmp_path / "cache"
    build(folder, cache)
    image = folder / "dog" / "2.png"
    if change == "touch":
        st = image.stat()
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "rewrite":  # other pixels, same size and mode
        Image.new("RGB", (10, 12), (9, 9, 9)).save(image)
    elif change == "add":
        shutil.copy(image, folder / "dog" / "new.png")
    else:
        image.unlink()
    rebuilt = build(folder, cache)
    assert rebuilt.note.startswith(f"Data cache: {said}; decoded ") and "\n" not in rebuilt.note
    assert_same(build(folder, "off"), rebuilt)
    assert "files unchanged" in build(folder, cache).note  # the run after reads the new entry


def test_a_folder_that_changed_but_lists_the_same_images_keeps_the_cache(folder, tmp_path):
    cache = tmp_path / "cache"
    build(folder, cache)
    (folder / "README.md").write_text("where these came from")  # the root folder's stamp moves
    assert "files unchanged" in build(folder, cache).note


# ----------------------------------------------------------------------------- bad files


def test_skipped_files_are_the_same_from_the_cache_and_stop_an_error_run(
    folder, tmp_path, monkeypatch
):
    (folder / "fox" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "fox" / "empty.png").write_bytes(b"")
    (folder / "dog" / "notes.txt").write_text("not an image")
    uncached = build(folder, "off", on_bad="skip")
    assert len(uncached.skipped) == 3
    with pytest.raises(DataError) as error:
        build(folder, tmp_path / "cache")  # on_bad=error: stops, and the entry is kept
    assert "3 problem(s)" in str(error.value)
    forbid_decoding(monkeypatch)
    assert_same(uncached, build(folder, tmp_path / "cache", on_bad="skip"))
    with pytest.raises(DataError) as again:
        build(folder, tmp_path / "cache")
    assert str(again.value) == str(error.value)


# ----------------------------------------------------------------------------- writing


def test_a_killed_writers_temporary_folder_is_never_read(folder, tmp_path):
    cache = tmp_path / "cache"
    build(folder, cache)
    (entry,) = entries_in(cache)
    # What a writer killed half way leaves: a temporary folder, its images still zeros.
    leftover = cache / f".tmp-{entry.name}-99999-dead"
    shutil.copytree(entry, leftover)
    np.load(leftover / "images.npy", mmap_mode="r+")[:] = 0
    shutil.rmtree(entry)
    rebuilt = build(folder, cache)
    assert "decoded 24 images once into" in rebuilt.note
    assert_same(build(folder, "off"), rebuilt)
    assert not leftover.exists()  # the next writer cleared it


def test_runs_started_together_decode_once(folder, tmp_path):
    cache = tmp_path / "cache"
    script = (
        "import sys; from kiln import data as kdata; from kiln.config import DataConfig; "
        f"b = kdata.build(DataConfig(name='folder', root={str(folder)!r}, cache={str(cache)!r})); "
        "print(int(b.train.images.sum()), len(b.train)); print(b.note, file=sys.stderr)"
    )
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), outs
    assert outs[0][0] == outs[1][0]
    assert sum("decoded 24 images once" in err for _, err in outs) == 1, outs
    assert [p.name for p in cache.iterdir() if p.name.startswith(".tmp-")] == []


def test_cache_off_writes_nothing_and_auto_writes_under_kiln_cache(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "kiln-cache"))
    build(folder, "off")
    assert not (tmp_path / "kiln-cache").exists()
    build(folder, "auto")
    (entry,) = entries_in(tmp_path / "kiln-cache" / "decoded")
    assert (entry / "images.npy").is_file() and (entry / "manifest.json").is_file()
    build(folder, tmp_path / "mine")
    assert len(entries_in(tmp_path / "mine")) == 1
    assert len(entries_in(tmp_path / "kiln-cache" / "decoded")) == 1


def test_an_unwritable_cache_folder_costs_one_warning_not_the_run(folder, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where the cache folder would be")
    bundle = build(folder, blocked / "cache")
    assert bundle.note.startswith("warning: cannot write the decoded-image cache")
    assert "\n" not in bundle.note
    assert_same(build(folder, "off"), bundle)


def test_a_cache_inside_the_dataset_is_refused(folder):
    with pytest.raises(ConfigError, match="inside the dataset folder"):
        build(folder, folder / "cache")
    assert not (folder / "cache").exists()


# ----------------------------------------------------------------------------- the CLI


def kiln(capsys, *args) -> subprocess.CompletedProcess:
    """`kiln ARGS` in this process (the verbs below import nothing that a process would not)."""
    from kiln.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    said = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, said.out, said.err)


def test_kiln_data_cache_ls_and_rm(folder, tmp_path, capsys):
    cache = tmp_path / "cache"
    other = make_folder(tmp_path / "other", per_class=2)
    stats = kiln(capsys, "data", "stats", "folder", f"data.root={folder}", f"data.cache={cache}")
    assert stats.returncode == 0, stats.stderr
    assert "Data cache: decoded 24 images once" in stats.stdout
    as_json = subprocess.run(
        [*KILN, "data", "stats", "folder", f"data.root={folder}", f"data.cache={cache}", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert as_json.returncode == 0 and as_json.stderr == "", as_json.stderr
    assert json.loads(as_json.stdout)["totals"]["train"] > 0  # one JSON object, nothing else
    build(other, cache)
    (cache / ".tmp-other-123-dead").mkdir()  # a stopped writer's

    listed = kiln(capsys, "data", "cache", "ls", "--dir", cache)
    assert listed.returncode == 0, listed.stderr
    names = sorted(p.name for p in entries_in(cache))
    for name in names:
        assert name in listed.stdout
    assert "24" in listed.stdout and "2 cache(s)" in listed.stdout
    assert "1 unfinished build(s)" in listed.stdout

    removed = kiln(capsys, "data", "cache", "rm", other, "--dir", cache)  # by its dataset
    assert removed.returncode == 0 and "removed 1 cache(s)" in removed.stdout, removed.stderr
    assert sorted(p.name for p in entries_in(cache)) == [n for n in names if "images-" in n]
    assert_clean_error(kiln(capsys, "data", "cache", "rm", "nope", "--dir", cache), "nope")
    assert_clean_error(kiln(capsys, "data", "cache", "rm", "--dir", cache), "--all")
    everything = kiln(capsys, "data", "cache", "rm", "--all", "--dir", cache)
    assert everything.returncode == 0, everything.stderr
    assert "removed 1 unfinished build(s)" in everything.stdout
    assert list(cache.iterdir()) == []
    empty = kiln(capsys, "data", "cache", "ls", "--dir", cache)
    assert f"no decoded-image caches in {cache}" in empty.stdout


# ----------------------------------------------------------------------------- real data


def test_cifar10_subset_from_the_cache_equals_the_uncached_build(tmp_path):
    source = require("cifar10")
    root = tmp_path / "cifar10"
    for split in ("train", "test"):
        for label in sorted(p.name for p in (source / split).iterdir()):
            (root / split / label).mkdir(parents=True)
            for png in sorted((source / split / label).glob("*.png"))[:12]:
                shutil.copy(png, root / split / label / png.name)
    uncached = build(root, "off")
    assert uncached.info.input_shape == (3, 32, 32) and len(uncached.test) == 120
    assert_same(uncached, build(root, tmp_path / "cache"))
    again = build(root, tmp_path / "cache")
    assert_same(uncached, again)
    assert "240 decoded images from" in again.note


def test_a_run_waiting_for_another_decoder_says_so_on_stderr(tmp_path, capsys):
    """While another process holds an entry's lock, the run says that it waits (through the
    kiln logger, on stderr: stdout may be `kiln data stats --json`) and goes on once it is free."""
    import fcntl
    import os
    import threading

    from kiln import logs
    from kiln.data.cache_store import lock

    logs.setup()  # the kiln logger's handlers, as every verb sets them up
    (tmp_path / "entry.lock").touch()
    other = os.open(tmp_path / "entry.lock", os.O_RDWR)  # another process's hold on the lock
    fcntl.flock(other, fcntl.LOCK_EX)
    got = threading.Event()

    def wait_for_it() -> None:
        with lock(tmp_path, "entry"):
            got.set()

    waiting = threading.Thread(target=wait_for_it)
    waiting.start()
    assert not got.wait(0.5)  # blocked while the other holds it
    os.close(other)
    waiting.join(10)
    assert got.is_set()
    said = capsys.readouterr()
    assert said.err.count("waiting for another kiln process") == 1 and str(tmp_path) in said.err
    assert "waiting" not in said.out
