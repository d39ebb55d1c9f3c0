"""The Python API: one function per `kiln` verb, thin over the packages below.

Every function takes the same keyword names as the CLI (`checkpoint=`, `split=`, `output=`,
`top_k=`), a run as a path or as the object a call returned (a `Run`, an `Evaluation`), and
config overrides as a dict of dotted keys or as keywords with `__` for the dots:

    kiln.train("recipes/mnist-cnn.yaml", {"optim.lr": 3e-3}, epochs=2)
    kiln.train(model="mlp", model__hidden=[64], data__root="~/data")

Each returns an object with attributes, `to_dict()` and an HTML view in a notebook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from kiln import logs
from kiln.config import RunConfig, build_config
from kiln.engine.results import Evaluation, Plot, Run
from kiln.engine.setup import resolve
from kiln.engine.summary import ModelSummary
from kiln.evaluate.compare import Comparison
from kiln.infer import Predictor, load_predictor
from kiln.infer.predictions import Predictions
from kiln.models import trust_imports

if TYPE_CHECKING:
    from kiln.deploy.export import ExportResult
    from kiln.engine.callbacks import Callback
    from kiln.tune.lr_find import LrFindResult
    from kiln.tune.run import StudyResult

__all__ = [
    "Comparison",
    "Evaluation",
    "ModelSummary",
    "Plot",
    "Predictions",
    "Predictor",
    "Run",
    "compare",
    "evaluate",
    "export",
    "load",
    "lr_find",
    "predict",
    "resolve",
    "resume",
    "serve",
    "summary",
    "train",
    "trust_imports",
    "tune",
]

Config = str | Path | dict[str, Any] | RunConfig | None
Overrides = dict[str, Any] | Sequence[str] | None


def _overrides(overrides: Overrides, keywords: dict[str, Any]) -> dict[str, Any]:
    """A dict of dotted keys (or `key=value` strings) plus `__` keywords, as one dict."""
    from kiln.config import parse_override

    if overrides is None:
        merged: dict[str, Any] = {}
    elif isinstance(overrides, dict):
        merged = dict(overrides)
    else:
        merged = dict(map(parse_override, overrides))
    merged.update({k.replace("__", "."): v for k, v in keywords.items()})
    return merged


def _path(run: Any) -> Path:
    """A run given as a path, a Run, an Evaluation or anything with a `path`."""
    if isinstance(run, Evaluation):
        return Path(run["run"])
    return Path(getattr(run, "path", run))


def _config(config: Config, overrides: dict[str, Any]) -> RunConfig:
    if isinstance(config, RunConfig):
        return build_config(config.to_dict(), overrides)
    return build_config(config, overrides)


def train(
    config: Config = None,
    overrides: Overrides = None,
    *,
    model: nn.Module | str | None = None,
    callbacks: list[Callback] | None = None,
    progress: bool = True,
    resume: str | Path | Run | None = None,
    trust_imports: bool = False,
    **keywords: Any,
) -> Run:
    """Train a model: `kiln train`.

    `config` is a YAML path, a dict or a RunConfig (None: the defaults, digits and convnet);
    overrides as a dict of dotted keys or `__` keywords (`optim__lr=3e-3`, `epochs=5`).
    `model=` names a registered model ("mlp") or is a module of your own. `progress=False` trains
    silently. Returns the `Run`: its path, history, best value and test evaluation.
    `trust_imports=True` lets a resumed run import the modules its config.yaml names under
    `imports:` (Kiln never runs code found in a run folder unless told to).
    """
    from kiln.engine.run import train as run_training

    extra = _overrides(overrides, keywords)
    if isinstance(model, str):  # the CLI's alias: model=mlp names a registered model
        extra["model.name"], model = model, None
    if resume is not None:
        return run_training(resume=_path(resume), model=model, callbacks=callbacks,
                            progress=progress, trust_imports=trust_imports, **extra)  # fmt: skip
    return run_training(_config(config, extra), model=model, callbacks=callbacks,
                        progress=progress)  # fmt: skip


def resume(
    run: str | Path | Run,
    overrides: Overrides = None,
    *,
    model: nn.Module | None = None,
    callbacks: list[Callback] | None = None,
    progress: bool = True,
    trust_imports: bool = False,
    **keywords: Any,
) -> Run:
    """Continue an interrupted run from checkpoints/last.pt: `kiln train --resume RUN`.

    A finished run is extended with `epochs=N` (more than it ran); only train.epochs,
    train.devices and train.dist_timeout may change.
    """
    return train(resume=run, overrides=overrides, model=model, callbacks=callbacks,
                 progress=progress, trust_imports=trust_imports, **keywords)  # fmt: skip


def load(
    run: str | Path | Run,
    checkpoint: str = "best",
    device: str = "cpu",
    model: nn.Module | None = None,
    trust_imports: bool = False,
) -> Predictor:
    """A Predictor for a run (its `checkpoint`: best or last) or an export: `.predict(images)`.

    Pass `model=` (a fresh instance of the same class) for runs trained with a model of your
    own, `trust_imports=True` to import the modules the run's config.yaml names under `imports:`.
    """
    with trusting(trust_imports):
        return load_predictor(_path(run), checkpoint, device, model)


def evaluate(
    run: str | Path | Run,
    split: str = "test",
    checkpoint: str = "best",
    device: str = "cpu",
    trust_imports: bool = False,
) -> Evaluation:
    """Evaluate a run on its test or val split: `kiln eval`. Saved as RUN/eval-<split>.json;
    returns every number of it (`ev.accuracy`, `ev["per_class"]`, `ev.to_dict()`)."""
    from kiln.engine.evaluate import evaluate_run
    from kiln.rundir import RunDir

    found = RunDir.open(_path(run))
    with trusting(trust_imports):
        result = evaluate_run(found, split, checkpoint, device=device)
    return Evaluation(result, Run.open(found.path).task)


def predict(
    run: str | Path | Run | Predictor,
    inputs: Any,
    *,
    checkpoint: str = "best",
    top_k: int = 3,
    output: str | Path | None = None,
    overlay: bool = False,
    device: str = "cpu",
    trust_imports: bool = False,
) -> Predictions:
    """Answers for image files, folders (table runs: CSVs of rows) or images in memory (PIL
    images, tensors): `kiln predict`. `output=` is where a segmentation run writes its masks.
    Returns one JSON-ready answer per input, as `kiln predict --json` prints them."""
    from kiln.infer.predictions import predict_inputs

    predictor = (
        run
        if isinstance(run, Predictor)
        else load(run, checkpoint, device, trust_imports=trust_imports)
    )
    return predict_inputs(predictor, inputs, top_k=top_k, output=output, overlay=overlay)


def export(
    run: str | Path | Run,
    format: str = "onnx",
    *,
    checkpoint: str = "best",
    output: str | Path | None = None,
    quantize: str | None = None,
    parity_images: int = 256,
    embed_preprocessing: bool = False,
    input_size: tuple[int, int] | None = None,
    trust_imports: bool = False,
) -> ExportResult:
    """Export a run as onnx, torchscript, state_dict or executorch, checked against the run on
    validation images: `kiln export`. `embed_preprocessing=True`: the graph takes decoded uint8
    images and preprocesses them itself (of one `input_size` (height, width) for executorch).
    Returns the file, its sidecar and the parity measured. Needs the `export` extra for ONNX."""
    from kiln.deploy.export import export_run

    logs.ensure()
    with trusting(trust_imports):
        return export_run(_path(run), format, quantize=quantize, output=output, which=checkpoint,
                          parity_images=parity_images, embed_preprocessing=embed_preprocessing,
                          input_size=input_size, log=_log)  # fmt: skip


def serve(
    target: str | Path | Run,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_upload_mb: float = 10,
    max_pixels: int = 40_000_000,
    max_images: int = 64,
    max_batch: int = 64,
    checkpoint: str = "best",
    trust_imports: bool = False,
) -> None:
    """Serve a run or an export over HTTP until interrupted: `kiln serve`. Needs the `serve`
    extra."""
    from kiln.deploy import check_serve

    check_serve()  # one line naming the extra, before FastAPI is imported
    from kiln.deploy.serve import serve as run_server
    from kiln.deploy.uploads import MB, Limits

    logs.ensure()
    limits = Limits(int(max_upload_mb * MB), max_pixels, max_images)
    with trusting(trust_imports):
        run_server(_path(target), host, port, token=token, limits=limits, max_batch=max_batch,
                   log=_log, checkpoint=checkpoint)  # fmt: skip


def tune(
    config: Config = None,
    overrides: Overrides = None,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    verbose: bool = False,
    **keywords: Any,
) -> StudyResult:
    """Search the config's `tune.space` with Optuna: `kiln tune`. Each trial is a run in
    RUN_DIR/STUDY/; returns the best value and parameters and the study's files (best.yaml,
    trials.csv, report.html). Needs the `tune` extra."""
    from kiln.tune.run import tune as run_study

    logs.ensure()
    extra = _overrides(overrides, keywords)
    source = config.to_dict() if isinstance(config, RunConfig) else config
    return run_study(source, extra, trials=trials, timeout=timeout, storage=storage,
                     study=study, workers=workers, verbose=verbose)  # fmt: skip


def lr_find(
    config: Config = None,
    overrides: Overrides = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    output: str | Path | None = None,
    **keywords: Any,
) -> LrFindResult:
    """The learning-rate range test: `kiln tune --lr-find`. One batch per lr from `start_lr`
    to `end_lr`; returns the suggestion and writes lr_find.png/.csv/.json into `output`."""
    from kiln.tune.lr_find import lr_find as range_test

    cfg = _config(config, _overrides(overrides, keywords))
    return range_test(cfg, start=start_lr, end=end_lr, steps=steps, output=output)


def compare(*runs: str | Path | Run, output: str | Path | None = None) -> Comparison:
    """Two or more runs side by side: learning curves and final metrics (`kiln compare`).
    `output=` (.html or .png) also writes them to a file."""
    if len(runs) == 1 and isinstance(runs[0], (list, tuple)):
        runs = tuple(runs[0])
    from kiln.evaluate.compare import compare as compare_runs

    return compare_runs([_path(r) for r in runs], output)


def summary(
    target: str | Path | Run,
    overrides: Overrides = None,
    *,
    input: str | None = None,
    batch: int = 64,
    classes: int = 10,
    **keywords: Any,
) -> ModelSummary:
    """The per-layer table of a model by name (overrides: model.* keys) or of a run, as
    trained: `kiln summary`. `input` is CxHxW, e.g. "3x32x32"."""
    from kiln.engine.summary import summarize

    extra = _overrides(overrides, keywords)
    return summarize(_path(target), extra, input=input, batch=batch, classes=classes)


def _log(message: str) -> None:
    logs.ensure().info(message)


def trusting(trusted: bool):
    """`trust_imports=True` of an API call; False leaves an enclosing `kiln.trust_imports()`."""
    return trust_imports() if trusted else contextlib.nullcontext()
