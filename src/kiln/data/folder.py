"""A person's own images: an ImageFolder tree (`data.name=folder`) or a CSV (`data.name=csv`).

Every file is checked before training (see scan.py and verify.py). With `data.on_bad=error` (the
default) any problem stops the run before it starts, listing them all; with `skip` the bad files
are left out and listed in the run directory. The run's channels and size default to what most
images are. The checked, decoded images are kept for later runs (data.cache, see cache.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kiln.data.files import FileSplit
from kiln.data.registry import RawDataset, register_dataset
from kiln.errors import ConfigError, DataError


@register_dataset(
    "folder", "your images in class folders: ROOT/<class>/*.png (or ROOT/train|val|test)"
)
def load_folder(cfg, root: Path) -> RawDataset:
    from kiln.data.cache import Source

    if cfg.label_sep is not None:
        raise ConfigError(
            f"data.label_sep={cfg.label_sep!r} splits the label cells of a CSV; a folder gives "
            "each image one class. For several labels per image list them in a CSV: data.name=csv"
        )
    return from_source(cfg, Source(Path(root)))


@register_dataset(
    "csv", "your images listed in a CSV (data.csv: file,label[,split]) under data.root"
)
def load_csv(cfg, root: Path) -> RawDataset:
    if not cfg.csv:
        raise ConfigError("data.csv: data.name=csv needs the CSV file, e.g. data.csv=labels.csv")
    from kiln.data.cache import Source

    columns = (cfg.file_column, cfg.label_column, cfg.split_column)
    source = Source(Path(root), Path(cfg.csv), columns, tuple(cfg.targets), cfg.label_sep)
    return from_source(cfg, source)


def from_source(cfg, source) -> RawDataset:
    """Check every image (or open the decoded cache), then build the file splits in the run's
    channels and size."""
    from kiln.data.cache import load

    checked = load(cfg, source)
    problems = checked.problems
    if problems and cfg.on_bad == "error":
        raise DataError(
            f"{len(problems)} problem(s) in the data, found before training:{listing(problems)}\n"
            "Fix or remove these files, or set data.on_bad=skip to train on the rest "
            "(the skipped files are listed in the run directory)."
        )
    train = [i for i, s in enumerate(checked.samples) if s.split in (None, "train")]
    if not train:
        raise DataError("no readable training images were found")
    index = {name: i for i, name in enumerate(checked.classes)}  # unused for numeric targets

    def split_of(picked: list[int]) -> FileSplit | None:
        if not picked:
            return None
        samples = [checked.samples[i] for i in picked]
        if isinstance(samples[0].label, tuple):  # numeric targets (task=regress)
            labels = torch.tensor([s.label for s in samples], dtype=torch.float32)
        elif isinstance(samples[0].label, frozenset):  # label sets: multi-hot rows
            labels = torch.zeros(len(samples), len(index), dtype=torch.bool)
            for row, s in enumerate(samples):
                labels[row, [index[name] for name in s.label]] = True
        else:
            labels = torch.tensor([index[s.label] for s in samples], dtype=torch.long)
        rows = None if checked.rows is None else torch.tensor([checked.rows[i] for i in picked])
        paths = [s.path for s in samples]
        return FileSplit(paths, labels, *checked.shape, checked.images, rows, cfg.resize)

    given = {
        name: [i for i, s in enumerate(checked.samples) if s.split == name]
        for name in ("val", "test")
    }
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
        classes=list(checked.classes),
        val=split_of(given["val"]),
        skipped=[str(p) for p in problems],
        sizes=dict(checked.sizes),
        modes=dict(checked.modes),
        note=checked.note,
        notes=notes,
    )


def listing(problems: list, most: int = 200) -> str:
    """Problems as an indented list, one a line (the first `most`, then how many more)."""
    lines = "".join(f"\n  - {p}" for p in problems[:most])
    return lines + (f"\n  ... and {len(problems) - most} more" if len(problems) > most else "")
