"""RunConfig: the one validated description of a run (YAML file + dotted overrides).

Every key has a default, so `kiln train` with nothing else is a complete run. Validation happens
before any data is read, and each error names the key that is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kiln.errors import ConfigError
from kiln.secrets import mask, refuse_literal_password

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "plateau")

# Keys that moved into a task's own section: the error names the new one.
MOVED = {"train.dice_weight": "segment.dice_weight", "train.ce_weight": "segment.ce_weight"}

# Short names for the keys people type most.
ALIASES = {
    "data": "data.name",
    "model": "model.name",
    "epochs": "train.epochs",
    "batch": "data.batch_size",
    "lr": "optim.lr",
    "device": "train.device",
    "seed": "train.seed",
    "name": "run.name",
}


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: 10x faster when there
    """YAML as people write it: `3e-3` is a float (plain YAML 1.1 would read it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


def parse_size(text: str, key: str = "data.memory") -> int:
    """'2GB', '500 MB', '1.5g' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS:
        raise ConfigError(f"{key}={text!r}: expected auto, true, false or a size like 2GB or 500MB")
    return int(float(match.group(1)) * UNITS[unit])


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'X'?)' for the closest choice, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


DURATION_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(text: Any, key: str = "train.time") -> float:
    """'90s', '10m', '1.5h' or a number of seconds -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if isinstance(text, bool) or match is None or unit not in DURATION_UNITS:
        raise ConfigError(f"{key}={text!r}: expected a duration like 90s, 10m or 1.5h")
    return float(match.group(1)) * DURATION_UNITS[unit]


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NormalizeValues(_Section):
    """Fixed normalization, as the tutorials write it: `{mean: [0.5], std: [0.5]}` (one value
    for every channel, or one per channel)."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @field_validator("std")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std must be above 0")
        return v


class DataConfig(_Section):
    name: str = "digits"
    root: str | None = None
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="0: no validation split (best.pt is the last epoch)"
    )
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="folder/csv without a test split")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    drop_last: bool = Field(False, description="skip each epoch's last, smaller training batch")
    normalize: bool | NormalizeValues = Field(
        True, description="true: the training split's mean/std; false: none; or {mean, std}"
    )
    subset: int | None = Field(
        None, ge=1, description="train on a fixed, stratified random sample of this many images"
    )
    subset_eval: int | None = Field(
        None, ge=1, description="also sample this many validation and test images (stratified)"
    )
    resize: Literal["cover", "fit", "stretch"] = Field(
        "cover", description="to data.size: cover and center-crop, fit and pad, or stretch"
    )
    # A person's own images (data.name=folder|csv)
    csv: str | None = None
    file_column: str | int = Field("file", description="a column's name or position (0 first)")
    label_column: str | int = Field("label", description="a column's name or position (0 first)")
    label_sep: str | None = Field(
        None, min_length=1, description="csv: several labels per image, split on this: ;"
    )
    split_column: str = "split"
    targets: list[str] = Field(
        default_factory=list, description="task=regress: the numeric CSV columns to predict"
    )
    features: list[str] = Field(
        default_factory=list, description="data.name=table: input columns (default: the rest)"
    )
    channels: Literal[1, 3] | None = Field(None, description="default: what most images are")
    size: list[int] | None = Field(None, description="[height, width]; default: the commonest")
    augment: str | list[Any] = "none"
    workers: int | None = Field(None, ge=0, description="DataLoader workers; default: cores")
    memory: bool | str = Field(
        "auto", description="auto, true, false, or a budget like 2GB (see kiln.data.placement)"
    )
    balance: Literal["none", "weights", "sampler"] = "none"
    on_bad: Literal["error", "skip"] = "error"
    cache: str = Field(
        "auto",
        description="folder/csv: keep the decoded images for later runs; auto (in decoded/ under "
        "$KILN_CACHE, else ~/.cache/kiln), off, or a folder (see kiln.data.cache)",
    )

    @field_validator("cache", mode="before")
    @classmethod
    def _cache(cls, v: Any) -> Any:
        if isinstance(v, bool):  # YAML reads a bare `off` as false, `on` as true
            return "auto" if v else "off"
        if not isinstance(v, str) or not v.strip():
            raise ValueError("expected auto, off, or the folder to keep decoded images in")
        return v.strip()

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if isinstance(v, bool) or v == "auto":
            return v
        try:
            parse_size(v)
        except ConfigError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return str(v)

    @field_validator("normalize", mode="before")
    @classmethod
    def _normalize(cls, v: Any) -> Any:
        expected = "true, false or {mean: [...], std: [...]}"
        if isinstance(v, (bool, NormalizeValues)):
            return v
        if not isinstance(v, dict):
            raise ValueError(expected)
        try:
            return NormalizeValues.model_validate(v)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise ValueError(f"{expected} ({problems})") from None

    @field_validator("file_column", "label_column")
    @classmethod
    def _column(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v < 0:
            raise ValueError("a column position counts from 0")
        return v

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v, v]
        valid = isinstance(v, list) and len(v) == 2
        if v is not None and not (valid and all(isinstance(n, int) and n > 0 for n in v)):
            raise ValueError("must be a positive integer or [height, width]")
        return v


class ModelConfig(BaseModel):
    """`name` picks a registered model; the keys below apply to every model, and every other key
    is passed to the model's builder (`model.hidden`, `model.depth`, ...)."""

    model_config = ConfigDict(extra="allow")
    name: str = "convnet"  # fast and accurate on small images; `kiln list models` for more
    init: Literal["default", "kaiming", "xavier", "orthogonal"] = "default"
    weights: str | None = Field(None, description="start from these weights: a run, .pt or .pth")
    freeze: Literal["none", "backbone"] = "none"
    unfreeze_epoch: int | None = Field(None, ge=1, description="train the backbone from this epoch")
    tta: Literal["none", "flip", "flip_translate"] = Field(
        "none",
        description="evaluate and predict on each image and its mirror image, averaged "
        "(flip_translate: also both shifted by a pixel, six views)",
    )
    layer_sizes: dict[str, list[int]] | None = Field(
        None, description="written by kiln prune --structured: the narrower layers' sizes"
    )

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _unfreeze_needs_freeze(self) -> ModelConfig:
        if self.unfreeze_epoch is not None and self.freeze == "none":
            raise ValueError("model.unfreeze_epoch needs model.freeze=backbone")
        return self

    def common(self) -> dict[str, Any]:
        """The keys every model has, as set (for writing back into a resolved config)."""
        keys = ("init", "weights", "freeze", "unfreeze_epoch", "tta", "layer_sizes")
        return {k: getattr(self, k) for k in keys}


class OptimConfig(_Section):
    name: str = "adam"
    lr: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    l1: float = Field(0.0, ge=0.0)
    backbone_lr: float | None = Field(None, gt=0.0, description="default: optim.lr")
    betas: list[float] | None = Field(None, description="adam/adamw: [beta1, beta2]")
    eps: float | None = Field(None, gt=0.0, description="adam/adamw/rmsprop/adagrad")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v.lower() not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer '{v}'{did_you_mean(v.lower(), OPTIMIZERS)}; "
                f"choose one of: {', '.join(OPTIMIZERS)}"
            )
        return v.lower()

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 2 or not all(0.0 <= b < 1.0 for b in v)):
            raise ValueError("must be two numbers in [0, 1), e.g. [0.9, 0.999]")
        return v

    @model_validator(mode="after")
    def _used(self) -> OptimConfig:
        if self.betas is not None and self.name not in ("adam", "adamw"):
            raise ValueError(f"optim.betas is for adam and adamw, not {self.name}")
        if self.eps is not None and self.name == "sgd":
            raise ValueError("optim.eps is for adam, adamw, rmsprop and adagrad, not sgd")
        return self


class SchedConfig(_Section):
    name: str = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0.0)
    step_size: int = Field(10, ge=1, description="epochs between decays (step)")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="decay factor (step, plateau)")
    patience: int = Field(
        10, ge=0, description="plateau: epochs without improvement before the lr decays"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v.lower() not in SCHEDULERS:
            raise ValueError(
                f"unknown scheduler '{v}'{did_you_mean(v.lower(), SCHEDULERS)}; "
                f"choose one of: {', '.join(SCHEDULERS)}"
            )
        return v.lower()

    @model_validator(mode="after")
    def _no_warmup_on_plateau(self) -> SchedConfig:
        if self.name == "plateau" and self.warmup_epochs:
            raise ValueError("sched.name=plateau has no warm-up: leave sched.warmup_epochs at 0")
        if self.name == "plateau" and self.gamma >= 1.0:
            raise ValueError("sched.name=plateau lowers the lr by sched.gamma: set it below 1")
        return self


class EarlyStopConfig(_Section):
    monitor: str = Field("auto", description="auto: val_<the task's metric>, e.g. val_acc")
    patience: int | None = Field(None, ge=1, description="epochs without improvement; off if unset")

    @field_validator("monitor")
    @classmethod
    def _known(cls, v: str) -> str:
        if v != "auto" and not re.fullmatch(r"(train|val)_[a-z][a-z0-9_]*", v):
            raise ValueError(
                f"unknown metric '{v}'; choose one of: auto, val_loss, train_loss, or "
                "val_/train_ and the task's metric (val_acc, train_acc for classify)"
            )
        return v


class TrainConfig(_Section):
    epochs: int = Field(20, ge=1)
    loss: Literal["auto", "mse", "l1", "huber"] = Field(
        "auto", description="auto: the task's (cross-entropy; mse for regress)"
    )
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that has it, fp32 on the CPU"
    )
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile the model; auto: off (it did not pay off in benchmarks/)"
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="channels-last memory format; auto: for convolutional models"
    )
    seed: int = 0
    deterministic: bool = False
    flush_denormal: Literal["auto"] | bool = Field(
        "auto",
        description="on the CPU, compute numbers below 1e-38 as zero while training: Adam's "
        "averages for units that stopped learning decay into that range, which CPUs compute "
        "many times slower; the mode is process-wide, so auto turns it on in the kiln command's "
        "own process and leaves yours (kiln.train from Python) as it is",
    )
    grad_clip: float | None = Field(None, gt=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    keep_zeros: bool = Field(
        False, description="conv/linear weights that are zero at the start stay zero (kiln prune)"
    )
    lookahead: bool = Field(
        False, description="average the weights over the last part of training (lookahead)"
    )
    early_stop: EarlyStopConfig = EarlyStopConfig()
    devices: Literal["auto"] | int = Field(
        1,
        description="processes training together (DDP; `kiln train` starts them with torchrun); "
        "data.batch_size stays the global batch; auto: one per GPU",
    )
    dist_timeout: float = Field(
        300.0, gt=0.0, description="seconds a process waits for the others before failing"
    )
    time: float | None = Field(
        None, gt=0.0, description="a time budget (90s, 10m, 1.5h): the epochs and the schedule "
        "are fitted to end by then, test and report included (train.epochs is ignored)",
    )  # fmt: skip

    @field_validator("time", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            return v
        try:
            return parse_duration(v)
        except ConfigError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    @field_validator("device")
    @classmethod
    def _known(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"unknown device '{v}'; use auto, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("devices", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("must be a number of processes (1 or more) or auto")


class RunSection(_Section):
    name: str | None = None
    dir: str = "runs"
    report: bool = Field(True, description="plots/ and report.html at the end of training")
    loggers: Literal["auto"] | list[str] = Field(
        "auto",
        description="where epochs are logged besides metrics.csv: tensorboard, csv, mlflow, "
        "wandb; auto: tensorboard when installed",
    )
    project: str = Field("kiln", description="the MLflow experiment / W&B project of the run")
    log_every: int | None = Field(
        None, ge=1, description="TensorBoard: the mean training loss every N steps, too"
    )

    @field_validator("name", "dir", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("loggers", mode="before")
    @classmethod
    def _loggers(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "auto":
            v = [v]
        for name in v if isinstance(v, list) else []:
            if name not in LOGGERS:
                raise ValueError(f"unknown logger '{name}'{did_you_mean(str(name), LOGGERS)}; "
                                 f"choose from: {', '.join(LOGGERS)}")  # fmt: skip
        return v


class TuneConfig(_Section):
    """`kiln tune`: a search over `space` (checked by kiln.tune.space); `kiln train` ignores it."""

    space: dict[str, Any] = Field(
        default_factory=dict, description="{key: {log_uniform|uniform|int|choice: ...}}"
    )
    metric: str = Field("auto", description="auto: train.early_stop.monitor (val_acc, ...)")
    direction: Literal["auto", "minimize", "maximize"] = "auto"
    pruner: Literal["median", "halving", "none"] = "median"
    sampler: Literal["tpe", "random"] = "tpe"
    trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds; no new trial after this")
    storage: str | None = Field(
        None,
        description="SQLAlchemy URL; default RUN_DIR/STUDY/study.db. A password goes in an "
        "environment variable: ${KILN_STORAGE}, or user:${DB_PASSWORD}@host",
    )
    study: str | None = Field(None, description="default: run.name, else the config file's name")
    seed: int | None = 0
    startup_trials: int = Field(5, ge=0, description="trials finished before pruning starts")
    warmup_epochs: int = Field(0, ge=0, description="epochs of each trial never pruned")

    @field_validator("storage")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        return refuse_literal_password(v)


class DistillConfig(_Section):
    """Knowledge distillation: the model learns from a trained run's softened outputs as well as
    from the labels (kiln/engine/distill.py; the loss is the task's `distill_loss`)."""

    teacher: str | None = Field(None, description="a trained run of the same task and classes")
    temperature: float = Field(4.0, gt=0.0, description="softens both models' outputs")
    alpha: float = Field(
        0.7, ge=0.0, le=1.0, description="weight of the teacher's term; 1 - alpha: the labels'"
    )


class RunConfig(_Section):
    """Every section below, plus the run's task's own section, named after the task (`segment:`,
    `gan:`): its schema belongs to the task (kiln/tasks/<task>/), which checks it."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    task: str = "classify"
    imports: list[str] = Field(
        default_factory=list, description="modules to import first: your own registered models"
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    sched: SchedConfig = SchedConfig()
    train: TrainConfig = TrainConfig()
    run: RunSection = RunSection()
    tune: TuneConfig = TuneConfig()
    distill: DistillConfig = DistillConfig()

    @model_validator(mode="after")
    def _sections_only(self) -> RunConfig:
        """Keys beyond the known ones can only be a task's section (checked with the task)."""
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                raise ValueError(f"{key}: unknown key; valid keys: {', '.join(_valid_keys(None))}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"cannot set '{key}': '{where}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML, so lists and booleans work on the command line."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. optim.lr=3e-3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key before '='")
    key = ALIASES.get(key, key)
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key, value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, ...)")
    return data


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and key in MOVED:
            msg = f"moved to {MOVED[key]} (the task's own section); set {MOVED[key]} instead"
        elif err["type"] == "extra_forbidden":
            section = key.rsplit(".", 1)[0] if "." in key else None
            valid = _valid_keys(section)
            hint = did_you_mean(key.rsplit(".", 1)[-1], valid)
            msg = f"unknown key{hint}; valid keys here: {', '.join(valid)}"
        elif "input" in err and err["type"] != "missing" and repr(err["input"]) not in msg:
            msg = f"{msg} (got {mask(repr(err['input']))})"  # unless the message quotes it already
        lines.append(f"  {key}: {msg}")
    return f"invalid config ({source}):\n" + "\n".join(lines)


def _valid_keys(section: str | None) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in section.split(".") if section else []:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return list(model.model_fields)


def build_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RunConfig:
    """Merge a YAML file (or dict) with overrides and validate the result."""
    if source is None:
        tree: dict[str, Any] = {}
        label = "defaults"
    elif isinstance(source, dict):
        tree = _copy_tree(source)
        label = "dict"
    else:
        tree = read_yaml(source)
        label = str(source)
    items = (
        overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    )
    for key, value in items:
        _set_dotted(tree, ALIASES.get(key, key), value)
    if overrides:
        label += " + overrides"
    unknown = [
        k for k, v in tree.items() if k not in RunConfig.model_fields and not isinstance(v, dict)
    ]
    if unknown:
        valid = ", ".join(_valid_keys(None))
        lines = "\n".join(
            f"  {key}: unknown key{did_you_mean(key, [*_valid_keys(None), *ALIASES])}; "
            f"valid keys here: {valid}"
            for key in unknown
        )
        raise ConfigError(f"invalid config ({label}):\n{lines}")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, label)) from None


def _copy_tree(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}
