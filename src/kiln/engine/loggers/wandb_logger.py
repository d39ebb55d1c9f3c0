"""The Weights & Biases tracker (`run.loggers: [wandb]`), in the project `run.project`; online,
or offline with WANDB_MODE=offline (files under RUN/wandb/, sent later with `wandb sync`).
The config, every epoch's values (step = epoch), the test metrics in the summary, the plots and
report as a `report` artifact and the best checkpoint as a `model` artifact."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import wandb

from kiln.config import RunConfig
from kiln.engine.callbacks import Callback, finished
from kiln.engine.loggers import numbers, read_ids, run_files, write_id
from kiln.rundir import RunDir

if TYPE_CHECKING:
    from kiln.engine.results import Run
    from kiln.engine.trainer import Trainer


class WandbLogger(Callback):
    def __init__(self, cfg: RunConfig, run: RunDir):
        self.run = run
        saved = read_ids(run).get("wandb", {})
        run_id = saved.get("id") or secrets.token_hex(4)  # W&B ids: letters and digits
        self.wb = wandb.init(
            project=cfg.run.project,
            name=run.path.name,
            id=run_id,
            resume="allow",  # a resumed run continues the same W&B run
            dir=str(run.path),
            config=cfg.to_dict(),
            settings=wandb.Settings(console="off"),  # Kiln's own output stays as it is
        )
        if not saved:
            write_id(run, "wandb", {"id": run_id, "project": cfg.run.project})

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        self.wb.log(numbers(row), step=epoch)

    def on_fit_end(self, trainer: Trainer) -> None:
        if not finished(trainer):  # interrupted: `kiln train --resume` continues this run
            self.wb.finish(exit_code=130)

    def on_run_end(self, trainer: Trainer, run: Run) -> None:
        self.wb.summary.update(numbers(run.test or {}, "test_"))
        report = wandb.Artifact(f"{self.run.path.name}-report", type="report")
        for path, folder in run_files(self.run):
            report.add_file(path, name=f"{folder}/{path.rsplit('/', 1)[-1]}".lstrip("/"))
        self.wb.log_artifact(report)
        model = wandb.Artifact(f"{self.run.path.name}-model", type="model")
        model.add_file(str(self.run.checkpoint("best")), name="best.pt")
        self.wb.log_artifact(model)
        self.wb.finish()
