"""Evaluate a run on a split: rebuilds model and data from the run directory alone."""

from __future__ import annotations

from typing import Any

import torch

from kiln import checkpoint
from kiln import data as kdata
from kiln.data import Normalize, make_loader
from kiln.data.workers import default_workers
from kiln.errors import ConfigError
from kiln.models.tta import infer
from kiln.rundir import RunDir

SPLITS = ("test", "val")


@torch.inference_mode()
def collect_logits(
    model: torch.nn.Module, loader, tta: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        outs.append(infer(model, x, tta).float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


def evaluate_run(
    run: RunDir,
    split: str = "test",
    which: str = "best",
    model: torch.nn.Module | None = None,
    bundle: kdata.DataBundle | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Metrics for `split` with checkpoint `which`; saved as eval-<split>.json in the run."""
    from kiln.predict import load_model
    from kiln.tasks import get_task

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    cfg = run.load_config()
    info = run.data_info()
    if model is None:
        model, ckpt_epoch = load_model(run, which, device)
    else:
        ckpt_epoch = checkpoint.load(run.checkpoint(which)).get("epoch")
    if bundle is None:
        bundle = kdata.build(cfg.data)
    chosen = bundle.test if split == "test" else bundle.val
    normalize = Normalize(info.mean, info.std, device)
    loader = make_loader(chosen, cfg.data.eval_batch_size, normalize, device,
                         workers=default_workers(cfg.data.workers))  # fmt: skip
    task = get_task(cfg.task)
    if hasattr(task, "evaluate_loader"):  # tasks whose outputs do not fit one tensor in memory
        metrics = task.evaluate_loader(model.to(device), loader, info, cfg)
    else:
        logits, labels = collect_logits(model.to(device), loader, cfg.model.tta)
        metrics = task_metrics(task, logits, labels, info)
    result = {
        "run": str(run.path),
        "split": split,
        "checkpoint": which,
        "epoch": ckpt_epoch,
        **metrics,
    }
    run.write_json(f"eval-{split}.json", result)
    return result


def task_metrics(task, outputs: torch.Tensor, targets: torch.Tensor, info) -> dict[str, Any]:
    """The task's own metrics (`evaluate`), or just the sample count for a task without them."""
    evaluate = getattr(task, "evaluate", None)
    return evaluate(outputs, targets, info) if evaluate else {"samples": len(targets)}


def write_regress_plots(run: RunDir, model, bundle, device) -> list:
    """Predicted-vs-true and residual plots of the test split (task=regress)."""
    from kiln.tasks.regress import in_units, write_plots

    info = run.data_info()
    normalize = Normalize(info.mean, info.std, device)
    loader = make_loader(bundle.test, run.load_config().data.eval_batch_size, normalize, device)
    outputs, targets = collect_logits(model.to(device), loader)
    return write_plots(in_units(outputs, info), targets.float(), info.classes, run.path / "plots")
