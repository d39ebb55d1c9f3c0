"""Training a run from start to end: set up (engine/setup.py), the run folder, the loop, the test
evaluation and what the task makes after it. `kiln.train` is this `train`."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from kiln import checkpoint
from kiln import data as kdata
from kiln.config import RunConfig, build_config
from kiln.engine import distributed
from kiln.engine.callbacks import Callback, ProgressBar, TensorBoard
from kiln.engine.evaluate import evaluate_run
from kiln.engine.setup import Prepared, prepare, resolve
from kiln.engine.trainer import Trainer
from kiln.errors import ConfigError, RunError
from kiln.rundir import RunDir
from kiln.tasks import get_task

__all__ = ["Run", "train"]


@dataclass
class Run:
    """What `kiln.train` returns: where the run went, its epochs and its test evaluation."""

    path: Path
    config: RunConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None

    @property
    def monitor(self) -> str:
        """The value that picked the best checkpoint (val_acc, val_rmse, val_miou, ...)."""
        return self.config.train.early_stop.monitor

    @property
    def best_epoch(self) -> dict[str, Any] | None:
        """The row of metrics.csv best.pt was saved at (the first best monitored value)."""
        rows = [r for r in self.history if self.monitor in r]
        if not rows:
            return None
        pick = {"min": min, "max": max}[get_task(self.config.task).direction(self.monitor)]
        return pick(rows, key=lambda r: r[self.monitor])

    @property
    def best(self) -> float | None:
        """The best value of the monitored metric."""
        row = self.best_epoch
        return None if row is None else row[self.monitor]

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """The task's numbers: `test` (eval-test.json), `best` and `last` (epochs' rows)."""
        return {"test": self.test or {}, "best": self.best_epoch or {},
                "last": self.history[-1] if self.history else {}}  # fmt: skip

    @property
    def best_val_acc(self) -> float | None:
        """Classification: the best validation accuracy (None for tasks without accuracy)."""
        accs = [row["val_acc"] for row in self.history if "val_acc" in row]
        return max(accs) if accs else None

    @property
    def test_acc(self) -> float | None:
        """Classification: the test accuracy of the best checkpoint (None otherwise)."""
        return None if self.test is None else self.test.get("accuracy")


def train(
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    *,
    model: nn.Module | None = None,
    callbacks: list[Callback] | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Run:
    """Train from a YAML path, a dict or a RunConfig, with `key=value` overrides (dots as `__`).

    `model=` trains a module of your own instead of a registered one; `resume=RUN_DIR` continues
    an interrupted run from its last checkpoint.
    """
    overrides = {k.replace("__", "."): v for k, v in overrides.items()}
    if resume is not None:
        return _resume(Path(resume), model, callbacks, progress, overrides)
    cfg = config if isinstance(config, RunConfig) else build_config(config, overrides)
    if isinstance(config, RunConfig) and overrides:
        cfg = build_config(config.to_dict(), overrides)
    cfg = resolve(cfg, model)
    _train_needed(cfg, progress)
    ready = prepare(cfg, model)
    run = distributed.on_main(lambda: _create_run(ready, progress))
    return _fit(ready, run, callbacks, progress)


def _train_needed(cfg: RunConfig, progress: bool) -> None:
    """The runs the task needs first (a GAN's Fréchet classifier), each said in one line:
    trained once (an interrupted one resumed), then reused."""
    for need in get_task(cfg.task).needs(cfg):
        if progress and distributed.is_main():
            print(need.reusing if need.ready else need.training, flush=True)
        if need.ready:
            continue
        if distributed.under_torchrun():
            raise ConfigError(
                f"{need.path} is not trained yet: train this run once with train.devices=1 "
                "(it trains it first), then again with more processes"
            )
        if (need.path / "checkpoints" / "last.pt").is_file():
            train(resume=need.path, progress=False)
        else:
            if need.path.exists():
                RunDir(need.path).discard()  # a folder left by a failed start
            train(need.config, progress=False)


def _create_run(ready: Prepared, progress: bool) -> RunDir:
    """The run directory with config.yaml and info.json (on rank 0 alone)."""
    cfg, bundle = ready.cfg, ready.bundle
    run = RunDir.create(cfg)
    run.write_config(cfg)
    details = _describe(bundle, ready.model, ready.device)
    task = get_task(cfg.task)  # how its headline figure reads, for tools that read the run
    monitor = cfg.train.early_stop.monitor
    details["metric"] = {"name": task.metric, "test_key": task.test_key or task.metric,
                         "percent": task.percent, "monitor": monitor,
                         "mode": task.direction(monitor)}  # fmt: skip
    if ready.weights is not None:
        details["weights"] = ready.weights.to_dict()
        if progress:
            print(ready.weights, flush=True)
    run.write_info(bundle.info, cfg, details)
    if bundle.skipped:
        (run.path / "skipped.txt").write_text("\n".join(bundle.skipped) + "\n")
        n = len(bundle.skipped)
        print(f"Skipped {n} bad file(s) (data.on_bad=skip), listed in {run.path}/skipped.txt")
    return run


def _resume(
    path: Path, model: nn.Module | None, callbacks, progress: bool, overrides: dict[str, Any]
) -> Run:
    run = RunDir.open(path)
    cfg = run.load_config()
    changeable = ("train.epochs", "epochs", "train.devices", "train.dist_timeout")
    unsupported = [k for k in overrides if k not in changeable]
    if unsupported:
        raise ConfigError(
            f"--resume continues a run with its saved config; only train.epochs, train.devices "
            f"and train.dist_timeout can be changed (got {', '.join(unsupported)})"
        )
    planned = cfg.train.epochs
    state = checkpoint.load(run.checkpoint("last"))
    if overrides:
        cfg = build_config(cfg.to_dict(), overrides)
        if cfg.train.epochs <= state["epoch"]:
            raise ConfigError(
                f"train.epochs={cfg.train.epochs}: the run already finished {state['epoch']}"
            )
    elif state["epoch"] >= cfg.train.epochs:
        raise RunError(
            f"{run.path} already finished all {cfg.train.epochs} epochs; nothing to resume"
        )
    if cfg.model.name == "custom" and model is None:
        raise RunError(
            f"{run.path} was trained with a model passed in Python; resume it with "
            "kiln.train(resume=run_dir, model=YourModel())"
        )
    asked = overrides.get("train.devices", 1)  # else: as many processes as this one has
    ready = prepare(cfg, model, resume=True, devices=asked)
    if cfg.train.devices != distributed.world_size():  # resumed with more or fewer processes
        ready.cfg = cfg = build_config(cfg.to_dict(), {"train.devices": distributed.world_size()})
        overrides["train.devices"] = cfg.train.devices
    if overrides and distributed.is_main():
        run.write_config(cfg)
    reschedule = cfg.train.epochs != planned
    return _fit(ready, run, callbacks, progress, state, reschedule)


def _fit(
    ready: Prepared, run: RunDir, callbacks, progress, resume_state=None, reschedule=False
) -> Run:
    cfg, net, bundle, device = ready.cfg, ready.model, ready.bundle, ready.device
    started = time.perf_counter()
    main = distributed.is_main()  # rank 0 alone prints, runs the callbacks and tests
    progress = progress and main
    try:
        trainer = Trainer(cfg, net, bundle, run, device)  # checks the task, augment, balance
        purge = resume_state["epoch"] + 1 if resume_state else None
        trainer.callbacks += [ProgressBar()] if progress else []
        if main:
            board = TensorBoard(str(run.tb), purge, cfg.run.log_every)
            trainer.callbacks += [board, *(callbacks or [])]
        if progress:
            n = sum(p.numel() for p in net.parameters())
            verb = "Resuming" if resume_state else "Training"
            print(
                f"{verb} {cfg.model.name} ({n:,} parameters) on {cfg.data.name} "
                f"({len(bundle.train):,} train / {len(bundle.val):,} val / "
                f"{len(bundle.test):,} test) on {device} -> {run.path}",
                flush=True,
            )
            for note in bundle.notes:  # splits Kiln made or changed, said once
                print(note, flush=True)
            if not trainer.validates:
                print(
                    f"No validation split (data.val_fraction={cfg.data.val_fraction}): training "
                    "runs without validation, and best.pt is the last epoch's weights",
                    flush=True,
                )
            print(trainer.data_path, flush=True)
        with distributed.peer_failures(cfg.train.dist_timeout):
            history = trainer.fit(resume_state, reschedule)
    except BaseException:  # a mistake in the config, the model or the data, an interrupt, a bug
        if main and resume_state is None:
            run.discard()  # only while no checkpoint exists: no half-made run folder is left
        raise
    distributed.teardown()  # what follows is rank 0's alone
    if not main:
        return Run(path=run.path, config=cfg, history=history)
    best = trainer.early_stop
    net.load_state_dict(checkpoint.load(run.checkpoint("best"), map_location=device)["model"])
    test_loss, test_score = trainer.evaluate(trainer.loader(bundle.test))
    if progress:
        show, last = trainer.task.show, history[-1]
        if best.best is not None:
            picked = f"Best {best.monitor} {best.best:.4f} at epoch {best.best_epoch}"
        else:
            picked = f"Kept the last epoch ({last['epoch']}): no validation split"
        final = f"val {show(last[f'val_{trainer.metric}'])}" if trainer.validates else (
            f"train {show(last[f'train_{trainer.metric}'])}")  # fmt: skip
        print(
            f"Done in {time.perf_counter() - started:.1f}s. {picked}; final {final}; "
            f"test {show(test_score)} (loss {test_loss:.4f}, best checkpoint)",
            flush=True,
        )
    test = evaluate_run(run, "test", "best", model=net, bundle=bundle, device=device)
    for label, path in trainer.task.after_fit(run, net, bundle, device).items():
        if progress:  # the task's plots and report
            print(f"{label}: {path}", flush=True)
    if progress:
        print(f"Run directory: {run.path}", flush=True)
    return Run(path=run.path, config=cfg, history=history, test=test)


def _describe(bundle: kdata.DataBundle, net: nn.Module, device) -> dict[str, Any]:
    return {
        "samples": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)},
        "parameters": sum(p.numel() for p in net.parameters()),
        "device": str(device),
        "command": " ".join(sys.argv),
    }
