"""The run directory: the one artifact everything after training reads.

runs/<name>/config.yaml  info.json  metrics.csv  checkpoints/{last,best}.pt  tb/  eval-*.json
"""

from __future__ import annotations

import csv
import io
import json
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.config import RunConfig, build_config
from kiln.data.registry import DataInfo
from kiln.errors import ConfigError, KilnError, RunError
from kiln.io import write_text_atomic

if TYPE_CHECKING:
    import torch


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # Paths -----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def info_path(self) -> Path:
        return self.path / "info.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    def checkpoint(self, which: str = "last") -> Path:
        return self.checkpoints / f"{which}.pt"

    # Creating ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig) -> RunDir:
        """A fresh folder: runs/NAME, or runs/NAME-2, -3, ... when the name is taken."""
        base = Path(cfg.run.dir).expanduser()
        name = cfg.run.name or f"{cfg.data.name}-{cfg.model.name}"
        if "/" in name or name in (".", ".."):
            raise ConfigError(f"run.name '{name}' must be a plain folder name, without '/'")
        base.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = base / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise RunError(f"too many runs named '{name}' in {base}; choose another run.name")

    def discard(self) -> None:
        """Remove a run folder that training never started in (a mistake in the config found
        while setting up): a user would otherwise find a run with a config and no checkpoint."""
        if not any(self.path.glob("checkpoints/*.pt")):
            shutil.rmtree(self.path, ignore_errors=True)

    def write_config(self, cfg: RunConfig) -> None:
        write_text_atomic(self.config_path, cfg.to_yaml())

    def write_info(self, info: DataInfo, cfg: RunConfig, extra: dict[str, Any]) -> None:
        payload = {
            **info.to_dict(),
            "input_shape": list(info.input_shape),
            "seed": cfg.train.seed,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "git_commit": git_commit(),
            **extra,
        }
        write_text_atomic(self.info_path, json.dumps(payload, indent=2) + "\n")

    def update_info(self, **fields: Any) -> None:
        """Add or replace fields of info.json: what a task settles after training (the decision
        thresholds of task=binary|multilabel), read back by `data_info` like the rest."""
        payload = {**self.load_info(), **fields}
        write_text_atomic(self.info_path, json.dumps(payload, indent=2) + "\n")

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        if not history:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(self.metrics_path, buf.getvalue())

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.path / name
        write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
        return path

    # Reading ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not run.path.is_dir():
            raise RunError(f"run directory {run.path} does not exist")
        missing = [p.name for p in (run.config_path, run.info_path) if not p.is_file()]
        if missing:
            raise RunError(
                f"{run.path} is not a Kiln run directory (missing {', '.join(missing)}); "
                "pass a folder made by `kiln train`, e.g. runs/digits-mlp"
            )
        return run

    def load_config(self) -> RunConfig:
        try:
            return build_config(self.config_path)
        except ConfigError as exc:
            raise RunError(f"{self.config_path} is damaged: {exc}") from None

    def load_info(self) -> dict[str, Any]:
        try:
            return json.loads(self.info_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{self.info_path} is damaged ({exc})") from None

    def monitored(self) -> tuple[str, str]:
        """(the value that picked best.pt, 'min' or 'max'), as info.json records it."""
        monitor = self.load_config().train.early_stop.monitor
        mode = self.load_info().get("metric", {}).get("mode")
        return monitor, mode or ("min" if monitor.endswith("loss") else "max")

    def resume_config(
        self, state: dict[str, Any], overrides: dict[str, Any]
    ) -> tuple[RunConfig, bool]:
        """The config a resumed run goes on with, and whether its schedule must be rebuilt.

        `epochs=N` (an extension) is recorded in the checkpoints the resumed run writes, and in
        config.yaml only after the first of them (see `record_config`): a run killed before that
        resumes as it was, never with a config.yaml that its last.pt does not match. The epochs
        that last.pt's schedule was built for win over config.yaml's."""
        changeable = ("train.epochs", "epochs", "train.devices", "train.dist_timeout", "train.time")
        unsupported = [k for k in overrides if k not in changeable]
        if unsupported:
            raise ConfigError(
                f"--resume continues a run with its saved config; only train.epochs, "
                f"train.time, train.devices and train.dist_timeout can be changed (got "
                f"{', '.join(unsupported)})"
            )
        cfg = self.load_config()
        planned = state.get("planned_epochs", cfg.train.epochs)
        cfg = build_config(cfg.to_dict(), {"train.epochs": planned, **overrides})
        if cfg.train.time is not None and (state.get("budget") or "train.time" in overrides):
            return cfg, False  # the time budget plans the epochs (kiln.engine.budget)
        if overrides and cfg.train.epochs <= state["epoch"]:
            raise ConfigError(
                f"train.epochs={cfg.train.epochs}: the run already finished {state['epoch']}"
            )
        if cfg.train.epochs <= state["epoch"]:
            raise RunError(
                f"{self.path} already finished all {cfg.train.epochs} epochs; nothing to resume "
                "(add epochs=N to train longer)"
            )
        return cfg, cfg.train.epochs != planned

    def data_info(self) -> DataInfo:
        try:
            return DataInfo.from_dict(self.load_info())
        except (KeyError, TypeError) as exc:
            raise RunError(f"{self.info_path} lacks the dataset description ({exc})") from None

    def __str__(self) -> str:
        return str(self.path)


def load_model(
    run: RunDir,
    which: str = "best",
    device: str | torch.device = "cpu",
    model: torch.nn.Module | None = None,
):
    """Rebuild the model from the saved config and load its weights (never unpickled code)."""
    from kiln import checkpoint
    from kiln.models import build_model, import_run_modules

    if which not in ("best", "last"):
        raise KilnError(f"--checkpoint must be 'best' or 'last', got '{which}'")
    cfg = run.load_config()
    if model is None:
        if cfg.model.name == "custom":
            raise RunError(
                f"{run.path} was trained with a model passed in Python "
                f"({cfg.model.kwargs().get('class')}); load it with "
                "kiln.load(run_dir, model=YourModel())"
            )
        import_run_modules(cfg.imports, run.config_path)
        model = build_model(cfg.model, run.data_info(), load=False).model
    state = checkpoint.load(run.checkpoint(which), map_location=device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise RunError(
            f"{run.checkpoint(which)} does not match the run's model ({first})"
        ) from None
    return model.to(device).eval(), state.get("epoch")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from kiln._version import __version__

    try:
        torchvision = version("torchvision")  # importing torchvision costs seconds
    except PackageNotFoundError:
        torchvision = "not installed"
    return {
        "kiln": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision,
        "python": platform.python_version(),
    }


def git_commit() -> str | None:
    """The commit of the folder training was started from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
