"""What the Python API hands back about runs: a `Run` (kiln.train, kiln.resume, `Run.open`), an
`Evaluation` (kiln.evaluate) and a `Plot` (`run.plot("confusion")`). Each has attributes,
`to_dict()` and an HTML view for notebooks; what is task-specific in them (how a metric reads,
what an evaluation shows) comes from the run's Task."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.config import RunConfig
from kiln.errors import RunError
from kiln.evaluate import notebook as nb
from kiln.rundir import RunDir
from kiln.tasks import Task, get_task

__all__ = ["Evaluation", "Plot", "Run"]


def _task(cfg: RunConfig) -> type[Task]:
    from kiln.models import import_user_modules

    import_user_modules(cfg.imports)  # a task of the user's own
    return get_task(cfg.task)


@dataclass(repr=False)
class Run:
    """A run directory and what is known of it: its config, one row per epoch (`history`) and
    the test evaluation of its best checkpoint (`test`). `Run.open(path)` reads one back."""

    path: Path
    config: RunConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """A finished (or interrupted) run read from its folder."""
        from kiln.evaluate.plots import read_metrics
        from kiln.tasks.common import read_eval

        run = RunDir.open(path)
        return cls(run.path, run.load_config(), read_metrics(run), read_eval(run))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def task(self) -> type[Task]:
        return _task(self.config)

    @property
    def monitor(self) -> str:
        """The value that picked the best checkpoint (val_acc, val_rmse, val_miou, ...)."""
        return self.config.train.early_stop.monitor

    @property
    def best_epoch(self) -> dict[str, Any] | None:
        """The row of metrics.csv best.pt was saved at (the first best monitored value)."""
        rows = [r for r in self.history if self.monitor in r]
        if not rows:
            return None
        pick = {"min": min, "max": max}[self.task.direction(self.monitor)]
        return pick(rows, key=lambda r: r[self.monitor])

    @property
    def best(self) -> float | None:
        """The best value of the monitored metric."""
        row = self.best_epoch
        return None if row is None else row[self.monitor]

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """The task's numbers: `test` (eval-test.json), `best` and `last` (epochs' rows)."""
        return {"test": self.test or {}, "best": self.best_epoch or {},
                "last": self.history[-1] if self.history else {}}  # fmt: skip

    @property
    def best_val_acc(self) -> float | None:
        """Classification: the best validation accuracy (None for tasks without accuracy)."""
        accs = [row["val_acc"] for row in self.history if "val_acc" in row]
        return max(accs) if accs else None

    @property
    def test_acc(self) -> float | None:
        """Classification: the test accuracy of the best checkpoint (None otherwise)."""
        return None if self.test is None else self.test.get("accuracy")

    @property
    def plots(self) -> list[str]:
        """The names `plot()` shows now (plots/NAME.png)."""
        return sorted(p.stem for p in (self.path / "plots").glob("*.png"))

    def plot(self, name: str = "curves", checkpoint: str = "best") -> Plot:
        """One of the run's plots (plots/NAME.png: curves, confusion, samples, mistakes, ...,
        as the task makes them); drawn now, with `kiln report`, if the run has none yet."""
        if name not in self.plots:
            from kiln.engine.evaluate import report_run

            report_run(self.path, checkpoint=checkpoint)
        if name not in self.plots:
            raise RunError(
                f"{self.path} has no plot '{name}'; its plots: {', '.join(self.plots) or 'none'}"
            )
        return Plot(self.path / "plots" / f"{name}.png")

    def headline(self) -> str:
        """The best monitored value and the test figure, as the task reads them."""
        task, parts = self.task, []
        row = self.best_epoch
        if row is not None:
            value = task.format_value(self.monitor, row[self.monitor])
            parts.append(f"best {self.monitor} {value} at epoch {row['epoch']:.0f}")
        if self.test:
            parts.append(f"test {task.headline(self.test)}".rstrip())
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "task": self.config.task, "monitor": self.monitor,
                "best": self.best, "best_epoch": self.best_epoch, "history": self.history,
                "test": self.test, "config": self.config.to_dict()}  # fmt: skip

    def __repr__(self) -> str:
        shown = self.headline()
        return f"Run('{self.path}', task={self.config.task}{', ' if shown else ''}{shown})"

    def _repr_html_(self) -> str:
        task, cfg = self.task, self.config
        last = self.history[-1] if self.history else {}
        items = [
            ("task", cfg.task),
            ("data", cfg.data.name),
            ("model", cfg.model.name),
            ("epochs", f"{len(self.history)} of {cfg.train.epochs}"),
            ("time", f"{sum(r.get('seconds', 0.0) for r in self.history):.1f} s"),
        ]
        if self.best_epoch is not None:
            best = self.best_epoch
            items.append((f"best {self.monitor}",
                          f"{task.format_value(self.monitor, best[self.monitor])} "
                          f"(epoch {best['epoch']:.0f})"))  # fmt: skip
        for key in ("train_loss", "val_loss"):
            if key in last:
                items.append((f"last {key.replace('_', ' ')}", task.format_value(key, last[key])))
        test = ""
        if self.test:
            test = "<h4>Test (best checkpoint)</h4>" + task.eval_html(self.test)
        return nb.view(
            f"Run {self.name}",
            nb.key_values(items),
            test,
            self._curves_html(),
            '<p class="sub">run.plot("NAME") shows more: '
            + ", ".join(p for p in self.plots if p != "curves")
            + "</p>"
            if len(self.plots) > 1
            else "",
            subtitle=str(self.path),
        )

    def _curves_html(self) -> str:
        if not self.history:
            return ""
        curves = self.path / "plots" / "curves.png"
        if curves.is_file():
            return nb.png(curves, "training curves")
        from kiln.evaluate.plots import curves_figure

        task = self.task
        fig = curves_figure(self.history, self.best_epoch, task.metric, percent=task.percent)
        return nb.png(nb.figure_png(fig), "training curves")


class Evaluation(Mapping):
    """What kiln.evaluate returns: every number of eval-<split>.json, as keys (`ev["accuracy"]`)
    and attributes (`ev.accuracy`), with the run's task's HTML view."""

    def __init__(self, result: dict[str, Any], task: type[Task]):
        self._result, self._task = dict(result), task

    def __getitem__(self, key: str) -> Any:
        return self._result[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._result)

    def __len__(self) -> int:
        return len(self._result)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_result"][name]
        except KeyError:
            raise AttributeError(f"this evaluation has no '{name}'") from None

    @property
    def path(self) -> Path:
        """The eval-<split>.json it was saved to."""
        return Path(self._result["run"]) / f"eval-{self._result['split']}.json"

    def to_dict(self) -> dict[str, Any]:
        return dict(self._result)

    def __repr__(self) -> str:
        r = self._result
        return (
            f"Evaluation('{r.get('run')}', split={r.get('split')}, "
            f"checkpoint={r.get('checkpoint')}, {self._task.headline(r)})"
        )

    def _repr_html_(self) -> str:
        r = self._result
        title = f"{Path(str(r.get('run'))).name}: {r.get('split')} split"
        sub = f"{r.get('checkpoint')} checkpoint (epoch {r.get('epoch')}), saved to {self.path}"
        return nb.view(title, self._task.eval_html(r), subtitle=sub)


@dataclass
class Plot:
    """A PNG of a run; a notebook shows the picture."""

    path: Path

    def _repr_png_(self) -> bytes:
        return self.path.read_bytes()

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path)}
