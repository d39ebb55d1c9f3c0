"""Where the real datasets live for tests: ../shared/datasets beside the checkout (read-only)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED = Path(
    os.environ.get(
        "KILN_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
)


def require(name: str) -> Path:
    """The shared folder for `name`, or skip the test saying why."""
    folder = SHARED / name
    if not folder.is_dir():
        pytest.skip(
            f"real dataset {name} not found at {folder} (../shared/datasets is absent here)"
        )
    return folder


def copy_mnist_like(name: str, root: Path) -> Path:
    """Copy the official .gz files under a writable root, as a user would have them."""
    raw = require(name) / "raw"
    target = root / name / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for gz in raw.glob("*.gz"):
        shutil.copy(gz, target / gz.name)
    return root
