"""Find a person's own images and every problem with them before training starts.

A bad file found in epoch 3 wastes the first two epochs and says nothing about the other bad files,
so everything is checked up front and every problem is reported at once: `scan_folder` or
`scan_csv` lists the samples (cheap, no image is opened), then `kiln.data.verify` decodes each one.
Nothing here writes to disk.
"""

from __future__ import annotations

import csv
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kiln.data.images import IMAGE_SUFFIXES
from kiln.errors import DataError

SPLITS = ("train", "val", "test")
# Problems and samples are ordered by split: anything not tied to a split first, None last.
_SPLIT_RANK: dict[str | None, int] = {"train": 1, "val": 2, "test": 3, None: 4}
_NO_SPLIT_RANK = 0

FOLDER_LAYOUT = (
    "expected <root>/<class>/<image> (one folder per class), or <root>/train/<class>/<image> "
    "with optional <root>/val/ and <root>/test/ alongside"
)


@dataclass
class Sample:
    """One image to train on. `path` is absolute: the resolved root plus the path as listed."""

    path: Path
    # a class name, the numeric targets (task=regress), or a set of names (data.label_sep)
    label: str | tuple[float, ...] | frozenset[str]
    split: str | None
    line: int | None = None
    csv: Path | None = None  # the CSV `line` refers to, so later problems can name it


@dataclass
class Problem:
    """Something wrong with the data, phrased so the user can find and fix it."""

    path: str
    reason: str
    line: int | None = None
    csv: str | None = None  # the CSV `line` refers to, as the user would recognise it

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.reason}"
        named = self.csv and self.csv != self.path
        where = f"{self.csv} line {self.line}" if named else f"line {self.line}"
        return f"{self.path} ({where}): {self.reason}"


@dataclass
class ImageMeta:
    """What a decoded image looks like, to pick the channels and size to train at."""

    width: int
    height: int
    mode: str


@dataclass
class ScanResult:
    samples: list[Sample]
    problems: list[Problem]
    classes: list[str]


# ----------------------------------------------------------------------------- helpers


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except (ValueError, OSError):  # outside the working folder, or it was deleted
        return str(path)


def _ignored(name: str) -> bool:
    """Files that operating systems scatter around (.DS_Store, ._x, Thumbs.db): never data."""
    return name.startswith(".") or name.lower() == "thumbs.db"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def sort_classes(labels: Iterable[str]) -> list[str]:
    """Sorted class names; numerically when every one is an integer, so "2" comes before "10"."""
    unique = set(labels)
    if unique and all(re.fullmatch(r"-?[0-9]+", label) for label in unique):
        return sorted(unique, key=lambda label: (int(label), label))
    return sorted(unique)


class _Problems:
    """Collects problems with a sort key, so they come out by split, then path, then line."""

    def __init__(self) -> None:
        self._items: list[tuple[int, str, int, Problem]] = []

    def add(self, problem: Problem, rank: int = _NO_SPLIT_RANK) -> None:
        self._items.append((rank, problem.path, problem.line or 0, problem))

    def sorted(self) -> list[Problem]:
        return [p for *_, p in sorted(self._items, key=lambda item: item[:3])]


def names(label: str | frozenset[str]) -> frozenset[str]:
    """The class names of a sample: its one class, or its set of labels (data.label_sep)."""
    return label if isinstance(label, frozenset) else frozenset((label,))


def _only_in_eval(samples: list[Sample]) -> tuple[list[Sample], dict[str, list[str]]]:
    """Split off the samples with a class that has val/test samples but no training samples: a
    model cannot learn it. Samples without a split count as trainable (they are carved up later).
    Returns the kept samples and, per dropped label, the splits it appears in (in order)."""
    trainable = {n for s in samples if s.split in ("train", None) for n in names(s.label)}
    dropped: dict[str, list[str]] = {}
    for s in samples:
        for name in sorted(names(s.label) - trainable):
            splits = dropped.setdefault(name, [])
            if s.split not in splits:
                splits.append(s.split)
    for splits in dropped.values():
        splits.sort(key=_SPLIT_RANK.__getitem__)
    return [s for s in samples if names(s.label) <= trainable], dropped


def _only_in_reason(label: str, splits: list[str]) -> str:
    return (
        f"label '{label}' appears only in {' and '.join(splits)}; "
        "add training images for it or remove it"
    )


# ----------------------------------------------------------------------------- folders


def scan_folder(root: Path) -> ScanResult:
    """List the images of an ImageFolder tree: root/<class>/<image>, or root/{train,val,test}/
    <class>/<image> when root/train exists. Images may sit in subfolders of a class folder.

    Symlinks are followed (a folder of links is a common way to build a dataset without copying).
    Only the DirEntry types are read, so this costs no more than listing the folders."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {what} (data.root); {FOLDER_LAYOUT}")
    base = root.resolve()
    problems = _Problems()
    samples: list[Sample] = []

    splits: list[str | None]
    if (base / "train").is_dir():
        splits = [name for name in SPLITS if (base / name).is_dir()]
        for entry in _entries(base):
            if entry.name in SPLITS and entry.is_dir():
                continue
            path = _shown(base / entry.name)
            if not entry.is_dir() and not _is_image(entry.name):
                continue  # README, LICENSE, a manifest: documentation beside the splits
            if entry.is_dir():
                reason = (
                    f"unexpected folder '{entry.name}' next to train/; split folders must be "
                    "named train, val or test (rename it, or move it out of the image folder)"
                )
            else:
                reason = f"file outside the split folders; images belong in {root}/train/<class>/"
            problems.add(Problem(path, reason))
    else:
        splits = [None]

    for split in splits:
        folder = base / split if split else base
        rank = _SPLIT_RANK[split]
        class_names: list[str] = []
        loose = 0
        for entry in _entries(folder):
            if entry.is_dir():
                class_names.append(entry.name)
                continue
            if split is None and not _is_image(entry.name):
                continue  # README, LICENSE, a manifest: documentation beside the class folders
            loose += 1
            if split is None:
                reason = f"file directly in the image folder; move it into {root}/<class>/"
            else:
                reason = f"file outside the class folders; move it into {root}/{split}/<class>/"
            problems.add(Problem(_shown(folder / entry.name), reason), rank)
        if not class_names:
            where = root / split if split else root
            if split in (None, "train"):
                found = f" (it holds {loose} loose file(s))" if loose else ""
                raise DataError(
                    f"image folder {where} holds no class folders{found}; {FOLDER_LAYOUT}"
                )
            problems.add(
                Problem(_shown(folder), f"no class folders in {split}/; add them or remove it"),
                rank,
            )
        for name in class_names:
            images = _walk_class(folder / name, problems, rank)
            if not images:
                problems.add(
                    Problem(_shown(folder / name), "empty class folder; add images or remove it"),
                    rank,
                )
            samples += [Sample(path, name, split) for path in images]

    samples, dropped = _only_in_eval(samples)
    for label, in_splits in dropped.items():
        path = _shown(base / in_splits[0] / label)
        problems.add(Problem(path, _only_in_reason(label, in_splits)), _SPLIT_RANK[in_splits[0]])
    samples.sort(key=lambda s: (_SPLIT_RANK[s.split], str(s.path)))
    return ScanResult(samples, problems.sorted(), sort_classes(s.label for s in samples))


def _entries(folder: Path) -> list[os.DirEntry]:
    """A folder's entries by name, without the files operating systems leave behind."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not _ignored(e.name)), key=lambda e: e.name)


def _walk_class(class_dir: Path, problems: _Problems, rank: int) -> list[Path]:
    """Every image file under a class folder, at any depth; anything else there is reported."""
    images: list[Path] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of folders walked: symlink loops end
    pending = [class_dir]
    while pending:
        folder = pending.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = _entries(folder)
        except OSError as exc:
            problems.add(Problem(_shown(folder), f"cannot list folder: {exc.strerror}"), rank)
            continue
        for entry in entries:
            path = folder / entry.name
            if entry.is_dir():
                pending.append(path)
            elif entry.is_file():
                if _is_image(entry.name):
                    images.append(path)
                else:
                    kind = Path(entry.name).suffix or "no suffix"
                    reason = (
                        f"not an image file ({kind}); remove it or move it out of the class folder"
                    )
                    problems.add(Problem(_shown(path), reason), rank)
            elif entry.is_symlink():
                problems.add(Problem(_shown(path), "broken symlink; remove it or fix it"), rank)
            else:
                problems.add(Problem(_shown(path), "not a regular file; remove it"), rank)
    return images


# ----------------------------------------------------------------------------- CSV


def scan_csv(
    csv_path: Path,
    root: Path,
    file_column: str | int = "file",
    label_column: str | int = "label",
    split_column: str = "split",
    targets: list[str] | None = None,
    label_sep: str | None = None,
) -> ScanResult:
    """List the images named by a CSV: one row per image, a path relative to `root`, a label and
    optionally a split (train/val/test; empty means none). Samples keep the CSV's row order.

    Paths that leave `root` (absolute, "..", or through a symlink) are refused without being
    opened: a CSV from somewhere else must not make training read arbitrary files.

    With `targets` (task=regress) each row's label is the tuple of those numeric columns, and the
    "classes" are the target names. With `label_sep` each label cell is a set of names split on
    it (`cat;outdoor`), and may be empty: an image with none of the labels."""
    csv_path, root = Path(csv_path), Path(root)
    if not csv_path.is_file():
        what = "is a folder, not a file" if csv_path.is_dir() else "does not exist"
        raise DataError(f"CSV file {csv_path} {what} (data.csv)")
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist; set data.root to the folder that the paths "
            f"in {csv_path} are relative to"
        )
    header, rows = _read_csv(csv_path)
    file_column = column_name(file_column, header, csv_path, "data.file_column")
    if not targets:
        label_column = column_name(label_column, header, csv_path, "data.label_column")
    wanted = [(file_column, "data.file_column", "image paths")]
    if targets:
        wanted += [(t, "data.targets", "numbers to predict") for t in targets]
    else:
        wanted.append((label_column, "data.label_column", "labels"))
    for column, key, what in wanted:
        if column not in header:
            raise DataError(
                f"{csv_path} has no '{column}' column (columns found: {', '.join(header)}); "
                f"set {key} to the column that holds the {what}"
            )
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows; add one row per image")

    base = root.resolve()
    shown_csv = _shown(csv_path)
    csv_absolute = csv_path.absolute()
    has_split = split_column in header
    problems = _Problems()
    samples: list[Sample] = []
    for line, row in rows:
        cell = (row.get(file_column) or "").strip()
        label = (row.get(label_column) or "").strip()
        raw_split = (row.get(split_column) or "").strip() if has_split else ""
        concerned = cell or shown_csv
        found: list[Problem] = []

        split = raw_split.lower() or None
        if split is not None and split not in SPLITS:
            reason = f"split '{raw_split}' is not one of train, val, test (or empty for none)"
            found.append(Problem(concerned, reason, line, shown_csv))
            split = None
        if targets:
            label = _numbers(row, targets)
            if isinstance(label, str):
                found.append(Problem(concerned, label, line, shown_csv))
        elif label_sep is not None:
            label = frozenset(n.strip() for n in label.split(label_sep) if n.strip())
        elif not label:
            reason = f"empty label (column '{label_column}'); give every image a class"
            found.append(Problem(concerned, reason, line, shown_csv))
        path = _inside_root(cell, base, root, file_column)
        if isinstance(path, str):
            found.append(Problem(concerned, path, line, shown_csv))

        if found:
            for problem in found:
                problems.add(problem, _SPLIT_RANK[split])
        else:
            samples.append(Sample(path, label, split, line, csv_absolute))

    if targets:  # numbers, not classes: nothing to check across splits
        return ScanResult(samples, problems.sorted(), list(targets))
    first_line: dict[str, int | None] = {}
    for s in samples:
        for name in names(s.label):
            first_line.setdefault(name, s.line)
    samples, dropped = _only_in_eval(samples)
    for label, in_splits in dropped.items():
        reason = _only_in_reason(label, in_splits)
        problem = Problem(shown_csv, reason, first_line[label], shown_csv)
        problems.add(problem, _SPLIT_RANK[in_splits[0]])
    classes = sort_classes(n for s in samples for n in names(s.label))
    return ScanResult(samples, problems.sorted(), classes)


def column_name(column: str | int, header: list[str], csv_path: Path, key: str) -> str:
    """A column given by position (0 first, as pandas' iloc) -> its name in the header."""
    if isinstance(column, str):
        return column
    if column >= len(header):
        raise DataError(
            f"{key}={column}: {csv_path} has {len(header)} columns ({', '.join(header)}), "
            f"numbered 0 to {len(header) - 1}"
        )
    return header[column]


def _numbers(row: dict[str, str | None], columns: list[str]) -> tuple[float, ...] | str:
    """The row's targets as floats, or why not (an empty or non-numeric cell)."""
    values = []
    for column in columns:
        cell = (row.get(column) or "").strip()
        try:
            value = float(cell)
        except ValueError:
            return f"target '{column}' is '{cell}', not a number"
        if value != value or value in (float("inf"), float("-inf")):
            return f"target '{column}' is '{cell}'; give a finite number"
        values.append(value)
    return tuple(values)


def _read_csv(csv_path: Path) -> tuple[list[str], list[tuple[int, dict[str, str | None]]]]:
    """The header (names stripped of spaces) and (line number, row) pairs. utf-8-sig swallows the
    byte-order mark that Excel writes, which would otherwise become part of the first name."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            try:
                if reader.fieldnames is None:
                    raise DataError(
                        f"{csv_path} is empty; expected a header row (e.g. file,label,split) "
                        "and then one row per image"
                    )
                header = [name.strip() for name in reader.fieldnames]
                reader.fieldnames = header
                # line_num is the CSV line a row ends on; the header is line 1.
                rows = [(reader.line_num, row) for row in reader]
            except csv.Error as exc:
                raise DataError(
                    f"{csv_path} line {reader.line_num}: not valid CSV: {exc}"
                ) from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{csv_path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read CSV file {csv_path}: {exc.strerror or exc}") from None
    return header, rows


def _inside_root(cell: str, base: Path, root: Path, file_column: str) -> Path | str:
    """The sample path for a CSV cell, or why it is refused. A path that leaves the image folder
    is refused before the file system is asked anything about it, except for resolving symlinks
    inside the folder (which is how a link pointing outside is caught)."""
    if not cell:
        return f"empty file path (column '{file_column}'); give every row an image path"
    escapes = f"path escapes the image folder {root}; write paths relative to it"
    if Path(cell).is_absolute():
        return f"{escapes} (absolute paths are refused)"
    normal = os.path.normpath(cell)
    if normal == ".." or normal.startswith("../"):
        return escapes
    path = base / normal
    if not Path(os.path.realpath(path)).is_relative_to(base):
        return f"{escapes} (it is a symlink to a file outside)"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"file not found: {_shown(root / normal)}"
    except OSError as exc:
        return f"cannot access file: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return "not a file (a folder?); name one image per row"
    return path
