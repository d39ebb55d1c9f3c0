"""`kiln tune`: check the config, then run the study here or in K local worker processes, then
write the study's report. The library door is `kiln.tune.tune(...)`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.config import RunConfig, build_config
from kiln.errors import ConfigError, RunError, require
from kiln.io import write_text_atomic
from kiln.secrets import STORAGE_VARIABLE
from kiln.tune.storage import redact
from kiln.tune.study import Settings, make_settings, open_study
from kiln.tune.worker import TuneInterrupted, command_line, interrupted_message, run_worker

log = logging.getLogger("kiln.tune")


@dataclass
class StudyResult:
    """What `kiln.tune.tune` returns: where the study is, its best trial and its files."""

    name: str
    folder: Path
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "folder": str(self.folder),
            "storage": self.storage,
            "best_value": self.best_value,
            "best_params": self.best_params,
            "files": {k: str(v) for k, v in self.files.items()},
            "states": self.states,
        }

    def _repr_html_(self) -> str:
        from kiln.evaluate import notebook as nb

        states = ", ".join(f"{n} {k}" for k, n in sorted(self.states.items()))
        items = [("trials", states or "none"), ("best value", self.best_value),
                 *((f"best {k}", v) for k, v in self.best_params.items()),
                 *((f"{k} file", v) for k, v in self.files.items())]  # fmt: skip
        history = self.folder / "plots" / "history.png"
        shown = nb.png(history, "optimization history") if history.is_file() else ""
        return nb.view(f"Study {self.name}", nb.key_values(items), shown,
                       subtitle=str(self.folder))  # fmt: skip


def tune(
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    worker_index: int = 0,
    report: bool = True,
    verbose: bool = False,
    resume_hint: str = "",
) -> StudyResult:
    """Search `tune.space` of a config: N trials shared by `workers` processes, each trial a
    normal run in RUN_DIR/STUDY/; then best.yaml, trials.csv and report.html there."""
    require("optuna", "tune", "kiln tune")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    path = config if isinstance(config, (str, Path)) else None
    if isinstance(config, RunConfig):
        cfg = build_config(config.to_dict(), overrides)
    else:
        cfg = build_config(config, overrides)
    s = make_settings(cfg, path, trials=trials, timeout=timeout, storage=storage, study=study)
    hint = resume_hint or command_line()
    if workers == 1 and worker_index:  # started by `--workers K`, which prints the summary
        tag = f"[worker {worker_index}] "
        try:
            run_worker(s, cfg, worker_index=worker_index, verbose=verbose, tag=tag)
        except TuneInterrupted:
            raise TuneInterrupted(f"{tag}stopped; its unfinished trial does not count") from None
    elif workers == 1:
        log.info(_opening(s, 1))
        run_worker(s, cfg, verbose=verbose, resume_hint=hint)
    else:
        log.info(_opening(s, workers))
        open_study(s, cfg)  # created once here: the workers only load it
        _run_workers(s, cfg, workers, verbose, hint)
    if not report:
        return StudyResult(s.name, s.folder, s.storage, None, {})
    return finish(s, cfg)


def _opening(s: Settings, workers: int) -> str:
    keys = ", ".join(p.key for p in s.params)
    who = f" with {workers} workers" if workers > 1 else ""
    return (
        f"Study '{s.name}': {s.trials} trials{who}, {s.direction} {s.metric} over {keys}; "
        f"pruner {s.pruner}; storage {redact(s.storage)}"
    )


def finish(s: Settings, cfg: RunConfig) -> StudyResult:
    """Write the study's files and print where they are."""
    from kiln.tune.report import decoded_params, shown, summary, write_report

    study, _ = open_study(s, cfg, create=False)
    files = write_report(study, s, cfg)
    states = summary(study, s)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(states.items()))
    log.info(f"Study '{s.name}': {counts or 'no trials'} -> {s.folder}")
    best_value, best_params = None, {}
    if "best" in files:
        best = study.best_trial
        best_value, best_params = best.value, decoded_params(best, s.params)
        log.info(f"Best: trial {best.number}, {s.metric} {best.value:.4f}  {shown(best_params)}")
        log.info(f"Best config: {files['best']}   (kiln train {files['best']})")
    else:
        log.info("No trial completed: no best config yet (see trials.csv for why)")
    log.info(f"Trials: {files['trials']}")
    log.info(f"Report: {files['report']}")
    return StudyResult(s.name, s.folder, s.storage, best_value, best_params, files, states)


def _run_workers(s: Settings, cfg: RunConfig, workers: int, verbose: bool, hint: str) -> None:
    """K workers on this machine sharing the study: this process and K-1 `kiln tune` processes,
    each pinned to its share of the cores (so that each trains with that many threads instead
    of all of them fighting over every core)."""
    spec = s.folder / "tune.yaml"  # the exact config, for the other workers to read
    write_text_atomic(spec, cfg.to_yaml())
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    shares = [cores[i::workers] if len(cores) >= workers else [] for i in range(workers)]
    procs = []
    for i in range(1, workers):
        args = [
            sys.executable, "-m", "kiln.cli", "tune", str(spec),
            "--study", s.name, "--trials", str(s.trials),
            "--worker-index", str(i + 1), "--no-report",
        ]  # fmt: skip
        if s.timeout is not None:
            args += ["--timeout", str(s.timeout)]
        if verbose:
            args.append("--verbose")
        # The storage URL (it may hold a password) goes by the environment, never in argv.
        proc = subprocess.Popen(args, env={**os.environ, STORAGE_VARIABLE: s.storage})
        _pin(proc.pid, shares[i])
        procs.append(proc)
    mine = os.sched_getaffinity(0) if shares[0] else None
    _pin(0, shares[0])
    try:
        run_worker(s, cfg, worker_index=1, verbose=verbose, resume_hint=hint, tag="[worker 1] ")
        codes = [p.wait() for p in procs]
    except (KeyboardInterrupt, TuneInterrupted):  # the others got the Ctrl-C too
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.terminate()
        study, _ = open_study(s, cfg, create=False)
        raise TuneInterrupted(interrupted_message(study, s, hint)) from None
    finally:
        if mine is not None:
            _pin(0, sorted(mine))
    if any(code == 130 for code in codes):
        study, _ = open_study(s, cfg, create=False)
        raise TuneInterrupted(interrupted_message(study, s, hint))
    failed = [(i + 2, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        which = ", ".join(f"worker {i} exited with {c}" for i, c in failed)
        raise RunError(f"{which} (its error is above); re-run the command to continue the study")


def _pin(pid: int, cores: list[int]) -> None:
    if cores:
        try:
            os.sched_setaffinity(pid, cores)
        except OSError:
            pass  # a worker already gone: its exit code says why
