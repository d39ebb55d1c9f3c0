"""kiln.data.scan: every kind of bad data is found before training, each case on its own."""

from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import snapshot
from PIL import Image

from kiln.data.scan import (
    ImageMeta,
    Problem,
    Sample,
    ScanResult,
    scan_csv,
    scan_folder,
)
from kiln.data.verify import verify_images
from kiln.errors import DataError

CIFAR_TRAIN = Path("/work/shared/datasets/cifar10/train")


# ----------------------------------------------------------------------------- fixtures


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 8)) -> Path:
    """A small valid image; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        im = Image.new("RGB", size, (200, 30, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        im = Image.new(mode, size, {"L": 128, "RGB": (10, 20, 30), "RGBA": (1, 2, 3, 4)}[mode])
    im.save(path)
    return path


def write_noise_png(path: Path, size: int = 64) -> Path:
    """A PNG whose pixel data is most of the file, so cutting the file cuts the pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3)).save(path)
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_csv(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def reasons(result: ScanResult | list[Problem]) -> list[str]:
    problems = result.problems if isinstance(result, ScanResult) else result
    return [p.reason for p in problems]


def only_problem(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A clean ImageFolder: every mode, both formats, a nested image and OS litter."""
    root = tmp_path / "images"
    write_image(root / "cat" / "a.png", "RGB")
    write_image(root / "cat" / "b.jpg", "RGB")
    write_image(root / "cat" / "c.JPEG", "L")
    write_image(root / "dog" / "a.png", "L")
    write_image(root / "dog" / "b.png", "RGBA")
    write_image(root / "dog" / "c.png", "P")
    write_image(root / "dog" / "big.png", "RGB", size=(12, 10))
    write_image(root / "dog" / "more" / "d.png", "RGB")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "dog" / "._a.png").write_bytes(b"resource fork")
    (root / "cat" / "Thumbs.db").write_bytes(b"thumbs")
    (root / "cat" / ".ipynb_checkpoints").mkdir()
    (root / "cat" / ".ipynb_checkpoints" / "notes.txt").write_text("not data")
    (root / ".DS_Store").write_bytes(b"junk")
    return root


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    for split in ("train", "val", "test"):
        for label in ("cat", "dog"):
            write_image(root / split / label / "1.png")
    write_image(root / "train" / "cat" / "2.PNG")
    write_image(root / "train" / "dog" / "2.JpG")
    return root


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    """data/images/{cat,dog}/*.png for CSV tests, plus x.png next to (outside) the image folder."""
    root = tmp_path / "data" / "images"
    for label in ("cat", "dog"):
        for i in range(3):
            write_image(root / label / f"{i}.png")
    write_image(tmp_path / "x.png")
    return root


# ----------------------------------------------------------------------------- folders


def test_folder_good_samples_come_back_with_labels(folder: Path) -> None:
    result = scan_folder(folder)
    assert result.problems == []
    assert result.classes == ["cat", "dog"]
    found = {(s.path.relative_to(folder.resolve()).as_posix(), s.label) for s in result.samples}
    assert found == {
        ("cat/a.png", "cat"),
        ("cat/b.jpg", "cat"),
        ("cat/c.JPEG", "cat"),
        ("dog/a.png", "dog"),
        ("dog/b.png", "dog"),
        ("dog/c.png", "dog"),
        ("dog/big.png", "dog"),
        ("dog/more/d.png", "dog"),
    }
    assert all(s.split is None and s.line is None for s in result.samples)
    assert all(s.path.is_absolute() and s.path.is_file() for s in result.samples)
    assert [s.path for s in result.samples] == sorted(s.path for s in result.samples)


def test_verify_reports_size_and_mode_of_good_images(folder: Path) -> None:
    samples = scan_folder(folder).samples
    problems, metas = verify_images(samples, workers=2)
    assert problems == []
    assert set(metas) == {s.path for s in samples}
    by_name = {p.relative_to(folder.resolve()).as_posix(): m for p, m in metas.items()}
    assert by_name["cat/a.png"] == ImageMeta(8, 8, "RGB")
    assert by_name["cat/c.JPEG"] == ImageMeta(8, 8, "L")
    assert by_name["dog/b.png"] == ImageMeta(8, 8, "RGBA")
    assert by_name["dog/c.png"] == ImageMeta(8, 8, "P")
    assert by_name["dog/big.png"] == ImageMeta(12, 10, "RGB")


def test_folder_splits(split_folder: Path) -> None:
    result = scan_folder(split_folder)
    assert result.problems == []
    assert result.classes == ["cat", "dog"]
    got = sorted((s.split, s.label, s.path.name) for s in result.samples)
    assert got == sorted(
        [("train", "cat", "1.png"), ("train", "cat", "2.PNG")]
        + [("train", "dog", "1.png"), ("train", "dog", "2.JpG")]
        + [(split, label, "1.png") for split in ("val", "test") for label in ("cat", "dog")]
    )
    # Stable order: by split (train, val, test), then path.
    assert [s.split for s in result.samples] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2


def test_folder_val_and_test_are_optional(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "cat" / "1.png")
    write_image(tmp_path / "train" / "dog" / "1.png")
    result = scan_folder(tmp_path)
    assert result.problems == [] and {s.split for s in result.samples} == {"train"}


def test_folder_text_file_in_class_folder(folder: Path) -> None:
    (folder / "cat" / "notes.txt").write_text("hello")
    result = scan_folder(folder)
    problem = only_problem(result.problems)
    assert problem.path.endswith("images/cat/notes.txt")
    assert problem.reason == (
        "not an image file (.txt); remove it or move it out of the class folder"
    )
    assert problem.line is None
    assert len(result.samples) == 8  # the good images still come back


def test_folder_empty_class_folder(folder: Path) -> None:
    (folder / "bird").mkdir()
    result = scan_folder(folder)
    problem = only_problem(result.problems)
    assert problem.path.endswith("images/bird")
    assert "empty class folder" in problem.reason
    assert result.classes == ["cat", "dog"]


def test_folder_class_with_only_litter_is_empty(folder: Path) -> None:
    (folder / "bird").mkdir()
    (folder / "bird" / ".DS_Store").write_bytes(b"junk")
    assert reasons(scan_folder(folder)) == ["empty class folder; add images or remove it"]


def test_folder_label_only_in_val_and_test(split_folder: Path) -> None:
    write_image(split_folder / "val" / "zebra" / "1.png")
    write_image(split_folder / "test" / "zebra" / "1.png")
    result = scan_folder(split_folder)
    problem = only_problem(result.problems)
    assert problem.reason == (
        "label 'zebra' appears only in val and test; add training images for it or remove it"
    )
    assert problem.path.endswith("split/val/zebra")
    assert "zebra" not in result.classes
    assert all(s.label != "zebra" for s in result.samples)


def test_folder_label_only_in_test(split_folder: Path) -> None:
    write_image(split_folder / "test" / "zebra" / "1.png")
    result = scan_folder(split_folder)
    assert reasons(result) == [
        "label 'zebra' appears only in test; add training images for it or remove it"
    ]
    assert len(result.samples) == 8


def test_folder_file_directly_in_root(folder: Path) -> None:
    write_image(folder / "stray.png")
    (folder / "LICENSE.txt").write_text("CC-BY")  # not an image: documentation, ignored
    problem = only_problem(scan_folder(folder).problems)
    assert problem.path.endswith("images/stray.png")
    assert "file directly in the image folder" in problem.reason


def test_folder_file_directly_in_split_or_root_of_splits(split_folder: Path) -> None:
    write_image(split_folder / "train" / "stray.png")
    write_image(split_folder / "stray.png")
    (split_folder / "README.md").write_text("my data")  # documentation beside the splits is fine
    (split_folder / "manifest.csv").write_text("file,label\n")
    result = scan_folder(split_folder)
    assert [Path(p.path).name for p in result.problems] == ["stray.png", "stray.png"]
    assert "outside the split folders" in result.problems[0].reason
    assert "outside the class folders" in result.problems[1].reason


def test_folder_misnamed_split_folder(split_folder: Path) -> None:
    write_image(split_folder / "valid" / "cat" / "1.png")
    problem = only_problem(scan_folder(split_folder).problems)
    assert "unexpected folder 'valid'" in problem.reason
    assert "train, val or test" in problem.reason


def test_folder_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*<root>/<class>/<image>"):
        scan_folder(tmp_path / "nowhere")


def test_folder_without_class_folders_raises(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"no class folders \(it holds 2 loose file\(s\)\)"):
        scan_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders;"):
        scan_folder(tmp_path / "empty")


def test_folder_integer_labels_sort_numerically(tmp_path: Path) -> None:
    for label in ("10", "2", "1"):
        write_image(tmp_path / label / "a.png")
    assert scan_folder(tmp_path).classes == ["1", "2", "10"]
    write_image(tmp_path / "cat" / "a.png")
    assert scan_folder(tmp_path).classes == ["1", "10", "2", "cat"]


def test_folder_broken_symlink_and_linked_images(folder: Path, tmp_path: Path) -> None:
    # A folder of symlinks is a normal way to build a dataset; a dangling one is a problem.
    outside = write_image(tmp_path / "elsewhere" / "e.png")
    (folder / "cat" / "linked.png").symlink_to(outside)
    (folder / "cat" / "gone.png").symlink_to(tmp_path / "missing.png")
    (folder / "dog" / "loop").symlink_to(folder / "dog")  # must not walk forever
    result = scan_folder(folder)
    problem = only_problem(result.problems)
    assert problem.path.endswith("cat/gone.png") and "broken symlink" in problem.reason
    assert "linked.png" in {s.path.name for s in result.samples}


# ----------------------------------------------------------------------------- CSV


def test_csv_good_samples(csv_root: Path) -> None:
    csv_path = write_csv(
        csv_root.parent / "labels.csv",
        "file,label,split\ncat/0.png,cat,train\ndog/0.png, dog ,TRAIN\n"
        "cat/1.png,cat,val\ndog/1.png,dog,Test\ncat/2.png,cat,\n",
    )
    result = scan_csv(csv_path, csv_root)
    assert result.problems == []
    assert result.classes == ["cat", "dog"]
    got = [(s.path, s.label, s.split, s.line) for s in result.samples]
    base = csv_root.resolve()
    assert got == [  # the CSV's order; line 1 is the header
        (base / "cat/0.png", "cat", "train", 2),
        (base / "dog/0.png", "dog", "train", 3),
        (base / "cat/1.png", "cat", "val", 4),
        (base / "dog/1.png", "dog", "test", 5),
        (base / "cat/2.png", "cat", None, 6),
    ]


def test_csv_without_split_column(csv_root: Path) -> None:
    csv_path = write_csv(csv_root / "labels.csv", "file,label\ncat/0.png,cat\ndog/0.png,dog\n")
    result = scan_csv(csv_path, csv_root)
    assert result.problems == [] and [s.split for s in result.samples] == [None, None]


def test_csv_with_bom_and_custom_columns(csv_root: Path) -> None:
    csv_path = write_csv(
        csv_root / "labels.csv", "path,class\ncat/0.png,cat\ndog/0.png,dog\n", bom=True
    )
    result = scan_csv(csv_path, csv_root, file_column="path", label_column="class")
    assert result.problems == []
    assert [s.label for s in result.samples] == ["cat", "dog"]


def test_csv_missing_file_column(csv_root: Path) -> None:
    csv_path = write_csv(csv_root / "labels.csv", "filename,label\ncat/0.png,cat\n")
    with pytest.raises(DataError) as info:
        scan_csv(csv_path, csv_root)
    message = str(info.value)
    assert "'file'" in message and str(csv_path) in message
    assert "columns found: filename, label" in message and "data.file_column" in message


def test_csv_missing_label_column(csv_root: Path) -> None:
    csv_path = write_csv(csv_root / "labels.csv", "file,class\ncat/0.png,cat\n")
    with pytest.raises(DataError, match="no 'label' column.*data.label_column"):
        scan_csv(csv_path, csv_root)


def test_csv_file_not_found(csv_root: Path) -> None:
    csv_path = write_csv(csv_root / "labels.csv", "file,label\ncat/0.png,cat\ncat/9.png,cat\n")
    result = scan_csv(csv_path, csv_root)
    problem = only_problem(result.problems)
    assert problem.line == 3
    assert problem.path == "cat/9.png"
    assert problem.reason == f"file not found: {csv_root / 'cat' / '9.png'}"
    assert len(result.samples) == 1


@pytest.mark.parametrize(
    "cell", ["../x.png", "../../x.png", "cat/../../x.png", "../images/../x.png"]
)
def test_csv_relative_path_escaping_root_is_refused(csv_root: Path, cell: str) -> None:
    # tmp/data/images/../x.png does not exist but tmp/data/images/../../x.png does: both refused.
    assert (csv_root / "../../x.png").resolve().is_file()
    csv_path = write_csv(csv_root / "labels.csv", f"file,label\ncat/0.png,cat\n{cell},cat\n")
    result = scan_csv(csv_path, csv_root)
    problem = only_problem(result.problems)
    assert problem.line == 3 and problem.path == cell
    assert "path escapes the image folder" in problem.reason
    assert [s.path.name for s in result.samples] == ["0.png"]


def test_csv_absolute_path_is_refused_even_when_it_exists(csv_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    assert target.is_file()
    csv_path = write_csv(csv_root / "labels.csv", f"file,label\ncat/0.png,cat\n{target},cat\n")
    problem = only_problem(scan_csv(csv_path, csv_root).problems)
    assert problem.line == 3
    assert "path escapes the image folder" in problem.reason and "absolute" in problem.reason


def test_csv_absolute_path_inside_root_is_refused_too(csv_root: Path) -> None:
    inside = csv_root.resolve() / "cat" / "0.png"
    csv_path = write_csv(csv_root / "labels.csv", f"file,label\n{inside},cat\n")
    assert (
        "path escapes the image folder"
        in only_problem(scan_csv(csv_path, csv_root).problems).reason
    )


def test_csv_symlink_escaping_root_is_refused(csv_root: Path, tmp_path: Path) -> None:
    (csv_root / "cat" / "sneaky.png").symlink_to(tmp_path / "x.png")
    (csv_root / "linked").symlink_to(tmp_path)
    csv_path = write_csv(
        csv_root / "labels.csv", "file,label\ncat/sneaky.png,cat\nlinked/x.png,cat\ncat/0.png,cat\n"
    )
    result = scan_csv(csv_path, csv_root)
    assert [(p.line, p.path) for p in result.problems] == [
        (2, "cat/sneaky.png"),
        (3, "linked/x.png"),
    ]
    assert all("path escapes the image folder" in r for r in reasons(result))
    assert [s.line for s in result.samples] == [4]


def test_csv_symlink_inside_root_is_fine(csv_root: Path) -> None:
    (csv_root / "cat" / "alias.png").symlink_to(csv_root / "dog" / "0.png")
    csv_path = write_csv(csv_root / "labels.csv", "file,label\ncat/alias.png,cat\n")
    result = scan_csv(csv_path, csv_root)
    assert result.problems == [] and result.samples[0].path == csv_root.resolve() / "cat/alias.png"


def test_csv_empty_file_cell_and_empty_label(csv_root: Path) -> None:
    csv_path = write_csv(csv_root / "labels.csv", "file,label\n,cat\ncat/0.png,\ncat/1.png,cat\n")
    result = scan_csv(csv_path, csv_root)
    assert [p.line for p in result.problems] == [2, 3]
    assert "empty file path (column 'file')" in result.problems[0].reason
    assert "empty label (column 'label')" in result.problems[1].reason
    assert [s.line for s in result.samples] == [4]


def test_csv_bad_split_value(csv_root: Path) -> None:
    csv_path = write_csv(
        csv_root / "labels.csv", "file,label,split\ncat/0.png,cat,train\ncat/1.png,cat,validation\n"
    )
    result = scan_csv(csv_path, csv_root)
    problem = only_problem(result.problems)
    assert problem.line == 3 and problem.path == "cat/1.png"
    assert "split 'validation' is not one of train, val, test" in problem.reason
    assert len(result.samples) == 1


def test_csv_label_only_in_val_and_test(csv_root: Path) -> None:
    csv_path = write_csv(
        csv_root / "labels.csv",
        "file,label,split\ncat/0.png,cat,train\ncat/1.png,cat,val\n"
        "dog/0.png,dog,test\ndog/1.png,dog,val\n",
    )
    result = scan_csv(csv_path, csv_root)
    problem = only_problem(result.problems)
    assert problem.reason == (
        "label 'dog' appears only in val and test; add training images for it or remove it"
    )
    assert problem.line == 4  # its first row
    assert result.classes == ["cat"] and {s.label for s in result.samples} == {"cat"}


def test_csv_integer_labels_sort_numerically(csv_root: Path) -> None:
    rows = "".join(f"cat/{i}.png,{label}\n" for i, label in enumerate(["10", "2", " 1"]))
    csv_path = write_csv(csv_root / "labels.csv", "file,label\n" + rows)
    result = scan_csv(csv_path, csv_root)
    assert result.classes == ["1", "2", "10"]
    assert [s.label for s in result.samples] == ["10", "2", "1"]  # kept as stripped text


def test_csv_empty_raises(csv_root: Path) -> None:
    with pytest.raises(DataError, match="header but no rows"):
        scan_csv(write_csv(csv_root / "a.csv", "file,label\n"), csv_root)
    with pytest.raises(DataError, match="is empty"):
        scan_csv(write_csv(csv_root / "b.csv", ""), csv_root)


def test_csv_missing_csv_or_root_raises(csv_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_csv(tmp_path / "nope.csv", csv_root)
    csv_path = write_csv(csv_root / "labels.csv", "file,label\ncat/0.png,cat\n")
    with pytest.raises(DataError, match="data.root"):
        scan_csv(csv_path, tmp_path / "no_images")


def test_csv_not_utf8_raises(csv_root: Path) -> None:
    csv_path = csv_root / "labels.csv"
    csv_path.write_bytes("file,label\ncat/0.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        scan_csv(csv_path, csv_root)


def test_csv_all_problems_reported_together_in_order(csv_root: Path, tmp_path: Path) -> None:
    csv_path = write_csv(
        csv_root / "labels.csv",
        "file,label,split\n"
        "dog/9.png,dog,test\n"  # 2: missing (test)
        "cat/0.png,cat,train\n"  # 3: fine
        f"{tmp_path / 'x.png'},cat,val\n"  # 4: absolute (val)
        "cat/1.png,cat,nope\n"  # 5: bad split (no split)
        "cat/8.png,cat,train\n"  # 6: missing (train)
        "../../x.png,cat,train\n"  # 7: escapes (train)
        "cat/2.png,zebra,val\n",  # 8: label only in val
    )
    result = scan_csv(csv_path, csv_root)
    got = [(p.line, p.path) for p in result.problems]
    shown_csv = str(csv_path)
    assert got == [
        (7, "../../x.png"),  # train, by path
        (6, "cat/8.png"),
        (8, shown_csv),  # val, by path: .../data/images/labels.csv
        (4, str(tmp_path / "x.png")),
        (2, "dog/9.png"),  # test
        (5, "cat/1.png"),  # no split
    ]
    assert [s.line for s in result.samples] == [3]
    assert all(p.csv == shown_csv for p in result.problems)


# ----------------------------------------------------------------------------- decoding


def test_verify_truncated_png(folder: Path) -> None:
    bad = write_noise_png(folder / "cat" / "broken.png")
    truncate(bad)
    result = scan_folder(folder)
    assert result.problems == []  # scanning does not open images
    problems, metas = verify_images(result.samples)
    problem = only_problem(problems)
    assert problem.path.endswith("images/cat/broken.png")
    assert problem.reason.startswith("truncated or corrupt image: ")
    assert len(metas) == len(result.samples) - 1


def test_verify_truncated_jpeg(folder: Path) -> None:
    bad = folder / "cat" / "broken.jpg"
    Image.frombytes("RGB", (64, 64), random.Random(1).randbytes(64 * 64 * 3)).save(bad)
    truncate(bad)
    problems, _ = verify_images(scan_folder(folder).samples)
    assert only_problem(problems).reason.startswith("truncated or corrupt image: ")


def test_verify_zero_byte_file(folder: Path) -> None:
    (folder / "dog" / "empty.png").write_bytes(b"")
    problems, _ = verify_images(scan_folder(folder).samples)
    problem = only_problem(problems)
    assert problem.path.endswith("dog/empty.png")
    assert problem.reason.startswith("empty file (0 bytes)")


def test_verify_not_an_image(folder: Path) -> None:
    (folder / "dog" / "fake.png").write_text("<html>this was a download error page</html>")
    problems, _ = verify_images(scan_folder(folder).samples)
    assert only_problem(problems).reason.startswith("not a readable image: ")


@pytest.mark.parametrize("limit", [40, 16])  # 8x8=64 pixels: over the limit, and over twice it
def test_verify_decompression_bomb(
    folder: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    samples = [s for s in scan_folder(folder).samples if s.path.name == "a.png"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problems, metas = verify_images(samples)
    assert len(problems) == 2 and metas == {}
    assert all("decompression bomb" in r for r in reasons(problems))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_verify_many_bad_files_do_not_stop_the_scan(folder: Path) -> None:
    (folder / "cat" / "z0.png").write_bytes(b"")
    (folder / "dog" / "z1.png").write_text("nope")
    truncate(write_noise_png(folder / "dog" / "z2.png"))
    samples = scan_folder(folder).samples
    problems, metas = verify_images(samples, workers=3)
    assert [Path(p.path).name for p in problems] == ["z0.png", "z1.png", "z2.png"]
    assert len(metas) == 8 and all(isinstance(m, ImageMeta) for m in metas.values())


def test_verify_keeps_csv_line_and_names_the_csv(
    csv_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truncate(write_noise_png(csv_root / "dog" / "broken.png"))
    write_csv(
        csv_root.parent / "labels.csv",
        "file,label\ncat/0.png,cat\ndog/0.png,dog\ndog/broken.png,dog\n",
    )
    monkeypatch.chdir(csv_root.parent.parent)  # paths are shown relative to the working folder
    result = scan_csv(Path("data/labels.csv"), Path("data/images"))
    assert result.problems == []
    problems, metas = verify_images(result.samples)
    problem = only_problem(problems)
    assert (problem.path, problem.line, problem.csv) == (
        "data/images/dog/broken.png",
        4,
        "data/labels.csv",
    )
    assert str(problem).startswith(
        "data/images/dog/broken.png (data/labels.csv line 4): truncated or corrupt image: "
    )
    assert len(metas) == 2


def test_problem_str() -> None:
    assert str(Problem("images/cat/a.txt", "not an image file")) == (
        "images/cat/a.txt: not an image file"
    )
    assert str(Problem("cat/9.png", "file not found", 7, "labels.csv")) == (
        "cat/9.png (labels.csv line 7): file not found"
    )
    assert str(Problem("labels.csv", "label 'x' appears only in val", 3, "labels.csv")) == (
        "labels.csv (line 3): label 'x' appears only in val"
    )
    assert str(Problem("a.png", "bad", 3)) == "a.png (line 3): bad"


def test_verify_handles_duplicates_and_empty_input(folder: Path) -> None:
    assert verify_images([]) == ([], {})
    path = (folder / "cat" / "a.png").resolve()
    twice = [Sample(path, "cat", "train", 2), Sample(path, "cat", "val", 5)]
    problems, metas = verify_images(twice, workers=1)
    assert problems == [] and list(metas) == [path]


def test_scanning_writes_nothing(folder: Path, csv_root: Path) -> None:
    truncate(write_noise_png(folder / "cat" / "broken.png"))
    csv_path = write_csv(csv_root / "labels.csv", "file,label\ncat/0.png,cat\n../x.png,cat\n")
    before = snapshot(folder.parent)
    verify_images(scan_folder(folder).samples)
    verify_images(scan_csv(csv_path, csv_root).samples)
    assert snapshot(folder.parent) == before


# ----------------------------------------------------------------------------- real data


def test_real_cifar10_images(tmp_path: Path) -> None:
    if not CIFAR_TRAIN.is_dir():
        pytest.skip(f"{CIFAR_TRAIN} is absent: no real CIFAR-10 PNGs on this machine")
    root = tmp_path / "cifar"
    class_dirs = sorted(d for d in CIFAR_TRAIN.iterdir() if d.is_dir())
    for class_dir in class_dirs:
        (root / class_dir.name).mkdir(parents=True)
        for png in sorted(class_dir.glob("*.png"))[:5]:
            shutil.copyfile(png, root / class_dir.name / png.name)
    result = scan_folder(root)
    assert result.problems == []
    assert len(result.samples) == 50 and len(result.classes) == 10
    assert result.classes == sorted(d.name for d in class_dirs)
    problems, metas = verify_images(result.samples, workers=os.cpu_count())
    assert problems == []
    assert len(metas) == 50
    assert all(m == ImageMeta(32, 32, "RGB") for m in metas.values())
