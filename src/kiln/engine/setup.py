"""One way into training, for a new run, a resumed one and the LR range test alike.

`resolve` settles every value the config leaves to Kiln that needs no data and no device (the
model's options, the augmentation steps, the task's own section, the monitored metric and its
direction) and lets the task check the config; `prepare` then joins the other processes, picks
the device, threads, data, seed and model, in that order, and settles the values that depend on
the device and the model (precision, compile, channels-last, process count). What config.yaml
records is the result: every `auto` filled in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln import data as kdata
from kiln.config import RunConfig
from kiln.data.transforms import resolve_augment
from kiln.engine import distributed, phases
from kiln.engine.device import (
    check_precision,
    flush_denormals,
    resolve_device,
    seed_everything,
    set_threads,
    settle,
)
from kiln.engine.distill import teacher_run
from kiln.engine.loggers import check_loggers
from kiln.engine.user_model import check_user_model
from kiln.errors import ConfigError
from kiln.models import (
    build_model,
    check_options,
    get_model,
    import_run_modules,
    import_user_modules,
    prepare_model,
)
from kiln.models.transfer import WeightsReport
from kiln.tasks import TASKS, get_task


@dataclass
class Prepared:
    """What training starts from."""

    cfg: RunConfig
    model: nn.Module
    bundle: kdata.DataBundle
    device: torch.device
    weights: WeightsReport | None = None  # model.weights: what was loaded


def resolve(cfg: RunConfig, model: nn.Module | None = None) -> RunConfig:
    """The config with every value settled that needs no data or device (see the module
    docstring); `model`: a module of your own, recorded by class name."""
    import_user_modules(cfg.imports)  # your own models and tasks register there
    check_loggers(cfg)  # a tracker's missing library, before any data is read
    task = get_task(cfg.task)
    tree = cfg.to_dict()
    if model is None:
        options = cfg.model.kwargs()
        check_options(cfg.model.name, options)
        filled = {**get_model(cfg.model.name).options(), **options}
        tree["model"] = {"name": cfg.model.name, **cfg.model.common(),
                         **{k: _plain(v) for k, v in filled.items()}}  # fmt: skip
    else:
        cls = type(model)
        tree["model"] = {"name": "custom", **cfg.model.common(),
                         "class": f"{cls.__module__}.{cls.__qualname__}"}  # fmt: skip
    tree["data"]["augment"] = resolve_augment(cfg.data.augment)
    task_section(tree, task)
    es = tree["train"]["early_stop"]
    if es["monitor"] == "auto":
        es["monitor"] = f"val_{task.metric}"
    cfg = RunConfig.model_validate(tree)
    task.check_config(cfg)
    teacher_run(cfg)  # distill.teacher: refused here, before any data is read
    return cfg


def task_section(tree: dict[str, Any], task) -> None:
    """The task's own section (`segment:`, `gan:`) validated with its defaults filled in; a
    section for another task, or one that is no section at all, is refused."""
    known = set(RunConfig.model_fields)
    for key in [k for k in tree if k not in known]:
        if key == task.name and task.Options is not None:
            continue
        if key in TASKS:
            raise ConfigError(
                f"{key}: this section is for task={key}, and this run is task={task.name}; "
                f"remove it or set task={key}"
            )
        raise ConfigError(
            f"{key}: unknown key; valid keys here: {', '.join(known)}, or the section of the "
            f"run's task (`kiln list tasks`)"
        )
    if task.Options is not None:
        cfg = RunConfig.model_validate(tree)
        tree[task.name] = task.options(cfg).model_dump(mode="json")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def join(cfg: RunConfig, devices: int | str) -> torch.device:
    """The device, after joining the other processes when torchrun started this one (each gets
    its own device). Asking for `devices` > 1 in one process is for the CLI, which starts them."""
    device = resolve_device(cfg.train.device)
    if not distributed.under_torchrun() and distributed.requested_devices(devices) > 1:
        raise ConfigError(
            f"train.devices={devices} trains in several processes: use `kiln train ... "
            f"train.devices={devices}`, or start your script with torchrun --nproc-per-node "
            f"{devices} (kiln.train then joins the processes)"
        )
    device = distributed.setup(device, cfg.train.dist_timeout)
    distributed.per_rank_batch(cfg.data.batch_size)  # before a run directory is created
    return device


def prepare(
    cfg: RunConfig,
    model: nn.Module | None = None,
    *,
    resume: bool = False,
    devices: int | str | None = None,
    distributed_run: bool = True,
    imports_from: Path | None = None,
) -> Prepared:
    """Device, threads, data, seed and model for a resolved config. `resume`: the checkpoint
    holds the weights (pretrained ones are not fetched again) and the config is settled already.
    `distributed_run=False` (the LR range test): one process, whatever train.devices says.
    `imports_from`: the run folder's config.yaml whose `imports:` these are (a resumed run): they
    are imported only when trusted (see kiln.models.import_run_modules)."""
    if distributed_run:
        device = join(cfg, cfg.train.devices if devices is None else devices)
    else:
        device = resolve_device(cfg.train.device)
    check_precision(cfg.train.precision, device)
    flush_denormals(cfg.train.flush_denormal)  # before set_threads: new threads take its mode
    set_threads()
    if imports_from is None:
        import_user_modules(cfg.imports)  # the config the user gave
    else:
        import_run_modules(cfg.imports, imports_from)
    bundle = kdata.build(cfg.data, device)  # every process builds the data, and takes a share
    bundle.info.outputs = get_task(cfg.task).model_outputs(cfg, bundle.info)  # binary: 1 logit
    phases.mark("data")
    seed_everything(cfg.train.seed + distributed.rank(), cfg.train.deterministic)
    if model is None:
        built = build_model(cfg.model, bundle.info, load=not resume)
    else:
        built = prepare_model(model, cfg.model, load=not resume)
    if not resume:
        tree = cfg.to_dict()
        tree["train"] = settle(tree["train"], device, built.model)  # auto -> what wins here
        tree["train"] = check_user_model(  # a module Kiln did not write: one trial forward
            built.model, bundle, device, tree["train"], get_task(cfg.task), model is not None,
            explicit=cfg.train.channels_last is True,
        )  # fmt: skip
        tree["train"]["devices"] = distributed.world_size()  # the processes it trains with
        cfg = RunConfig.model_validate(tree)
    phases.mark("model")
    return Prepared(cfg, built.model, bundle, device, built.weights)
