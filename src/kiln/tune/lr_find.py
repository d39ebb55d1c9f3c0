"""`kiln tune --lr-find`: the learning-rate range test (Smith 2015; fastai's `lr_find`).

One mini-batch per learning rate, the rate growing exponentially from `start` to `end`, on a
fresh copy of the config's model (its own weights, if model.weights names some, are read and never
written). The sweep stops once the loss, as a debiased moving average, exceeds `diverge` times its
best. The suggestion is fastai's "steep" point: where the loss, smoothed afterwards over
neighbouring steps (a Gaussian, which unlike the moving average does not lag behind the rate),
falls fastest per decade of learning rate, looked for only before its minimum.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.config import RunConfig
from kiln.errors import ConfigError, RunError
from kiln.io import write_text_atomic


@dataclass
class LrFindResult:
    """The sweep (lrs, raw and smoothed losses), the suggestion and where the files are."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    min_div10: float
    stopped: str
    folder: Path

    @property
    def plot(self) -> Path:
        return self.folder / "lr_find.png"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "folder": str(self.folder), "plot": str(self.plot)}

    def _repr_html_(self) -> str:
        from kiln.evaluate import notebook as nb

        items = [
            ("suggested lr", f"{self.suggestion:.2e}"),
            ("minimum/10", f"{self.min_div10:.2e}"),
            ("steps", len(self.lrs)),
            ("stopped", self.stopped),
        ]
        shown = nb.png(self.plot, "loss against lr") if self.plot.is_file() else ""
        return nb.view("LR range test", nb.key_values(items), shown, subtitle=str(self.folder))


def lr_find(
    cfg: RunConfig,
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    diverge: float = 4.0,
    beta: float = 0.9,
    output: str | Path | None = None,
) -> LrFindResult:
    """Sweep, suggest, and write lr_find.png / .csv / .json into `output` (default
    RUN_DIR/NAME-lr-find, where NAME is run.name or DATA-MODEL)."""

    if not 0 < start < end:
        raise ConfigError(f"--start-lr and --end-lr need 0 < start < end, got {start} and {end}")
    if steps < 10:
        raise ConfigError(f"--steps must be at least 10 for a usable curve, got {steps}")
    net, optimizer, task, batches, cfg, ctx = _build(cfg)
    folder = Path(output) if output else _default_folder(cfg)
    ratios = [g["lr"] / cfg.optim.lr for g in optimizer.param_groups]  # backbone_lr keeps its ratio

    lrs, losses = [], []
    avg, best, stopped = 0.0, math.inf, f"reached {end:g}"
    net.train()
    for i, lr in enumerate(np.geomspace(start, end, steps)):
        x, y = next(batches)
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = float(lr) * ratio
        loss, _ = task.train_step(ctx, x, y)  # the task's own step: its loss, one update
        value = float(loss.detach())
        if not math.isfinite(value):
            stopped = f"loss became {value} at lr {lr:.2e}"
            break
        avg = beta * avg + (1 - beta) * value
        smooth = avg / (1 - beta ** (i + 1))
        lrs.append(float(lr))
        losses.append(value)
        best = min(best, smooth)
        if i > 0 and smooth > diverge * best:
            stopped = f"loss above {diverge:g}x its best at lr {lr:.2e}"
            break
    smoothed = smooth_curve(losses)
    suggestion, min_div10 = suggest(lrs, smoothed)
    result = LrFindResult(lrs, losses, smoothed, suggestion, min_div10, stopped, folder)
    write_files(result, cfg)
    return result


def smooth_curve(losses: list[float]) -> list[float]:
    """The losses smoothed by a Gaussian over neighbouring steps (sigma: 2.5% of the sweep, at
    least one step), its edges reflected: no lag, unlike the moving average used to stop."""
    values = np.asarray(losses, dtype=float)
    sigma = max(1.0, len(values) / 40)
    half = int(3 * sigma)
    if len(values) <= half:
        return values.tolist()
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    padded = np.pad(values, half, mode="reflect")
    return (np.convolve(padded, kernel / kernel.sum(), mode="valid")).tolist()


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(steepest descent, lr at the minimum / 10) of the smoothed loss."""
    if len(lrs) < 5:
        raise RunError(
            f"the loss diverged after {len(lrs)} steps: start lower (--start-lr) or check the data"
        )
    log_lr = np.log10(lrs)
    curve = np.asarray(smoothed)
    lowest = int(np.argmin(curve))
    min_div10 = lrs[lowest] / 10
    if lowest < 3:  # no descent to measure: the loss only rose
        return min_div10, min_div10
    slope = np.gradient(curve[: lowest + 1], log_lr[: lowest + 1])
    skip = min(len(slope) // 10, 5)  # the first few steps: edge effects of the smoothing
    steepest = skip + int(np.argmin(slope[skip:]))
    return float(lrs[steepest]), float(min_div10)


def _build(cfg: RunConfig):
    """Data, model, task and optimizer exactly as `kiln train` builds them, without a run."""
    import torch

    from kiln.data import Normalize, make_loader
    from kiln.data.transforms import resolve_augment
    from kiln.data.workers import default_workers
    from kiln.engine.optim import build_optimizer
    from kiln.engine.setup import prepare, resolve
    from kiln.tasks import StepContext, get_task

    ready = prepare(resolve(cfg), distributed_run=False)
    cfg, bundle, device = ready.cfg, ready.bundle, ready.device
    channels_last = cfg.train.channels_last is True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = ready.model.to(device, memory_format=fmt)
    task = get_task(cfg.task).build(cfg, bundle, device)
    wanted = task.optimizers(net, cfg)
    if len(wanted) != 1:
        raise ConfigError(
            f"--lr-find: task '{cfg.task}' trains with {len(wanted)} optimizers "
            f"({', '.join(wanted)}); the range test sweeps one, as classify, regress or vae have"
        )
    ((name, spec),) = wanted.items()
    optimizer = build_optimizer(cfg.optim, spec.module, cfg.model.freeze == "backbone",
                                **spec.options)  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")

    def optimize(loss: torch.Tensor, _: str = name) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(spec.module.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    normalize = Normalize(bundle.info.mean, bundle.info.std, device, channels_last)
    loader = make_loader(
        bundle.train,
        cfg.data.batch_size,
        normalize,
        device,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.train.seed),
        augment=resolve_augment(cfg.data.augment),
        weights=task.sample_weights(cfg, bundle),
        workers=default_workers(cfg.data.workers),
        placement=bundle.placement,
    )
    ctx = StepContext(net=net, model=net, device=device, precision=cfg.train.precision,
                      optimize=optimize, normalize=normalize, data=bundle)  # fmt: skip
    return net, optimizer, task, _forever(loader), cfg, ctx


def _forever(loader):
    """Batches epoch after epoch, reshuffled each time: a sweep may outlast one epoch."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RunError("the training split is empty: nothing to run the range test on")


def _default_folder(cfg: RunConfig) -> Path:
    name = cfg.run.name or f"{cfg.data.name}-{cfg.model.name}".replace(":", "-")
    return Path(cfg.run.dir).expanduser() / f"{name}-lr-find"


def write_files(result: LrFindResult, cfg: RunConfig) -> None:
    folder = result.folder
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["lr", "loss", "smoothed_loss"])
    writer.writerows(zip(result.lrs, result.losses, result.smoothed, strict=True))
    write_text_atomic(folder / "lr_find.csv", buf.getvalue())
    summary = {k: v for k, v in asdict(result).items() if k in ("suggestion", "min_div10")}
    summary.update(stopped=result.stopped, steps=len(result.lrs), optimizer=cfg.optim.name)
    write_text_atomic(folder / "lr_find.json", json.dumps(summary, indent=2) + "\n")
    plot(result, cfg, folder / "lr_find.png")


def plot(result: LrFindResult, cfg: RunConfig, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="#bbbbbb", linewidth=0.8, label="loss per batch")
    ax.plot(result.lrs, result.smoothed, color="#1f77b4", linewidth=1.8, label="smoothed")
    at = int(np.argmin(np.abs(np.log(result.lrs) - math.log(result.suggestion))))
    ax.scatter(
        [result.suggestion], [result.smoothed[at]], color="#d62728", zorder=3,
        label=f"suggested {result.suggestion:.2e} (steepest)",
    )  # fmt: skip
    ax.axvline(result.min_div10, color="#ff7f0e", linestyle="--", linewidth=1,
               label=f"minimum / 10: {result.min_div10:.2e}")  # fmt: skip
    ax.set_xscale("log")
    low, start = min(result.smoothed), result.smoothed[0]
    span = max(start - low, 0.05 * abs(start), 1e-3)
    ax.set_ylim(low - 0.3 * span, start + 0.6 * span)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {cfg.model.name} on {cfg.data.name}, {cfg.optim.name}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    from kiln.evaluate.plots import save

    return save(fig, path, dpi=110)
