"""Knowledge distillation (`distill.teacher=RUN`): the teacher run is checked when the config is
resolved (it exists, has a checkpoint, and its task can teach this run's task) and again against
the data (same classes, same inputs), then loaded for the trainer, which hands it to every step
(StepContext.teacher). What the loss does with its outputs is the task's (`Task.distill_loss`).

Without augmentation a training sample is the same image every epoch, and so are the teacher's
outputs on it: `cache_outputs` computes them once for the whole training split (one inference
pass) and every batch looks its own up by the samples' positions, instead of running the teacher
on every batch of every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from kiln.config import RunConfig
from kiln.data import MemoryLoader, WorkerLoader
from kiln.data.registry import DataInfo
from kiln.errors import ConfigError, KilnError
from kiln.rundir import RunDir, load_model
from kiln.tasks import Teacher, get_task


def teacher_run(cfg: RunConfig, info: DataInfo | None = None) -> RunDir | None:
    """The teacher's run directory, checked against the config (and the data's `info`, once it
    is known); None without distill.teacher. Every refusal is one line naming the key."""
    where = cfg.distill.teacher
    if where is None:
        return None
    try:
        run = RunDir.open(where)
        teacher_cfg, teacher_info = run.load_config(), run.data_info()
    except KilnError as exc:
        raise ConfigError(f"distill.teacher={where}: {exc}") from None
    if not run.checkpoint("best").is_file():
        raise ConfigError(
            f"distill.teacher={where} has no checkpoint ({run.checkpoint('best')}): train it "
            "first, or name a finished run"
        )
    get_task(cfg.task).check_teacher(teacher_cfg, teacher_info, info, where)
    return run


def load_teacher(cfg: RunConfig, info: DataInfo, device: torch.device) -> Teacher | None:
    """The teacher's best checkpoint, in eval mode on `device`, taking this run's inputs."""
    run = teacher_run(cfg, info)
    if run is None:
        return None
    try:
        model, _ = load_model(run, "best", device)
    except KilnError as exc:
        raise ConfigError(f"distill.teacher={cfg.distill.teacher}: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    theirs = run.data_info()
    scale = shift = None
    if (theirs.mean, theirs.std) != (info.mean, info.std):  # x_theirs = x_ours * scale + shift
        mean_s, std_s = torch.tensor(info.mean), torch.tensor(info.std)
        mean_t, std_t = torch.tensor(theirs.mean), torch.tensor(theirs.std)
        scale, shift = (std_s / std_t).to(device), ((mean_s - mean_t) / std_t).to(device)
    fast = run.load_config().train.channels_last is True
    if fast:
        model = model.to(memory_format=torch.channels_last)
    d = cfg.distill
    return Teacher(model.eval(), d.temperature, d.alpha, scale, shift, fast)


CACHE_BYTES = 1 << 30  # the most memory the teacher's outputs on the training split may take


def cache_outputs(
    teacher: Teacher,
    whole: Callable[[], MemoryLoader | WorkerLoader],
    augment: list[str],
    autocast: Callable[[], AbstractContextManager],
) -> str:
    """Without augmentation (`augment`: the data.augment steps' names), the teacher's outputs on
    every training sample, computed once over `whole()` (an unshuffled, unaugmented loader over
    the training split, built only then) into `teacher.cached`. Returns the one log line saying
    which it does."""
    if augment:
        return (
            f"Teacher: outputs computed on every batch (data.augment: {', '.join(augment)} "
            "changes the images every epoch)"
        )
    loader = whole()
    n = loader.num_samples
    cached = None
    for index, x, _ in loader.indexed_batches():
        with autocast():
            out = teacher(x)  # Teacher.__call__ runs without gradients
        if cached is None:
            size = out[0].numel() * out.element_size() * n
            if size > CACHE_BYTES:
                return (
                    f"Teacher: outputs computed on every batch (on all {n:,} training "
                    f"samples they would take {size / 2**20:,.0f} MiB, more than "
                    f"{CACHE_BYTES / 2**20:,.0f} MiB)"
                )
            cached = out.new_empty((n, *out.shape[1:]))
        cached[index] = out
    teacher.cached = cached
    return (
        f"Teacher: outputs computed once for the {n:,} training samples (no augmentation) "
        "and looked up by each batch"
    )
