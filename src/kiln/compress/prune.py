"""`kiln prune RUN --sparsity 0.5 [--structured channels] [--epochs N]`: a smaller model from a
trained run, fine-tuned into a new run folder.

Unstructured (the default): torch.nn.utils.prune's global magnitude pruning zeroes the given
share of all convolution and linear weights (the smallest, across layers), and the pruning is
made permanent (prune.remove) before training: the checkpoints hold plain tensors with zeros.
The new run's config sets train.keep_zeros, so the trainer zeroes them again after every
optimizer step (a resumed run too): they stay pruned while the rest fine-tune.

Structured (`--structured channels`): whole output channels of convolutions go (channels.py),
the layers are rebuilt narrower, their batch norms' statistics measured again on 20 training
batches, and the new run's config records their sizes (model.layer_sizes) so the run folder
rebuilds the smaller model like any other.

Fine-tuning is ordinary training (engine/setup.py prepare, engine/run.py) with the parent's
config, `--epochs` epochs and its learning rate (a tenth of it after unstructured pruning, which
leaves the model nearer to where it was); the new run's prune.json and report
name the parent and show the sparsity per layer and the metric before pruning, after it, and
after fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from kiln.compress.channels import choose, find_groups, shrink
from kiln.compress.measure import PRUNABLE, layer_sparsity, nonzero_parameters, validation_metric
from kiln.config import build_config
from kiln.data import Normalize, make_loader
from kiln.engine.callbacks import Callback
from kiln.engine.run import Run, train_prepared
from kiln.engine.setup import prepare, resolve
from kiln.errors import ConfigError, RunError
from kiln.evaluate.report import add_section, table
from kiln.models.resize import NORMS
from kiln.rundir import RunDir, load_model
from kiln.tasks import get_task

STRUCTURES = ("channels",)


@dataclass
class Pruned:
    """What `prune_run` returns: the new run and the numbers in its prune.json."""

    run: Run
    summary: dict[str, Any]


def prune_run(
    run_dir: str | Path,
    sparsity: float,
    *,
    structured: str | None = None,
    epochs: int = 2,
    lr: float | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> Pruned:
    """Prune the best checkpoint of a run, fine-tune it for `epochs` into a new run (name:
    <parent>-pruned<percent> or -channels<percent>); `overrides`: key=value for the new run."""
    check_options(sparsity, structured, epochs, lr)
    parent = RunDir.open(run_dir)
    if not parent.checkpoint("best").is_file():
        raise RunError(
            f"{parent.path} has no checkpoint ({parent.checkpoint('best')}): train it to the end "
            "first, or pass a finished run"
        )
    parent_cfg = parent.load_config()
    model, epoch = load_model(parent, "best")
    parent_parameters = nonzero_parameters(model)
    sizes, state = None, None
    if structured:
        example = torch.zeros(1, *parent.data_info().input_shape)
        groups = find_groups(model, example)
        if not groups:
            raise ConfigError(
                f"--structured channels: no convolution of {parent.path}'s model "
                f"({parent_cfg.model.name}) can lose channels (each feeds a residual add, a "
                "concatenation or the output); prune it without --structured"
            )
        choose(groups, model, sparsity)
        state, sizes = shrink(model, groups)
    cfg = child_config(parent, sparsity, structured, epochs, lr, sizes, overrides or [])
    ready = prepare(resolve(cfg))
    before = validation_metric(cfg, model, ready.bundle, ready.device)
    if structured:
        ready.model.load_state_dict(state)
        recalibrate_norms(ready.model, cfg, ready.bundle, ready.device)
    else:
        magnitude_prune(model, sparsity)
        ready.model.load_state_dict(model.state_dict())
    pruned = validation_metric(cfg, ready.model, ready.bundle, ready.device)
    summary = {
        "parent": str(parent.path.resolve()),
        "parent_checkpoint": {"which": "best", "epoch": epoch},
        "method": f"structured ({structured})" if structured else "unstructured (global L1)",
        "sparsity": sparsity,
        "metric": f"val_{get_task(cfg.task).metric}",
        "before": before,
        "after_pruning": pruned,
        "parameters": {"parent": parent_parameters},
    }
    if progress:
        show = get_task(cfg.task).show
        print(f"Pruned {parent.path} ({summary['method']}, {sparsity:.0%}): validation "
              f"{show(before)} before, {show(pruned)} after pruning; fine-tuning for {epochs} "
              "epoch(s)", flush=True)  # fmt: skip
    record = Record(summary)
    run = train_prepared(ready, [record], progress)
    if progress:
        print(f"Validation {get_task(cfg.task).show(before)} before pruning, "
              f"{get_task(cfg.task).show(record.summary['after_fine_tuning'])} after "
              "fine-tuning (best checkpoint)", flush=True)  # fmt: skip
    return Pruned(run, record.summary)


def check_options(sparsity: float, structured: str | None, epochs: int, lr: float | None) -> None:
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(
            f"--sparsity must be between 0 and 1 (the share of weights removed), got {sparsity}"
        )
    if structured is not None and structured not in STRUCTURES:
        raise ConfigError(f"--structured must be one of {', '.join(STRUCTURES)}, got {structured}")
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1 (fine-tuning epochs), got {epochs}")
    if lr is not None and lr <= 0:
        raise ConfigError(f"--lr must be positive, got {lr}")


def child_config(parent: RunDir, sparsity: float, structured: str | None, epochs: int,
                 lr: float | None, sizes: dict | None, overrides: list[str]):  # fmt: skip
    """The parent's config, fine-tuning for `epochs` at `lr` (default: the parent's for
    structured pruning, a tenth of it otherwise), from the pruned weights."""
    cfg = parent.load_config()
    if cfg.model.name == "custom":
        raise RunError(
            f"{parent.path} was trained with a model passed in Python: kiln prune rebuilds "
            "models from the run folder, so it prunes registered or YAML-declared models only"
        )
    tree = cfg.to_dict()
    kind = "channels" if structured else "pruned"
    tree["run"]["name"] = f"{parent.path.name}-{kind}{round(sparsity * 100)}"
    tree["train"]["epochs"] = epochs
    tree["train"]["devices"] = 1  # kiln prune fine-tunes in its own process
    tree["train"]["early_stop"]["patience"] = None
    # Zeroed weights leave the model nearly as it was: a gentle rate. Removed channels change
    # what every later layer sees (measured on digits: 98% -> 15-19% before fine-tuning), and a
    # tenth of the rate recovered too little in two epochs (69-94%; the full rate: 96.5%).
    tree["optim"]["lr"] = lr if lr is not None else cfg.optim.lr / (1 if structured else 10)
    model = tree["model"]
    model.update(weights=None, freeze="none", unfreeze_epoch=None, layer_sizes=sizes)
    tree["train"]["keep_zeros"] = not structured  # the pruned weights stay zero, resumed too
    if model.get("pretrained"):  # the pruned weights replace them: nothing to download
        model["pretrained"] = False
    return build_config(tree, overrides)


@torch.no_grad()
def recalibrate_norms(model: nn.Module, cfg, bundle, device, batches: int = 20) -> None:
    """Measure the batch norms' statistics again on training images: once channels are gone,
    every later layer sees other inputs than the running means and variances it stored."""
    norms = [m for m in model.modules() if isinstance(m, NORMS) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    normalize = Normalize(bundle.info.mean, bundle.info.std, device)
    loader = make_loader(bundle.train, cfg.data.batch_size, normalize, device, shuffle=True,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    model.to(device).train()
    for i, (x, _) in enumerate(loader):
        if i == batches:
            break
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def magnitude_prune(model: nn.Module, sparsity: float) -> None:
    """Global L1 pruning of every convolution and linear weight, made permanent (the zeros are
    plain weights: train.keep_zeros keeps them while fine-tuning)."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]
    if not layers:
        raise ConfigError("the model has no convolution or linear layer to prune")
    prune.global_unstructured(
        [(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=sparsity
    )
    for _, m in layers:
        prune.remove(m, "weight")  # weight_orig * weight_mask becomes the plain weight


class Record(Callback):
    """Writes prune.json and the report's pruning section when fine-tuning ends (before the
    report is made), with the best validation value reached."""

    def __init__(self, summary: dict[str, Any]):
        self.summary = summary

    def on_fit_end(self, trainer) -> None:
        best = trainer.early_stop.best_epoch  # the epoch best.pt holds
        row = next(r for r in trainer.history if r["epoch"] == best)
        self.summary["after_fine_tuning"] = row[f"val_{trainer.metric}"]
        self.summary["best_epoch"] = best
        layers = layer_sparsity(trainer.model)
        total = sum(r["weights"] for r in layers)
        self.summary["weights_sparsity"] = sum(r["zeros"] for r in layers) / max(total, 1)
        self.summary["parameters"]["pruned"] = nonzero_parameters(trainer.model)
        self.summary["layers"] = layers
        trainer.run.write_json("prune.json", self.summary)
        add_section(trainer.run, "prune", section(self.summary, trainer.task.show))


def section(s: dict[str, Any], show) -> str:
    """The report's Pruning section: where the model came from, the metric at each stage, and
    the sparsity of every layer."""
    params = s["parameters"]
    kept = f"{params['pruned']:,} non-zero parameters (parent {params['parent']:,})"
    stages = table(
        ["stage", s["metric"]],
        [["parent (before pruning)", show(s["before"])],
         ["after pruning", show(s["after_pruning"])],
         [f"after fine-tuning (epoch {s['best_epoch']})", show(s["after_fine_tuning"])]],
    )  # fmt: skip
    layers = table(
        ["layer", "kind", "shape", "weights", "zero", "sparsity"],
        [[r["layer"], r["kind"], "x".join(map(str, r["shape"])), f"{r['weights']:,}",
          f"{r['zeros']:,}", f"{r['sparsity']:.1%}"] for r in s["layers"]],
        numeric_from=3,
    )  # fmt: skip
    return (
        "<h2>Pruning</h2>"
        f'<p class="sub">Pruned from {escape(s["parent"])}: {escape(s["method"])}, '
        f"{s['sparsity']:.0%}; {kept}; zero weights overall {s['weights_sparsity']:.1%}.</p>"
        f"{stages}<h3>Sparsity per layer</h3>{layers}"
    )
