"""The Python API: `kiln.train(...)` and `kiln.load(...)`. The CLI is a thin layer over these."""

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
from kiln.engine.callbacks import Callback, ProgressBar, TensorBoard, show
from kiln.engine.device import (
    check_precision,
    resolve_device,
    seed_everything,
    set_threads,
    settle,
)
from kiln.engine.trainer import Trainer
from kiln.errors import ConfigError, RunError
from kiln.evaluate import evaluate_run
from kiln.models import (
    build_model,
    check_options,
    get_model,
    import_user_modules,
    prepare_model,
)
from kiln.predict import Predictor
from kiln.rundir import RunDir
from kiln.tasks import get_task


@dataclass
class Run:
    """What `kiln.train` returns: where the run went and how it scored."""

    path: Path
    config: RunConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None

    @property
    def best_val_acc(self) -> float:
        return max(row["val_acc"] for row in self.history)

    @property
    def test_acc(self) -> float | None:
        return None if self.test is None else self.test["accuracy"]


def resolve(cfg: RunConfig) -> RunConfig:
    """Check model options and fill in their defaults, so config.yaml records every value."""
    import_user_modules(cfg.imports)
    options = cfg.model.kwargs()
    check_options(cfg.model.name, options)
    filled = {**get_model(cfg.model.name).options(), **options}
    tree = cfg.to_dict()
    tree["model"] = {
        "name": cfg.model.name,
        **cfg.model.common(),
        **{k: _plain(v) for k, v in filled.items()},
    }
    from kiln.data.transforms import resolve_augment

    tree["data"]["augment"] = resolve_augment(cfg.data.augment)
    return RunConfig.model_validate(with_monitor(tree, cfg))


def with_monitor(tree: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """train.early_stop.monitor=auto -> val_<the task's metric> (val_acc for classify)."""
    import_user_modules(cfg.imports)  # your own tasks register there
    task = get_task(cfg.task)
    if cfg.train.early_stop.monitor == "auto":
        tree["train"]["early_stop"]["monitor"] = f"val_{task.metric}"
    return tree


def describe_custom(cfg: RunConfig, model: nn.Module) -> RunConfig:
    """A model passed in Python is recorded by class name: it cannot be rebuilt from YAML."""
    tree = cfg.to_dict()
    cls = type(model)
    tree["model"] = {
        "name": "custom",
        **cfg.model.common(),
        "class": f"{cls.__module__}.{cls.__qualname__}",
    }
    return RunConfig.model_validate(with_monitor(tree, cfg))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


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
    cfg = resolve(cfg) if model is None else describe_custom(cfg, model)
    device = _join(cfg, resolve_device(cfg.train.device), cfg.train.devices)
    check_precision(cfg.train.precision, device)
    set_threads()
    bundle = kdata.build(cfg.data, device)  # every process builds the data, and takes a share
    seed_everything(cfg.train.seed + distributed.rank(), cfg.train.deterministic)
    if model is None:
        built = build_model(cfg.model, bundle.info)
    else:
        built = prepare_model(model, cfg.model)
    net = built.model
    tree = cfg.to_dict()
    tree["train"] = settle(tree["train"], device, net)  # auto -> what wins on this device
    tree["train"]["devices"] = distributed.world_size()  # the processes it trains with
    cfg = RunConfig.model_validate(tree)
    run = distributed.on_main(lambda: _create_run(cfg, bundle, built, device, progress))
    return _fit(cfg, net, bundle, run, device, callbacks, progress)


def _join(cfg: RunConfig, device, devices: int | str):
    """Started by torchrun: join the other processes (each gets its device). Asking for
    `devices` > 1 in one process is for the CLI, which starts them."""
    if not distributed.under_torchrun() and distributed.requested_devices(devices) > 1:
        raise ConfigError(
            f"train.devices={devices} trains in several processes: use `kiln train ... "
            f"train.devices={devices}`, or start your script with torchrun --nproc-per-node "
            f"{devices} (kiln.train then joins the processes)"
        )
    device = distributed.setup(device, cfg.train.dist_timeout)
    distributed.per_rank_batch(cfg.data.batch_size)  # before a run directory is created
    return device


def _create_run(cfg: RunConfig, bundle, built, device, progress: bool) -> RunDir:
    """The run directory with config.yaml and info.json (on rank 0 alone)."""
    net = built.model
    run = RunDir.create(cfg)
    run.write_config(cfg)
    details = _describe(bundle, net, device)
    if built.weights is not None:
        details["weights"] = built.weights.to_dict()
        if progress:
            print(built.weights, flush=True)
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
    device = _join(cfg, resolve_device(cfg.train.device), asked)
    if cfg.train.devices != distributed.world_size():  # resumed with more or fewer processes
        cfg = build_config(cfg.to_dict(), {"train.devices": distributed.world_size()})
        overrides["train.devices"] = cfg.train.devices
    set_threads()
    import_user_modules(cfg.imports)
    bundle = kdata.build(cfg.data, device)
    seed_everything(cfg.train.seed + distributed.rank(), cfg.train.deterministic)
    # The checkpoint holds the weights: pretrained ones are not fetched again.
    if model is None:
        net = build_model(cfg.model, bundle.info, load=False).model
    else:
        net = prepare_model(model, cfg.model, load=False).model
    if overrides and distributed.is_main():
        run.write_config(cfg)
    reschedule = cfg.train.epochs != planned
    return _fit(cfg, net, bundle, run, device, callbacks, progress, state, reschedule)


def _fit(
    cfg, net, bundle, run: RunDir, device, callbacks, progress, resume_state=None, reschedule=False
) -> Run:
    started = time.perf_counter()
    main = distributed.is_main()  # rank 0 alone prints, runs the callbacks and tests
    progress = progress and main
    try:
        trainer = Trainer(cfg, net, bundle, run, device)  # checks the task, augment, balance
        purge = resume_state["epoch"] + 1 if resume_state else None
        trainer.callbacks += [ProgressBar()] if progress else []
        if main:
            trainer.callbacks += [TensorBoard(str(run.tb), purge), *(callbacks or [])]
        if progress:
            n = sum(p.numel() for p in net.parameters())
            verb = "Resuming" if resume_state else "Training"
            print(
                f"{verb} {cfg.model.name} ({n:,} parameters) on {cfg.data.name} "
                f"({len(bundle.train):,} train / {len(bundle.val):,} val) on {device} -> "
                f"{run.path}",
                flush=True,
            )
            print(trainer.data_path, flush=True)
            if bundle.note:  # the decoded cache: opened, or written (and why)
                print(bundle.note, flush=True)
        with distributed.peer_failures(cfg.train.dist_timeout):
            history = trainer.fit(resume_state, reschedule)
    except ConfigError:  # a mistake found while setting up or in the first step (model vs task)
        if main and resume_state is None:
            run.discard()  # no checkpoint was written: leave no half-made run folder behind
        raise
    distributed.teardown()  # what follows is rank 0's alone
    if not main:
        return Run(path=run.path, config=cfg, history=history)
    best = trainer.early_stop
    net.load_state_dict(checkpoint.load(run.checkpoint("best"), map_location=device)["model"])
    test_loss, test_score = trainer.evaluate(trainer.loader(bundle.test))
    if progress:
        m = trainer.metric
        print(
            f"Done in {time.perf_counter() - started:.1f}s. Best {best.monitor} {best.best:.4f} at "
            f"epoch {best.best_epoch}; final val {show(m, history[-1][f'val_{m}'])}; "
            f"test {show(m, test_score)} (loss {test_loss:.4f}, best checkpoint)",
            flush=True,
        )
    test = evaluate_run(run, "test", "best", model=net, bundle=bundle, device=device)
    if hasattr(trainer.task, "after_fit"):  # the task's plots and report
        for label, path in trainer.task.after_fit(run, net, bundle, device).items():
            if progress:
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


def load(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "cpu",
    model: nn.Module | None = None,
) -> Predictor:
    """A Predictor for a finished (or interrupted) run: `.predict(images)`. Pass `model=` (a fresh
    instance of the same class) for runs trained with a model of your own."""
    return Predictor.from_run(run_dir, checkpoint, device, model)
