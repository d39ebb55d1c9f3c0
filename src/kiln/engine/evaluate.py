"""`kiln eval` and `kiln report` of a finished run: the model and data rebuilt from the run
directory alone, the numbers and pages made by the run's task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kiln import checkpoint
from kiln import data as kdata
from kiln.data import Normalize, make_loader
from kiln.data.workers import default_workers
from kiln.errors import ConfigError, RunError
from kiln.rundir import RunDir, load_model
from kiln.tasks import StepContext, Task, get_task

SPLITS = ("test", "val")


def evaluate_run(
    run: RunDir | str | Path,
    split: str = "test",
    which: str = "best",
    model: torch.nn.Module | None = None,
    bundle: kdata.DataBundle | None = None,
    device: str | torch.device = "cpu",
    task: Task | None = None,
    loader=None,
) -> dict[str, Any]:
    """The task's metrics for `split` with checkpoint `which`; saved as eval-<split>.json.
    The end of training passes its own `task` (which may keep the outputs for its report) and
    `loader` (the training run's normalization and data placement)."""
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    cfg, info = run.load_config(), run.data_info()
    device = torch.device(device)
    if model is None:
        model, epoch = load_model(run, which, device)
    else:
        epoch = checkpoint.load(run.checkpoint(which)).get("epoch")
    if bundle is None:
        bundle = kdata.build(cfg.data)
    chosen = bundle.test if split == "test" else bundle.val
    if len(chosen) == 0:
        raise RunError(f"{run.path} has no {split} images: nothing to evaluate on that split")
    normalize = Normalize(info.mean, info.std, device)
    if loader is None:
        loader = make_loader(chosen, cfg.data.eval_batch_size, normalize, device,
                             workers=default_workers(cfg.data.workers))  # fmt: skip
    if task is None:
        task = get_task(cfg.task).build(cfg, bundle, device)
    model = model.to(device)
    ctx = StepContext(net=model, model=model, device=device, precision=cfg.train.precision,
                      tta=cfg.model.tta, normalize=normalize, data=bundle)  # fmt: skip
    metrics = task.evaluate(ctx, loader, info)
    result = {"run": str(run.path), "split": split, "checkpoint": which, "epoch": epoch, **metrics}
    run.write_json(f"eval-{split}.json", result)
    return result


def report_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    model: torch.nn.Module | None = None,
    bundle: kdata.DataBundle | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """Plots, then RUN/report.html, as the run's task makes them (`kiln report`)."""
    run = RunDir.open(run_dir)
    cfg = run.load_config()
    if model is None:
        model, _ = load_model(run, checkpoint, device)
    if bundle is None:
        bundle = kdata.build(cfg.data)
    task = get_task(cfg.task).build(cfg, bundle, torch.device(device))
    return task.report(run, model, bundle, device, checkpoint)
