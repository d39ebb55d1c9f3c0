"""What a study leaves in its folder: best.yaml (ready for `kiln train`), trials.csv, plots and a
self-contained report.html, all read back from the study's storage (any worker can write them)."""

from __future__ import annotations

import csv
import io
import math
from html import escape
from pathlib import Path
from typing import Any

import yaml

from kiln.config import RunConfig, build_config
from kiln.evaluate.plots import save
from kiln.io import write_text_atomic
from kiln.tune.space import Param, decode
from kiln.tune.storage import redact
from kiln.tune.study import Settings, counts


def decoded_params(trial, params: list[Param]) -> dict[str, Any]:
    """A trial's values as the config takes them (choices such as [128, 64] back from JSON)."""
    by_key = {p.key: p for p in params}
    out = {}
    for key, value in trial.params.items():
        p = by_key.get(key)
        out[key] = decode(value, p.choices) if p is not None and p.kind == "choice" else value
    return out


def status(trial) -> str:
    """complete, pruned, failed, running, or abandoned (a worker that went away)."""
    state = trial.state.name.lower()
    if state == "fail":
        return "failed" if "error" in trial.user_attrs else "abandoned"
    return state


def note(trial) -> str:
    attrs = trial.user_attrs
    if "error" in attrs:
        return attrs["error"].strip().splitlines()[0][:300] if attrs["error"].strip() else ""
    if status(trial) == "abandoned":
        return attrs.get("abandoned", "interrupted or its worker was lost; not counted")
    if status(trial) == "pruned" and trial.last_step is not None:
        return f"pruned after epoch {trial.last_step}"
    return ""


def trial_rows(study, s: Settings) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.value is not None else _last_value(t)
        rows.append(
            {
                "number": t.number,
                "state": status(t),
                s.metric: "" if value is None else value,
                **decoded_params(t, s.params),
                "best_epoch": t.user_attrs.get("best_epoch", ""),
                "epochs": t.user_attrs.get("epochs", t.last_step or ""),
                "seconds": t.user_attrs.get("seconds", ""),
                "run": t.user_attrs.get("run", ""),
                "note": note(t),
            }
        )
    return rows


def _last_value(trial) -> float | None:
    if trial.last_step is None:
        return None
    return trial.intermediate_values.get(trial.last_step)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue())
    return path


def _cell(value: Any) -> Any:
    return (
        yaml.safe_dump(value, default_flow_style=True).strip() if isinstance(value, list) else value
    )


def best_config(study, s: Settings, cfg: RunConfig) -> RunConfig:
    """The study's config with the best trial's values, every default filled in."""
    from kiln.engine.setup import resolve

    tree = cfg.to_dict()
    tree["run"]["name"] = f"{s.name}-best"
    tree["run"]["report"] = cfg.run.report
    best = resolve(build_config(tree, decoded_params(study.best_trial, s.params)))
    return best


def write_best(study, s: Settings, cfg: RunConfig, path: Path) -> Path:
    best = study.best_trial
    tree = best_config(study, s, cfg).to_dict()
    tree.pop("tune", None)  # a config to train, not to search again
    values = ", ".join(f"{k}={v}" for k, v in decoded_params(best, s.params).items())
    header = (
        f"# Best of study '{s.name}': trial {best.number}, {s.metric} {best.value:.4f}\n"
        f"# ({values})\n"
        f"# Train it: kiln train {path}\n"
    )
    write_text_atomic(path, header + yaml.safe_dump(tree, sort_keys=False))
    return path


# Plots -----------------------------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 4.0, left: float = 0.1):
    """Fixed margins: a constrained layout measures every label and costs most of a plot's time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left, right=0.97, top=1 - 0.45 / height, bottom=0.55 / height)
    return fig


def plot_history(study, s: Settings, path: Path) -> Path:
    """Each trial's value (pruned ones at their last epoch's value) and the best so far."""
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    fig = _figure()
    ax = fig.add_subplot()
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.PRUNED]
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", zorder=3)
    pts = [(t.number, _last_value(t)) for t in pruned if _last_value(t) is not None]
    if pts:
        xs, ys = zip(*pts, strict=True)
        ax.scatter(xs, ys, marker="x", color="#999999", label="pruned (last epoch)", zorder=2)
    if done:
        pick = min if s.direction == "minimize" else max
        best, xs, ys = None, [], []
        for t in sorted(done, key=lambda t: t.number):
            best = t.value if best is None else pick(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="#d62728", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(s.metric)
    ax.set_title(f"Optimization history ({s.direction} {s.metric})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save(fig, path, dpi=110)


def importances(study) -> dict[str, float]:
    """fANOVA importances of the parameters (empty until two trials with different values
    have completed)."""
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def plot_importance(study, s: Settings, path: Path) -> Path:
    scores = importances(study)
    longest = max((len(p.key) for p in s.params), default=8)
    fig = _figure(7.0, max(2.2, 0.5 * len(s.params) + 1.2), left=min(0.45, 0.03 + 0.0125 * longest))
    ax = fig.add_subplot()
    if scores:
        names = list(scores)[::-1]
        ax.barh(names, [scores[n] for n in names], color="#1f77b4")
        ax.set_xlabel(f"importance for {s.metric} (fANOVA)")
        ax.set_xlim(0, 1)
    else:
        ax.text(0.5, 0.5, "needs at least two completed trials", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Parameter importances")
    return save(fig, path, dpi=110)


def plot_epochs(study, s: Settings, path: Path) -> Path:
    """Every trial's metric per epoch: what the pruner compared."""
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    fig = _figure()
    ax = fig.add_subplot()
    for t in study.get_trials(deepcopy=False):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        pruned = t.state == TrialState.PRUNED
        ax.plot(
            steps,
            [t.intermediate_values[k] for k in steps],
            marker="o",
            markersize=3,
            color="#999999" if pruned else None,
            alpha=0.6 if pruned else 0.9,
            linewidth=1,
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(s.metric)
    ax.set_title("Each trial per epoch (grey: pruned)")
    ax.grid(alpha=0.3)
    return save(fig, path, dpi=110)


# The report ------------------------------------------------------------------------------------
def write_report(study, s: Settings, cfg: RunConfig) -> dict[str, Path]:
    """best.yaml, trials.csv, plots/*.png and report.html in the study's folder."""
    folder = s.folder
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, s)
    out = {"trials": write_csv(rows, folder / "trials.csv")}
    has_best = any(t.value is not None for t in study.get_trials(deepcopy=False) if counts(t))
    if has_best and _completed(study):
        out["best"] = write_best(study, s, cfg, folder / "best.yaml")
    plots = {
        "history": plot_history(study, s, folder / "plots" / "history.png"),
        "importance": plot_importance(study, s, folder / "plots" / "importance.png"),
        "epochs": plot_epochs(study, s, folder / "plots" / "epochs.png"),
    }
    out.update(plots)
    out["report"] = _html(study, s, rows, plots, out.get("best"), folder / "report.html")
    return out


def _completed(study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def summary(study, s: Settings) -> dict[str, int]:
    tally: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        tally[status(t)] = tally.get(status(t), 0) + 1
    return tally


def _html(study, s, rows, plots, best_path, path: Path) -> Path:
    from kiln.evaluate.report import duration, html_page, inline_png, key_value_table, table

    tally = summary(study, s)
    seconds = sum(float(r["seconds"] or 0) for r in rows)
    overview = [
        ("study", s.name),
        ("storage", redact(s.storage)),
        ("objective", f"{s.direction} {s.metric} (best epoch of each trial)"),
        ("trials", ", ".join(f"{n} {k}" for k, n in sorted(tally.items())) or "none"),
        ("counted", f"{sum(map(counts, study.get_trials(deepcopy=False)))} of {s.trials}"),
        ("pruner", s.pruner),
        ("sampler", f"{s.sampler} (seed {s.seed})"),
        ("training time", duration(seconds)),
    ]
    if best_path is not None:
        b = study.best_trial
        overview += [
            ("best", f"trial {b.number}: {s.metric} {b.value:.4f}"),
            ("best values", shown(decoded_params(b, s.params))),
            ("train it", f"kiln train {best_path}"),
        ]
    space = [(p.key, p.describe()) for p in s.params]
    header = list(rows[0]) if rows else []
    cells = [[_text(r.get(k, "")) for k in header] for r in rows]
    captions = {
        "history": "Each completed trial's value (x: pruned, at its last epoch); the red line is "
        "the best so far.",
        "importance": "How much of the metric's variation each parameter explains (fANOVA over "
        "completed trials).",
        "epochs": "The metric per epoch of every trial: what the pruner compared.",
    }
    figures = "".join(
        f"<figure>{inline_png(p, name)}<figcaption>{escape(captions[name])}</figcaption></figure>"
        for name, p in plots.items()
    )
    body = [
        f"<h1>Study {escape(s.name)}</h1>",
        f'<p class="sub">kiln tune: {escape(s.direction)} {escape(s.metric)} over '
        f"{len(s.params)} parameter(s)</p>",
        f"<h2>Summary</h2>{key_value_table(overview)}",
        f"<h2>Search space</h2>{key_value_table(space)}",
        f"<h2>Plots</h2>{figures}",
        f"<h2>Trials</h2>{table(header, cells, numeric_from=2)}",
    ]
    write_text_atomic(path, html_page(f"Kiln study: {s.name}", body))
    return path


def shown(values: dict[str, Any]) -> str:
    """key=value pairs, floats to 4 significant digits (best.yaml keeps every digit)."""
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


def _text(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(_cell(value))
