"""A person's own images: an ImageFolder tree (`data.name=folder`) or a CSV (`data.name=csv`).

Every file is checked before training (see scan.py). With `data.on_bad=error` (the default) any
problem stops the run before it starts, listing them all; with `skip` the bad files are left out
and listed in the run directory. The run's channels and size default to what most images are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from kiln.data.files import FileSplit
from kiln.data.registry import RawDataset, register_dataset
from kiln.errors import ConfigError, DataError

SINGLE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@register_dataset(
    "folder", "your images in class folders: ROOT/<class>/*.png (or ROOT/train|val|test)"
)
def load_folder(cfg, root: Path) -> RawDataset:
    from kiln.data.scan import scan_folder

    if cfg.label_sep is not None:
        raise ConfigError(
            f"data.label_sep={cfg.label_sep!r} splits the label cells of a CSV; a folder gives "
            "each image one class. For several labels per image list them in a CSV: data.name=csv"
        )
    return from_scan(cfg, scan_folder(root))


@register_dataset(
    "csv", "your images listed in a CSV (data.csv: file,label[,split]) under data.root"
)
def load_csv(cfg, root: Path) -> RawDataset:
    if not cfg.csv:
        raise ConfigError("data.csv: data.name=csv needs the CSV file, e.g. data.csv=labels.csv")
    from kiln.data.scan import scan_csv

    targets = cfg.targets or None
    return from_scan(cfg, scan_csv(Path(cfg.csv), root, cfg.file_column, cfg.label_column,
                                   cfg.split_column, targets, cfg.label_sep))  # fmt: skip


def from_scan(cfg, scan) -> RawDataset:
    """Check every image, then build file splits in the run's channels and size."""
    from kiln.data.scan import verify_images

    problems, meta = verify_images(scan.samples, cfg.workers)
    problems = scan.problems + problems
    if problems and cfg.on_bad == "error":
        raise DataError(
            f"{len(problems)} problem(s) in the data, found before training:{listing(problems)}\n"
            "Fix or remove these files, or set data.on_bad=skip to train on the rest "
            "(the skipped files are listed in the run directory)."
        )
    good = [s for s in scan.samples if s.path in meta]
    train = [s for s in good if s.split in (None, "train")]
    if not train:
        raise DataError("no readable training images were found")
    channels = cfg.channels or infer_channels(meta[s.path].mode for s in train)
    height, width = cfg.size or infer_size((meta[s.path].height, meta[s.path].width) for s in train)
    index = {name: i for i, name in enumerate(scan.classes)}  # unused for numeric targets

    def split_of(samples: list) -> FileSplit | None:
        if not samples:
            return None
        if isinstance(samples[0].label, tuple):  # numeric targets (task=regress)
            labels = torch.tensor([s.label for s in samples], dtype=torch.float32)
        elif isinstance(samples[0].label, frozenset):  # label sets: multi-hot rows
            labels = torch.zeros(len(samples), len(index), dtype=torch.bool)
            for row, s in enumerate(samples):
                labels[row, [index[name] for name in s.label]] = True
        else:
            labels = torch.tensor([index[s.label] for s in samples], dtype=torch.long)
        return FileSplit([s.path for s in samples], labels, channels, height, width, cfg.resize)

    given = {name: [s for s in good if s.split == name] for name in ("val", "test")}
    train_split = split_of(train)
    test_split = split_of(given["test"])
    notes = []
    if test_split is None:  # no test split given: hold out a fixed, stratified part of train
        from kiln.data.splits import carve_test

        train_split, test_split, note = carve_test(train_split, cfg.test_fraction)
        notes += [note] if note else []
    return RawDataset(
        train=train_split,
        test=test_split,
        classes=list(scan.classes),
        val=split_of(given["val"]),
        skipped=[str(p) for p in problems],
        sizes=dict(Counter(f"{m.height}x{m.width}" for m in meta.values()).most_common()),
        modes=dict(Counter(m.mode for m in meta.values()).most_common()),
        notes=notes,
    )


def listing(problems: list, most: int = 200) -> str:
    """Problems as an indented list, one a line (the first `most`, then how many more)."""
    lines = "".join(f"\n  - {p}" for p in problems[:most])
    return lines + (f"\n  ... and {len(problems) - most} more" if len(problems) > most else "")


def infer_channels(modes: Iterable[str]) -> int:
    """1 when most training images (their PIL modes) are single-channel, else 3."""
    modes = list(modes)
    single = sum(mode in SINGLE_CHANNEL_MODES for mode in modes)
    return 1 if single * 2 > len(modes) else 3


def infer_size(sizes: Iterable[tuple[int, int]]) -> list[int]:
    """The most common (height, width) among the training images."""
    (height, width), _ = Counter(sizes).most_common(1)[0]
    return [height, width]
