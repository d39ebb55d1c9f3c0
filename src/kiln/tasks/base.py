"""The Task: everything that differs between kinds of learning, behind one class.

The trainer, evaluation, prediction, export, serving and the CLI never ask which task a run is:
they call the methods below. Every method has a default, so a task of your own overrides only
what differs, at the least its loss and its metric:

    @register_task("brier", "classification trained on the Brier score")
    class BrierTask(Task):
        metric = "brier"                 # logged as train_brier / val_brier
        higher_is_better = False

        def train_loss(self, outputs, targets): ...   # mean over the batch, to backpropagate
        def eval_loss(self, outputs, targets): ...    # summed over the batch
        def score(self, outputs, targets): ...        # summed over the batch: the metric's sum

The hooks, by stage (each documented where it is defined):

    config      Options (the task's own config section), models, check_config, options,
                needs (runs to train first), model_outputs
    training    build, sample_weights, optimizers, check_outputs, train_step, eval_step, score,
                summarize, show, state_dict / load_state_dict, epoch_images, check_teacher /
                distill_loss
    evaluation  evaluate (kiln eval's numbers), print_eval, headline
    report      after_fit, report
    prediction  generates, read_input, input_files, predictions, show_answer, serve_answer,
                predict_files, sample
    export      export_module, export_inputs, calibration_inputs, export_spec, agreement,
                accuracy, export_head, from_export_head
    explanation explain
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from kiln.errors import ConfigError, KilnError, RunError
from kiln.models.tta import infer

if TYPE_CHECKING:
    from kiln.config import RunConfig
    from kiln.data.registry import DataBundle, DataInfo
    from kiln.rundir import RunDir

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepContext:
    """What a step gets from the trainer: the network and a few tools, not the whole loop
    (Lightning's `training_step` idea). `kiln eval` and the LR range test make one too."""

    net: nn.Module  # what runs the batch: the model, or its DDP / compiled wrapper
    model: nn.Module  # the plain model (its parts: a GAN's generator, a VAE's decode)
    device: torch.device
    precision: str = "fp32"
    tta: str = "none"  # model.tta: evaluation averages over these views
    optimize: Callable[..., None] | None = None  # optimize(loss, name="model"): backprop + step
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None  # uint8 batch -> model input
    data: DataBundle | None = None
    run_path: Path | None = None  # where a task may write per-epoch pictures
    teacher: Teacher | None = None  # distill.teacher: its outputs on the batch, for distill_loss
    index: torch.Tensor | None = None  # training: the batch's positions in the training split

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass, as train.precision says."""
        if self.precision in ("fp32", "auto"):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.precision])

    def step(self, loss: torch.Tensor, name: str = "model") -> None:
        if self.optimize is None:
            raise RuntimeError("this step context evaluates only: it has no optimizer")
        self.optimize(loss, name)


@dataclass
class Teacher:
    """distill.teacher: a trained model whose outputs the model being trained learns from, called
    on the same (augmented) batch. `shift`/`scale` turn the student's normalized inputs into the
    teacher's (their training splits may differ, and so their mean and std). Without
    augmentation a sample's teacher outputs never change: `cached` holds them for the whole
    training split, computed once (kiln/engine/distill.py), and batches look theirs up."""

    model: nn.Module
    temperature: float = 4.0
    alpha: float = 0.7
    scale: torch.Tensor | None = None  # per channel: teacher input = x * scale + shift
    shift: torch.Tensor | None = None
    channels_last: bool = False  # the memory format the teacher trained in (its faster one)
    cached: torch.Tensor | None = None  # its outputs on the training split, by position

    def outputs(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Its outputs on the batch `x`: looked up by the samples' positions in the training
        split (`index`) when they were computed ahead, else computed now."""
        if self.cached is not None and index is not None:
            return self.cached[index]
        return self(x)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = x * self.scale.view(shape) + self.shift.view(shape)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()


@dataclass
class Needed:
    """A run a task needs before it trains (a GAN's Fréchet classifier): trained once at `path`
    from `config`, then reused. `ready`: a finished run is there already. The lines say so."""

    path: Path
    config: dict[str, Any]
    ready: bool
    training: str  # said before training it
    reusing: str  # said when it is there already


@dataclass
class Optimizes:
    """One optimizer a task asks for: the module whose parameters it steps and the options that
    differ from `optim.*` (a GAN's Adam betas). The trainer builds it, schedules it with `sched.*`
    and checkpoints it."""

    module: nn.Module
    options: dict[str, Any] = field(default_factory=dict)


class Task:
    """The defaults: one optimizer over the model, `outputs = model(inputs)`, the loss and metric
    the subclass defines, a metrics table for `kiln eval`, a generic report, raw outputs as
    predictions and the model itself as the export."""

    name: ClassVar[str] = ""  # set by @register_task
    description: ClassVar[str] = ""
    metric: ClassVar[str] = "loss"  # logged as train_<metric> and val_<metric>
    higher_is_better: ClassVar[bool] = False
    percent: ClassVar[bool] = False  # the metric reads as a percentage (accuracy)
    test_key: ClassVar[str | None] = None  # its key in eval-test.json (default: the metric's name)
    # The registered models made for this task: other tasks refuse them, naming this task.
    models: ClassVar[tuple[str, ...]] = ()
    # The task's own config section (`<name>:` in YAML, `<name>.key=value` on the command line).
    Options: ClassVar[type[BaseModel] | None] = None
    # True for a generator: its predictions start from noise (latent vectors), not from images.
    generates: ClassVar[bool] = False
    # True when `explain` gives heat maps (kiln serve offers POST /explain and the page's button).
    explains: ClassVar[bool] = False

    # Config -----------------------------------------------------------------------------------
    @classmethod
    def options(cls, cfg: RunConfig) -> BaseModel | None:
        """The task's section of the config, validated (its defaults filled in)."""
        if cls.Options is None:
            return None
        section = (cfg.model_extra or {}).get(cls.name) or {}
        try:
            return cls.Options.model_validate(section)
        except ValidationError as exc:
            problems = "; ".join(
                f"{cls.name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid config: {problems}") from None

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Mistakes found before any data is read. By default: a model made for another task."""
        from kiln.tasks.registry import task_for_model

        owner = task_for_model(cfg.model.name)
        if owner is not None and owner != cls.name:
            raise ConfigError(
                f"model={cfg.model.name} is made for task={owner}, not task={cls.name}: "
                f"add task={owner} (or choose another model: `kiln list models`)"
            )

    @classmethod
    def needs(cls, cfg: RunConfig) -> list[Needed]:
        """Runs to train before this one (each once, then reused); none by default."""
        return []

    @classmethod
    def model_outputs(cls, cfg: RunConfig, info: DataInfo) -> int | None:
        """The size of the model's output when it is not one score per class (None), checked
        against the data before the model is built; saved in info.json as `outputs`."""
        return None

    @classmethod
    def direction(cls, monitor: str) -> str:
        """'min' or 'max' for a monitored value: losses down, this task's metric as it says,
        another task's metric as that one says."""
        from kiln.tasks.registry import direction

        if monitor.endswith("loss"):
            return "min"
        if monitor.split("_", 1)[-1] == cls.metric:
            return "max" if cls.higher_is_better else "min"
        return direction(monitor)

    # Training ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: RunConfig, data: DataBundle, device: torch.device) -> Task:
        """An instance for this run, checked against its data."""
        return cls()

    def sample_weights(self, cfg: RunConfig, data: DataBundle) -> torch.Tensor | None:
        """Per-sample weights for drawing training batches (data.balance=sampler), or None."""
        if cfg.data.balance != "none":
            raise ConfigError(
                f"data.balance={cfg.data.balance} balances classes; task={self.name} has none"
            )
        return None

    def optimizers(self, model: nn.Module, cfg: RunConfig) -> dict[str, Optimizes]:
        """The optimizers to build, by name; their states go into last.pt under that name."""
        return {"model": Optimizes(model)}

    @classmethod
    def check_outputs(cls, outputs: Any, images: int, info: DataInfo, module: str) -> None:
        """A module of the user's, run once on a few training inputs (`images`) before training:
        raise a KilnError naming `module` when its outputs cannot be what this task learns."""

    def train_loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss (what is backpropagated)."""
        raise NotImplementedError(f"task '{self.name}' defines no train_loss")

    def eval_loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """The batch's summed loss (divided by the split's size after summing every batch)."""
        return self.train_loss(outputs, targets) * len(targets)

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor):
        """One batch: forward, loss, one optimizer step -> (mean loss, outputs for `score`).
        With a teacher (distill.teacher), the loss is `distill_loss` of its outputs."""
        with ctx.autocast():
            outputs = ctx.net(x)
            loss = self.train_loss(outputs, y)
            if ctx.teacher is not None:
                teacher = ctx.teacher.outputs(x, ctx.index)
                loss = self.distill_loss(outputs, teacher, loss, ctx.teacher)
        ctx.step(loss)
        return loss.detach(), outputs.detach()

    @classmethod
    def check_teacher(cls, teacher_cfg: RunConfig, teacher_info: DataInfo,
                      info: DataInfo | None, where: str) -> None:  # fmt: skip
        """Refuse a teacher run (`where`) this task cannot learn from: its config (before any data
        is read, `info` None) and then its classes against the data's. By default a task has no
        distillation loss, so every teacher is refused."""
        raise ConfigError(
            f"distill.teacher={where}: task={cls.name} has no distillation loss (tasks that "
            "have one: kiln list tasks); remove distill.teacher"
        )

    def distill_loss(self, outputs: Any, teacher: torch.Tensor, loss: torch.Tensor,
                     distill: Teacher) -> torch.Tensor:  # fmt: skip
        """The batch's mean loss when learning from a teacher's outputs on the same batch as well
        as from the labels (`loss`, the labels' train_loss)."""
        raise ConfigError(f"task={self.name} has no distillation loss; remove distill.teacher")

    def eval_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor):
        """One batch without learning -> (summed loss, outputs for `score`)."""
        with ctx.autocast():
            outputs = infer(ctx.net, x, ctx.tta)
        return self.eval_loss(outputs.float(), y), outputs.float()

    def score(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """The batch's summed metric (a tensor: no device sync); any shape that sums."""
        raise NotImplementedError(f"task '{self.name}' defines no score")

    def finish(self, mean: float) -> float:
        """The mean score -> the metric (e.g. a mean squared error -> its root)."""
        return mean

    def summarize(self, score_sum: torch.Tensor, n: int) -> dict[str, float]:
        """Summed scores over n samples -> every value logged (its metric first)."""
        return {self.metric: self.finish(float(score_sum) / max(n, 1))}

    @classmethod
    def show(cls, value: float) -> str:
        """How the metric reads in logs: `rmse 0.1234`, or `acc 97.12%` for a percentage."""
        return f"{cls.metric} {value:.2%}" if cls.percent else f"{cls.metric} {value:.4f}"

    def state_dict(self) -> dict[str, Any]:
        """State of the task's own kept in last.pt (plain tensors and data), for resuming."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def epoch_images(self, ctx: StepContext, epoch: int) -> dict[str, torch.Tensor]:
        """Pictures for TensorBoard after each epoch: {tag: (C, H, W) image}."""
        return {}

    # Evaluation -------------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, ctx: StepContext, loader, info: DataInfo) -> dict[str, Any]:
        """`kiln eval`'s numbers for a split (saved as eval-<split>.json). By default the logged
        values, from the same steps as validation."""
        ctx.model.eval()
        loss, score, n = 0.0, torch.zeros((), device=ctx.device), 0
        for x, y in loader:
            batch_loss, outputs = self.eval_step(ctx, x, y)
            loss += float(batch_loss)
            score = score + self.score(outputs, y)
            n += len(y)
        return {"samples": n, **self.summarize(score, n), "loss": loss / max(n, 1)}

    @classmethod
    def headline(cls, result: dict[str, Any]) -> str:
        """One line naming the main figures of an evaluation (the report's overview)."""
        value = result.get(cls.metric)
        return cls.show(value) if isinstance(value, float) else ""

    @classmethod
    def print_eval(cls, result: dict[str, Any], console) -> None:
        """`kiln eval` in a terminal: every number of the evaluation, as a table."""
        from rich.table import Table

        from kiln.tasks.common import eval_file, eval_title, is_scalar

        console.print(eval_title(result, "samples"))
        table = Table("metric", "value")
        for key, value in result.items():
            if key not in ("run", "split", "checkpoint", "epoch") and is_scalar(value):
                table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)
        console.print(f"saved to {eval_file(result)}")

    @classmethod
    def eval_html(cls, result: dict[str, Any]) -> str:
        """An evaluation in a notebook (`_repr_html_` of kiln.evaluate's result and of a run's
        test): by default every number of it, as a table."""
        from kiln.evaluate.notebook import scalars, table

        skip = ("epoch",)
        rows = [(k, cls.format_value(k, v)) for k, v in scalars(result, skip)]
        return table(["metric", "value"], rows)

    @classmethod
    def format_value(cls, key: str, value: float) -> str:
        """One logged or evaluated value as it reads everywhere (the final line, tables): the
        task's metric as a percentage where it is one, other numbers with 4 decimals."""
        from kiln.evaluate.notebook import number

        name = key.split("_", 1)[1] if key.startswith(("train_", "val_")) else key
        return number(value, cls.percent and name in (cls.metric, cls.test_key))

    # Reports ----------------------------------------------------------------------------------
    def after_fit(self, run: RunDir, model: nn.Module, bundle, device) -> dict[str, str]:
        """What training ends with ({label: path}, printed): the report (run.report)."""
        if not run.load_config().run.report:
            return {}
        return {"Report": str(self.report(run, model, bundle, device))}

    def report(self, run: RunDir, model: nn.Module, bundle, device, checkpoint="best") -> Path:
        """Plots, then RUN/report.html (`kiln report` calls it too)."""
        from kiln.evaluate.plots import write_curves
        from kiln.evaluate.report import metrics_section, write_run_report
        from kiln.tasks.common import read_eval

        plots = write_curves(run, self.metric, percent=self.percent)
        test = read_eval(run)
        section = metrics_section(test)
        headline = self.headline(test or {})
        return write_run_report(run, model, plots, test_section=section, checkpoint=checkpoint,
                                headline=headline)  # fmt: skip

    # Prediction -------------------------------------------------------------------------------
    @classmethod
    def read_input(cls, item: Any, info: DataInfo) -> torch.Tensor:
        """One input (a path, PIL image or tensor) -> uint8 (C, H, W) at the model's size."""
        from kiln.data.images import to_uint8

        return to_uint8(item, info.input_shape, info.resize)

    @classmethod
    def input_files(cls, paths: Sequence[str | Path], info: DataInfo) -> list[Path]:
        """The files `kiln predict` reads from paths and folders."""
        from kiln.data.images import expand_paths

        return expand_paths(paths)

    def predictions(self, outputs: torch.Tensor, info: DataInfo, top_k: int = 5) -> list[dict]:
        """What predict and serve answer for a batch of raw outputs, one dict per input."""
        return [{"outputs": [round(v, 6) for v in row.flatten().tolist()]} for row in outputs]

    @classmethod
    def python_answer(cls, answers: list[dict], outputs: list[torch.Tensor], single: bool):
        """What `kiln.load(RUN).predict(images)` returns: the answers as dicts, one per input (a
        list even for one input); `outputs` are the raw outputs per input."""
        return answers

    @classmethod
    def show_answer(cls, answer: dict[str, Any]) -> str:
        """One answer as a line of `kiln predict`: the file, then the answer."""
        shown = json.dumps({k: v for k, v in answer.items() if k != "file"})
        return f"{answer.get('file', '-')}: {shown}"

    @classmethod
    def serve_answer(cls, answer: dict[str, Any]) -> dict[str, Any]:
        """An answer made fit for JSON over HTTP (e.g. a mask becomes a PNG)."""
        return answer

    @classmethod
    def predict_files(cls, predictor, files: list[Path], output: Path | None = None,
                      overlay: bool = False, top_k: int = 3) -> list[dict]:  # fmt: skip
        """`kiln predict RUN FILES`: answers for the files; tasks that write files take -o."""
        if output is not None or overlay:
            raise KilnError(
                f"-o/--output and --overlay write files: task={cls.name} answers on the "
                "terminal only (they are for tasks that write masks, such as task=segment)"
            )
        answers: list[dict] = []
        for begin in range(0, len(files), 256):
            answers += predictor.answers(files[begin : begin + 256], top_k=top_k)
        return answers

    @classmethod
    def sample(cls, forward: Callable, n: int, seed: int, latent: int | None) -> torch.Tensor:
        """`kiln sample` and GET /sample: n new images as uint8 (n, C, H, W), drawn with `seed`
        through `forward` (the model or its export). Generators only."""
        from kiln.tasks.registry import generative_names

        names = " or ".join(f"task={name}" for name in generative_names())
        raise RunError(
            f"this is a task={cls.name} run: new images are drawn from {names} runs "
            "(kiln sample RUN)"
        )

    # Export -----------------------------------------------------------------------------------
    @classmethod
    def export_module(cls, model: nn.Module, tta: str) -> nn.Module:
        """What an export's graph computes: the model with its test-time views, on normalized
        inputs."""
        from kiln.tasks.common import WithTTA

        return WithTTA(model, tta)

    @classmethod
    def export_inputs(cls, run: RunDir, n: int, spec) -> tuple[torch.Tensor, Any, str]:
        """(inputs as the graph takes them, labels or None, where they come from) to check an
        export on: the run's first n validation images."""
        from kiln.tasks.common import validation_inputs

        return validation_inputs(run, n, spec)

    @classmethod
    def calibration_inputs(cls, run: RunDir, n: int, spec) -> tuple[torch.Tensor, str]:
        """(inputs as the graph takes them, where they come from) that a static int8 export
        measures its activation ranges on: n of the run's training images."""
        from kiln.tasks.common import training_inputs

        return training_inputs(run, n, spec)

    @classmethod
    def export_spec(cls, cfg: RunConfig, info: DataInfo) -> dict[str, Any]:
        """The sidecar's fields this task decides: what the output holds, the latent size."""
        return {"output": {"name": "outputs", "shape": ["batch", "..."]}}

    @classmethod
    def export_head(cls) -> tuple[nn.Module, str]:
        """What an export that carries its preprocessing (`kiln export --embed-preprocessing`)
        ends with, and its output's name: by default the raw outputs."""
        return nn.Identity(), "outputs"

    @classmethod
    def from_export_head(cls, outputs: torch.Tensor) -> torch.Tensor:
        """Such an export's outputs back to raw outputs, for `predictions` (the inverse of
        `export_head`, up to what `predictions` ignores)."""
        return outputs

    @classmethod
    def agreement(cls, reference: torch.Tensor, exported: torch.Tensor) -> float | None:
        """The share of inputs an export answers like the eager model (class scores: top-1)."""
        return None

    @classmethod
    def accuracy(cls, outputs: torch.Tensor, labels: torch.Tensor) -> float | None:
        """Accuracy of outputs against labels, where the task has one (quantized exports)."""
        return None

    # Explanation ------------------------------------------------------------------------------
    @classmethod
    def explain(
        cls,
        model: nn.Module,
        inputs: torch.Tensor,
        info: DataInfo,
        top_k: int = 3,
        method: str = "auto",
        targets: list[list[int]] | None = None,
    ) -> list[list[Any]]:
        """Why the model answered as it did (`kiln predict --explain`, POST /explain, the report):
        for each normalized input of `inputs` (N, C, H, W), a list of
        kiln.evaluate.explain.Explanation (a label, its score, a heat map over the image) for its
        top_k classes, or for the class indices `targets` gives per input."""
        raise KilnError(
            f"explanations are not available for task={cls.name}: they show which pixels drove "
            "a class (task=classify) or a class's pixels (task=segment)"
        )
