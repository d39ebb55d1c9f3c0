"""Training a run from start to end: set up (engine/setup.py), the run folder, the loop, the test
evaluation and what the task makes after it. `kiln.train` is this `train`."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

from kiln import checkpoint
from kiln import data as kdata
from kiln import logs as kiln_logs
from kiln.config import RunConfig, build_config
from kiln.engine import budget, distributed, phases
from kiln.engine.budget import TimeBudget, check_resume
from kiln.engine.callbacks import Callback, RecordConfig
from kiln.engine.evaluate import evaluate_run
from kiln.engine.loggers import build_loggers
from kiln.engine.notebook import progress_callback
from kiln.engine.results import Run
from kiln.engine.setup import Prepared, prepare, resolve
from kiln.engine.trainer import Trainer
from kiln.errors import ConfigError, RunError
from kiln.models import trust_imports as trust
from kiln.rundir import RunDir
from kiln.secrets import mask
from kiln.tasks import get_task

__all__ = ["Run", "train", "train_prepared"]

log = logging.getLogger("kiln.engine")


def train(
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    *,
    model: nn.Module | None = None,
    callbacks: list[Callback] | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    trust_imports: bool = False,
    **overrides: Any,
) -> Run:
    """Train from a YAML path, a dict or a RunConfig, with `key=value` overrides (dots as `__`).

    `model=` trains a module of your own instead of a registered one; `resume=RUN_DIR` continues
    an interrupted run from its last checkpoint (`trust_imports=True` lets it import the modules
    its config.yaml names under `imports:`).
    """
    phases.begin()
    started = budget.now()  # a time budget (train.time) counts from here
    overrides = {k.replace("__", "."): v for k, v in overrides.items()}
    if progress:
        kiln_logs.ensure()
    if resume is not None:
        with trust(trust_imports):
            return _resume(Path(resume), model, callbacks, progress, overrides, started)
    cfg = config if isinstance(config, RunConfig) else build_config(config, overrides)
    if isinstance(config, RunConfig) and overrides:
        cfg = build_config(config.to_dict(), overrides)
    cfg = resolve(cfg, model)
    _train_needed(cfg, progress)
    return train_prepared(prepare(cfg, model), callbacks, progress, started)


def train_prepared(ready: Prepared, callbacks: list[Callback] | None = None,
                   progress: bool = True, started: float | None = None) -> Run:  # fmt: skip
    """Train what `prepare` set up, from the weights its model holds now, into a new run folder
    (`kiln prune` fine-tunes a pruned model this way); `started`: when a time budget began."""
    run = distributed.on_main(lambda: _create_run(ready, progress))
    return _fit(ready, run, callbacks, progress, budget_started=started)


def _train_needed(cfg: RunConfig, progress: bool) -> None:
    """The runs the task needs first (a GAN's Fréchet classifier), each said in one line:
    trained once (an interrupted one resumed), then reused."""
    for need in get_task(cfg.task).needs(cfg):
        if progress and distributed.is_main():
            log.info(need.reusing if need.ready else need.training)
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
    log.debug(f"Resolved config (written to {run.config_path}):\n{cfg.to_yaml().rstrip()}")
    details = _describe(bundle, ready.model, ready.device)
    task = get_task(cfg.task)  # how its headline figure reads, for tools that read the run
    monitor = cfg.train.early_stop.monitor
    details["metric"] = {"name": task.metric, "test_key": task.test_key or task.metric,
                         "percent": task.percent, "monitor": monitor,
                         "mode": task.direction(monitor)}  # fmt: skip
    if ready.weights is not None:
        details["weights"] = ready.weights.to_dict()
        if progress:
            log.info(str(ready.weights))
    run.write_info(bundle.info, cfg, details)
    if bundle.skipped:  # said once the trainer accepts the data (see _fit)
        (run.path / "skipped.txt").write_text("\n".join(bundle.skipped) + "\n")
    return run


def _resume(
    path: Path,
    model: nn.Module | None,
    callbacks,
    progress: bool,
    overrides: dict[str, Any],
    started: float,
) -> Run:
    run = RunDir.open(path)
    state = checkpoint.load_for_resume(run.path)
    cfg, reschedule = run.resume_config(state, overrides)
    if cfg.train.time is not None:  # a budget run, or one given a budget now
        check_resume(cfg.train.time, state, "train.time" in overrides, run)
    if cfg.model.name == "custom" and model is None:
        raise RunError(
            f"{run.path} was trained with a model passed in Python; resume it with "
            "kiln.train(resume=run_dir, model=YourModel())"
        )
    asked = overrides.get("train.devices", 1)  # else: as many processes as this one has
    ready = prepare(cfg, model, resume=True, devices=asked, imports_from=run.config_path)
    if cfg.train.devices != distributed.world_size():  # resumed with more or fewer processes
        ready.cfg = cfg = build_config(cfg.to_dict(), {"train.devices": distributed.world_size()})
    checkpoint.check_weights(state, ready.model, run.path)
    callbacks = [*(callbacks or []), RecordConfig(cfg)]  # config.yaml after the next checkpoint
    return _fit(ready, run, callbacks, progress, state, reschedule, started)


def _fit(
    ready: Prepared,
    run: RunDir,
    callbacks,
    progress,
    resume_state=None,
    reschedule=False,
    budget_started: float | None = None,
) -> Run:
    cfg, net, bundle, device = ready.cfg, ready.model, ready.bundle, ready.device
    started = time.perf_counter()
    main = distributed.is_main()  # rank 0 alone prints, runs the callbacks and tests
    progress = progress and main
    try:
        trainer = Trainer(cfg, net, bundle, run, device)  # checks the task, augment, balance
        if main and bundle.skipped and resume_state is None:
            n = len(bundle.skipped)
            log.warning(
                f"Skipped {n} bad file(s) (data.on_bad=skip), listed in {run.path}/skipped.txt"
            )
        if cfg.train.time is not None:  # train.time: epochs and schedule fitted to the budget
            say = log.info if progress else (lambda line: None)
            begun = budget.now() if budget_started is None else budget_started
            trainer.budget = TimeBudget(cfg.train.time, begun, cfg.run.report, say)
        purge = resume_state["epoch"] + 1 if resume_state else None
        trainer.callbacks += [phases.FirstStep(), *([progress_callback()] if progress else [])]
        if main:
            trainer.callbacks += [*build_loggers(cfg, run, purge), *(callbacks or [])]
        if progress:
            n = sum(p.numel() for p in net.parameters())
            verb = "Resuming" if resume_state else "Training"
            log.info(
                f"{verb} {cfg.model.name} ({n:,} parameters) on {cfg.data.name} "
                f"({len(bundle.train):,} train / {len(bundle.val):,} val / "
                f"{len(bundle.test):,} test) on {device} -> {run.path}"
            )
            for note in bundle.notes:  # splits Kiln made or changed, said once
                log.info(note)
            if not trainer.validates:
                log.info(
                    f"No validation split (data.val_fraction={cfg.data.val_fraction}): training "
                    "runs without validation, and best.pt is the last epoch's weights"
                )
            log.info(trainer.data_path)
            if trainer.teacher_note:
                log.info(trainer.teacher_note)
            if bundle.note:  # the decoded cache: opened, or written (and why)
                log.info(bundle.note)
        with distributed.peer_failures(cfg.train.dist_timeout):
            history = trainer.fit(resume_state, reschedule)
        phases.mark("trained")
    except BaseException:  # a mistake in the config, the model or the data, an interrupt, a bug
        if main and resume_state is None:
            run.discard()  # only while no checkpoint exists: no half-made run folder is left
        raise
    distributed.teardown()  # what follows is rank 0's alone
    if trainer.budget is not None:
        trainer.budget.end_training()
    if not main:
        return Run(path=run.path, config=cfg, history=history)
    best, task = trainer.early_stop, trainer.task
    net.load_state_dict(checkpoint.load(run.checkpoint("best"), map_location=device)["model"])
    # One pass over the test split: its numbers make the line below, eval-test.json and, where
    # the task keeps the outputs (classify), the report's figures.
    test = evaluate_run(run, "test", "best", model=net, bundle=bundle, device=device, task=task,
                        loader=trainer.loader(bundle.test))  # fmt: skip
    phases.mark("tested")
    if progress:
        show, last = task.show, history[-1]
        if best.best is not None:
            picked = (f"Best {best.monitor} {task.format_value(best.monitor, best.best)} at "
                      f"epoch {best.best_epoch}")  # fmt: skip
        else:
            picked = f"Kept the last epoch ({last['epoch']}): no validation split"
        final = f"val {show(last[f'val_{task.metric}'])}" if trainer.validates else (
            f"train {show(last[f'train_{task.metric}'])}")  # fmt: skip
        score = test.get(task.test_key or task.metric)
        loss = f"loss {test['loss']:.4f}, " if isinstance(test.get("loss"), float) else ""
        log.info(
            f"Done in {time.perf_counter() - started:.1f}s. {picked}; final {final}; "
            f"test {show(score) if isinstance(score, float) else '-'} ({loss}best checkpoint)"
        )
    if progress and cfg.run.report:
        log.info("Writing report (plots and report.html; run.report=false skips it)...")
    writing = time.perf_counter()
    made = task.after_fit(run, net, bundle, device)  # the task's plots and report
    if progress and made:
        for label, path in made.items():
            log.info(f"{label}: {path}")
        log.info(f"Report written in {time.perf_counter() - writing:.1f}s")
    phases.mark("reported")
    phases.write(run)
    if trainer.budget is not None:
        trainer.budget.finish(run, trainer)  # info.json's "budget", and a line
    result = Run(path=run.path, config=cfg, history=history, test=test)
    for callback in trainer.callbacks:  # the trackers log the test metrics, plots and model
        callback.on_run_end(trainer, result)
    if progress:
        log.info(f"Run directory: {run.path}")
    return result


def _describe(bundle: kdata.DataBundle, net: nn.Module, device) -> dict[str, Any]:
    return {
        "samples": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)},
        "parameters": sum(p.numel() for p in net.parameters()),
        "device": str(device),
        "command": mask(" ".join(sys.argv)),  # a database password shows as ***
    }
