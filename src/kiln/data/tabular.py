"""Tables of numbers for task=regress: scikit-learn's bundled diabetes table, or a CSV of yours.

A row becomes a float "image" of shape (features, 1, 1), so tables take the same in-memory path,
per-feature normalization (in the features' own units: floats are not divided by 255) and MLP
as images do, without decoding anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kiln.data.registry import RawDataset, Split, register_dataset
from kiln.errors import ConfigError, DataError


def split_rows(x: torch.Tensor, y: torch.Tensor, fraction: float) -> tuple[Split, Split]:
    """The fixed random (train, test) split every numeric-target set gets; x becomes
    (N, features, 1, 1)."""
    from kiln.data import stratified_split  # float targets: a plain random split

    return stratified_split(Split(x.view(len(x), -1, 1, 1), y), fraction)


@register_dataset(
    "diabetes",
    "scikit-learn's bundled diabetes table: 10 measurements, disease progression a year later "
    "(442 patients; task=regress)",
)
def load_diabetes(cfg, root: Path) -> RawDataset:
    from sklearn.datasets import load_diabetes as sklearn_diabetes

    table = sklearn_diabetes(scaled=False)  # the original units: age in years, bmi, ...
    x = torch.tensor(table.data, dtype=torch.float32)
    y = torch.tensor(table.target, dtype=torch.float32).unsqueeze(1)
    train, test = split_rows(x, y, cfg.test_fraction)
    features = list(table.feature_names)  # age, sex, bmi, bp, s1 ... s6
    return RawDataset(train=train, test=test, classes=["progression"], features=features)


@register_dataset(
    "table",
    "your own table: a CSV (data.csv) of numeric feature columns (data.features, default all "
    "others) and target columns (data.targets); task=regress",
)
def load_table(cfg, root: Path) -> RawDataset:
    from kiln.data.scan import _read_csv

    if not cfg.csv or not cfg.targets:
        raise ConfigError(
            "data.name=table needs data.csv=FILE and data.targets=[COLUMN, ...] (the numbers to "
            "predict); data.features lists the inputs (default: every other column)"
        )
    path = Path(cfg.csv)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist (data.csv)")
    header, rows = _read_csv(path)
    split_column = cfg.split_column if cfg.split_column in header else None
    features = cfg.features or [c for c in header if c not in cfg.targets and c != split_column]
    for column in [*features, *cfg.targets]:
        if column not in header:
            raise DataError(
                f"{path} has no '{column}' column (columns found: {', '.join(header)}); "
                "check data.features and data.targets"
            )
    if not features:
        raise DataError(f"{path}: no feature columns left besides the targets")
    values, splits, problems = [], [], []
    for line, row in rows:
        try:
            values.append([float(row[c]) for c in [*features, *cfg.targets]])
        except (TypeError, ValueError):
            bad = next(c for c in [*features, *cfg.targets] if not _is_number(row.get(c)))
            problems.append(f"{path} line {line}: column '{bad}' is '{row.get(bad)}', not a number")
            continue
        splits.append((row.get(split_column) or "train").strip().lower() if split_column else "")
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} row(s) are not numbers:\n{listing}{more}")
    if not values:
        raise DataError(f"{path} has a header but no rows")
    data = torch.tensor(values, dtype=torch.float32)
    x, y = data[:, : len(features)], data[:, len(features) :]
    if split_column and "test" in splits:
        mask = torch.tensor([s == "test" for s in splits])
        train = Split(x[~mask].view(-1, len(features), 1, 1), y[~mask])
        test = Split(x[mask].view(-1, len(features), 1, 1), y[mask])
    else:
        train, test = split_rows(x, y, cfg.test_fraction)
    return RawDataset(train=train, test=test, classes=list(cfg.targets), features=features)


def _is_number(cell) -> bool:
    try:
        float(cell)
    except (TypeError, ValueError):
        return False
    return True


def read_feature_rows(path: Path, features: list[str]) -> tuple[torch.Tensor, list[int]]:
    """A CSV's feature columns as floats (N, features), with each row's line number: the input
    of `kiln predict` on a table run. Other columns (targets, ids) are ignored."""
    from kiln.data.scan import _read_csv

    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    header, rows = _read_csv(path)
    missing = [c for c in features if c not in header]
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {', '.join(missing)} the run was trained on "
            f"(it needs {', '.join(features)}; found {', '.join(header)})"
        )
    values, lines = [], []
    for line, row in rows:
        bad = next((c for c in features if not _is_number(row.get(c))), None)
        if bad is not None:
            raise DataError(f"{path} line {line}: column '{bad}' is '{row.get(bad)}', not a number")
        values.append([float(row[c]) for c in features])
        lines.append(line)
    if not values:
        raise DataError(f"{path} has a header but no rows")
    return torch.tensor(values, dtype=torch.float32), lines
