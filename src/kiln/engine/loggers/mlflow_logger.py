"""The MLflow tracker (`run.loggers: [mlflow]`): where MLFLOW_TRACKING_URI says (a server, a
database, a folder), in the experiment `run.project`. Parameters: the resolved config as dotted
keys; metrics: every epoch's values (step = epoch), then `test_*`; artifacts: the plots, the
report, metrics.csv, config.yaml and eval-test.json; the model as an MLflow PyTorch model
(`mlflow.pytorch.load_model` loads it: the pt2 format, a torch.export graph)."""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from kiln.config import RunConfig
from kiln.engine.callbacks import Callback, finished, flat_hparams
from kiln.engine.loggers import numbers, read_ids, run_files, write_id
from kiln.rundir import RunDir

if TYPE_CHECKING:
    from kiln.engine.results import Run
    from kiln.engine.trainer import Trainer

log = logging.getLogger("kiln.engine")
BATCH = 100  # MLflow takes at most 100 parameters or 1000 metrics per request


class MLflowLogger(Callback):
    def __init__(self, cfg: RunConfig, run: RunDir):
        self.cfg, self.run = cfg, run
        self.client = MlflowClient()
        saved = read_ids(run).get("mlflow", {})
        if saved.get("run_id"):  # a resumed run: the same MLflow run goes on
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = mlflow.set_experiment(cfg.run.project).experiment_id
            created = self.client.create_run(
                experiment, run_name=run.path.name, tags={"kiln.run": str(run.path.resolve())}
            )
            self.run_id = created.info.run_id
            write_id(run, "mlflow", {"run_id": self.run_id, "experiment": cfg.run.project,
                                     "tracking_uri": mlflow.get_tracking_uri()})  # fmt: skip

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.start_epoch > 0:
            return  # logged when the run started
        params = [Param(k, str(v)[:6000]) for k, v in flat_hparams(self.cfg.to_dict()).items()]
        for begin in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[begin : begin + BATCH])

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        self._metrics(numbers(row), epoch)

    def on_fit_end(self, trainer: Trainer) -> None:
        if not finished(trainer):  # interrupted: `kiln train --resume` continues this run
            self.client.set_terminated(self.run_id, status="KILLED")

    def on_run_end(self, trainer: Trainer, run: Run) -> None:
        last = int(run.history[-1]["epoch"]) if run.history else 0
        self._metrics(numbers(run.test or {}, "test_"), last)
        for path, folder in run_files(self.run):
            self.client.log_artifact(self.run_id, path, folder or None)
        try:
            uri = self._log_model(trainer)
        except Exception as exc:  # noqa: BLE001 (the run is saved; the tracker's copy is extra)
            log.warning(f"note: the model was not logged to MLflow ({exc})")
            self.client.set_terminated(self.run_id, status="FINISHED")
            return
        write_id(self.run, "mlflow", {**read_ids(self.run)["mlflow"], "model_uri": uri})

    def _log_model(self, trainer: Trainer) -> str:
        """The best weights as an MLflow PyTorch model in the pt2 format (torch.export: a
        graph, loaded without unpickling code), traced on two validation inputs."""
        import torch

        model = copy.deepcopy(trainer.model).cpu().eval().to(memory_format=torch.contiguous_format)
        images = trainer.data.val.head(2).to(trainer.device)
        example = trainer.normalize(images).float().cpu().contiguous()
        with mlflow.start_run(run_id=self.run_id):  # log_model needs an active run; ends it
            info = mlflow.pytorch.log_model(model, name="model", input_example=example.numpy(),
                                            serialization_format="pt2",
                                            pip_requirements=requirements())  # fmt: skip
        return info.model_uri

    def _metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for begin in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[begin : begin + 1000])


def requirements() -> list[str]:
    """What loading the model needs (named, so that MLflow does not spend seconds inferring it):
    a pt2 graph needs torch alone, not Kiln."""
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}"]
