"""Where a run's epochs are logged besides metrics.csv, as `run.loggers` lists them:
TensorBoard (kiln/engine/callbacks.py), MLflow (mlflow_logger.py), Weights & Biases
(wandb_logger.py).

Each tracker is a Callback: the config as parameters when training starts, every epoch's values,
then, at the run's end, the test metrics, the plots and report as files and the model. A tracker
run's id is kept in RUN/trackers.json, so that `kiln train --resume` continues the same one.
"""

from __future__ import annotations

import json
from typing import Any

from kiln.config import RunConfig
from kiln.engine.callbacks import Callback
from kiln.errors import require
from kiln.io import write_text_atomic
from kiln.rundir import RunDir

TRACKERS_FILE = "trackers.json"


def wanted(cfg: RunConfig) -> list[str]:
    """run.loggers as names; auto: tensorboard when it is installed (csv: metrics.csv, which
    every run writes)."""
    if cfg.run.loggers != "auto":
        return list(dict.fromkeys(cfg.run.loggers))
    import importlib.util

    return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []


MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_loggers(cfg: RunConfig) -> None:
    """Every tracker run.loggers asks for is installed (found, not imported: that is slow)."""
    import importlib.util

    for name in wanted(cfg):
        module = MODULES.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            require(module, "trackers", f"run.loggers={name}")  # says which extra brings it


def build_loggers(cfg: RunConfig, run: RunDir, purge_step: int | None = None) -> list[Callback]:
    """The trackers run.loggers asks for; a missing library is one error naming its extra."""
    found: list[Callback] = []
    for name in wanted(cfg):
        needed = f"run.loggers={name}"
        if name == "tensorboard":
            require("tensorboard", "trackers", needed)
            from kiln.engine.callbacks import TensorBoard

            found.append(TensorBoard(str(run.tb), purge_step, cfg.run.log_every))
        elif name == "mlflow":
            require("mlflow", "trackers", needed)
            from kiln.engine.loggers.mlflow_logger import MLflowLogger

            found.append(MLflowLogger(cfg, run))
        elif name == "wandb":
            require("wandb", "trackers", needed)
            from kiln.engine.loggers.wandb_logger import WandbLogger

            found.append(WandbLogger(cfg, run))
    return found


def read_ids(run: RunDir) -> dict[str, Any]:
    """RUN/trackers.json: each tracker's run id (empty before the first)."""
    try:
        data = json.loads((run.path / TRACKERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_id(run: RunDir, tracker: str, entry: dict[str, Any]) -> None:
    ids = read_ids(run)
    ids[tracker] = entry
    write_text_atomic(run.path / TRACKERS_FILE, json.dumps(ids, indent=2) + "\n")


def numbers(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The plain numbers of a row (an epoch, an evaluation), under `prefix`."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
    }


def run_files(run: RunDir) -> list[tuple[str, str]]:
    """(file, folder in the tracker) for what a run ends with: plots, the report, the table of
    epochs, the config and the test evaluation."""
    files = [(str(p), "plots") for p in sorted((run.path / "plots").glob("*.png"))]
    for name in ("report.html", "metrics.csv", "config.yaml", "eval-test.json"):
        if (run.path / name).is_file():
            files.append((str(run.path / name), ""))
    return files
