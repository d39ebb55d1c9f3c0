"""`tune.space`: which config keys a study varies, and how. Parsed and checked before any trial.

    tune:
      space:
        optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}
        model.dropout: {uniform: [0, 0.5]}
        data.batch_size: {int: [32, 256], log: true}
        optim.name: {choice: [sgd, adam]}
        model.hidden: {choice: [[64], [128, 64]]}

Each key is a config key (dots, or a short alias such as `lr`); each value is one distribution.
A key that is not in the config, or a value the config rejects, fails here, naming the key,
before the study starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from kiln.config import ALIASES, RunConfig, build_config
from kiln.errors import ConfigError

KINDS = ("log_uniform", "uniform", "int", "int_uniform", "log_int", "choice")
EXAMPLE = (
    "write e.g. {log_uniform: [1.0e-4, 1.0e-1]}, {uniform: [0, 0.5]}, {int: [16, 256]} "
    "(add log: true for a log scale), or {choice: [sgd, adam]}"
)
_PLAIN = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Param:
    """One searched key: `kind` is float, int or choice; `low`/`high` bound numbers."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """Ask an optuna trial for a value; lists and mappings among choices travel as JSON."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        encoded = [encode(c) for c in self.choices]
        return decode(trial.suggest_categorical(self.key, encoded), self.choices)

    def samples(self) -> list[Any]:
        """Values to check against the config: both ends and an inner point, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return sorted({self.low, self.high, (self.low + self.high) // 2})
        if self.log:
            inner = math.sqrt(self.low * self.high)
        else:
            inner = self.low + (self.high - self.low) / 3
        return [self.low, inner, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice of {list(self.choices)}"
        scale = "log " if self.log else ""
        return f"{scale}{self.kind} in [{self.low}, {self.high}]"


def encode(choice: Any) -> Any:
    """Optuna stores only plain values as categories: a list such as [128, 64] becomes JSON."""
    return choice if isinstance(choice, _PLAIN) else json.dumps(choice, separators=(",", ":"))


def decode(stored: Any, choices: tuple[Any, ...]) -> Any:
    for choice in choices:
        if encode(choice) == stored:
            return choice
    return stored


def parse_space(space: dict[str, Any]) -> list[Param]:
    """tune.space -> Params (keys resolved through the aliases), or a ConfigError naming the key."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            "tune.space is empty: list the keys to search in the config, e.g.\n"
            "  tune:\n    space:\n      optim.lr: {log_uniform: [1.0e-4, 1.0e-1]}"
        )
    params: dict[str, Param] = {}
    written: dict[str, str] = {}
    for raw_key, spec in space.items():
        key = ALIASES.get(str(raw_key), str(raw_key))
        if key in params:
            raise ConfigError(
                f"tune.space: '{written[key]}' and '{raw_key}' both name {key}; keep one"
            )
        params[key], written[key] = parse_one(key, spec), str(raw_key)
    return list(params.values())


def parse_one(key: str, spec: Any) -> Param:
    where = f"tune.space.{key}"
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}: expected one distribution, got {spec!r}; {EXAMPLE}")
    kinds = [k for k in spec if k in KINDS]
    extra = [k for k in spec if k not in KINDS and k != "log"]
    if extra or len(kinds) != 1:
        what = f"unknown {', '.join(map(repr, extra))}" if extra else f"{len(kinds)} kinds"
        raise ConfigError(
            f"{where}: {what}; use exactly one of {', '.join(KINDS)} (got {spec!r}); {EXAMPLE}"
        )
    kind = kinds[0]
    value = spec[kind]
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if kind == "choice":
        if log:
            raise ConfigError(f"{where}: log applies to numbers, not to a choice")
        if not isinstance(value, list) or not value:
            raise ConfigError(
                f"{where}: choice takes a non-empty list, e.g. {{choice: [sgd, adam]}}"
            )
        if len({encode(c) for c in value}) != len(value):
            raise ConfigError(f"{where}: choice lists a value twice ({value!r})")
        return Param(key, "choice", choices=tuple(value))
    low, high = _bounds(where, kind, value)
    if kind in ("log_uniform", "log_int"):
        log = True
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs a positive lower bound, got {low}")
    return Param(key, "int" if "int" in kind else "float", low, high, log)


def _bounds(where: str, kind: str, value: Any) -> tuple[Any, Any]:
    integer = "int" in kind
    number = int if integer else (int, float)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, number) and not isinstance(v, bool) for v in value)
    ):
        what = "two integers" if integer else "two numbers"
        raise ConfigError(f"{where}: {kind} takes [low, high], {what}; got {value!r}")
    low, high = value
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    return (low, high) if integer else (float(low), float(high))


def check_space(base: dict[str, Any], params: list[Param]) -> None:
    """Build the config once per sample value of each key (the rest as in `base`): a typo in a
    key or a value the config cannot take fails now, in a second, rather than in trial 7."""
    from kiln.engine.setup import resolve

    for param in params:
        for value in param.samples():
            try:
                resolve(build_config(base, {param.key: value}))
            except ConfigError as exc:
                detail = str(exc).replace("invalid config (dict + overrides):\n", "").strip()
                if "unknown key" in detail or "has no option" in detail:
                    raise ConfigError(
                        f"tune.space.{param.key}: not a key of this config:\n  {detail}\n"
                        "Write the key as `kiln config show` prints it (dots between sections)."
                    ) from None
                raise ConfigError(
                    f"tune.space.{param.key}: the config does not take {value!r} "
                    f"({param.describe()}):\n  {detail}\nNarrow the range to what the key takes."
                ) from None


def apply(base: dict[str, Any], values: dict[str, Any]) -> RunConfig:
    """The trial's config: the base tree with the sampled values set."""
    return build_config(base, values)
