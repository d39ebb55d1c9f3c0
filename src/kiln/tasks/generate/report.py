"""Plots and the self-contained report of a generative run (task=vae or task=gan).

RUN/plots/: curves.png (losses and the logged terms per epoch), samples.png (64 samples, seed 0),
for a VAE reconstructions.png and traversal.png, for a GAN frechet.png (the Fréchet distance per
epoch) beside the fixed-noise grids training wrote (samples_epoch_NNN.png). RUN/report.html
inlines them all, in the page every run's report shares (kiln.evaluate.report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from kiln import data as kdata
from kiln.data import Normalize
from kiln.evaluate.images import display_scale, image_grid, save_png
from kiln.evaluate.plots import best_row, plot_splits, read_metrics, save
from kiln.evaluate.report import (
    figure,
    inline_png,
    no_test_section,
    section_intro,
    table,
    write_run_report,
)  # fmt: skip
from kiln.rundir import RunDir
from kiln.tasks.common import eval_file, eval_title, read_eval

RECONSTRUCTIONS = 32  # test images shown over their reconstructions
TRAVERSAL_STEPS, TRAVERSAL_RANGE = 10, 3.0  # a 10 x 10 grid from -3 to 3 standard deviations
MAX_EPOCH_GRIDS = 12


def make_generate_report(
    task, run: RunDir, model, bundle, device, checkpoint: str = "best"
) -> Path:
    """Plots, then the report (the tasks' `report`: the end of training and `kiln report`)."""
    plots = write_plots(task, run, model, bundle, device)
    return write_report(task, run, model, plots, checkpoint)


# Plots -------------------------------------------------------------------------------------------
def write_plots(task, run: RunDir, model, bundle, device) -> dict[str, Path]:
    out = run.path / "plots"
    out.mkdir(exist_ok=True)
    rows = read_metrics(run)
    written: dict[str, Path] = {}
    if rows:
        written["curves"] = save(curves_figure(rows, task.CURVES), out / "curves.png")
    written |= task.extra_plots(run, model, bundle, device, out)
    scale = display_scale(run.data_info().height)  # small images: bigger pixels
    samples = model.sample(64, generator=torch.Generator().manual_seed(0))
    written["samples"] = save_png(image_grid(samples), out / "samples.png", scale)
    return written


def vae_plots(run: RunDir, model, bundle, device, out: Path) -> dict[str, Path]:
    """reconstructions.png and traversal.png (and traversal.json: the dimensions shown)."""
    cfg, info = run.load_config(), run.data_info()
    scale = display_scale(info.height)
    bundle = bundle or kdata.build(cfg.data)
    images = bundle.test.head(1000)  # the traversal's; the first ones are reconstructed
    x = Normalize(info.mean, info.std, device)(images.to(device))
    written = {}
    grid = reconstruction_grid(model, images[:RECONSTRUCTIONS], x[:RECONSTRUCTIONS])
    written["reconstructions"] = save_png(grid, out / "reconstructions.png", scale)
    grid, dims = traversal_grid(model, x)
    written["traversal"] = save_png(grid, out / "traversal.png", scale)
    run.write_json("plots/traversal.json", {"dims": dims, "range": TRAVERSAL_RANGE})
    return written


def frechet_plot(run: RunDir, out: Path, classifier: str) -> dict[str, Path]:
    """frechet.png: the Fréchet distance per epoch (log scale), the best epoch starred."""

    rows = read_metrics(run)
    if not rows:
        return {}
    best = best_row(rows, *run.monitored())
    return {"frechet": save(frechet_figure(rows, best, classifier), out / "frechet.png")}


def curves_figure(rows: list[dict[str, float]], panels) -> Figure:
    fig = Figure(figsize=(4 * len(panels), 3.4), layout="constrained")
    for ax, (title, keys) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        for key in keys:
            plot_splits(ax, rows, key, named=len(keys) > 1)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def frechet_figure(rows: list[dict[str, float]], best, classifier: str) -> Figure:
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    plot_splits(ax, rows, "frechet", markersize=4)
    if best is not None and "val_frechet" in best:
        label = f"best: epoch {best['epoch']:.0f}, val {best['val_frechet']:.2f}"
        ax.plot([best["epoch"]], [best["val_frechet"]], "*", color="tab:red", markersize=12,
                label=label)  # fmt: skip
    ax.set(xlabel="epoch", ylabel="Fréchet distance (lower is better)")
    ax.set_title(f"Fréchet distance in the features of classifier {classifier}", fontsize=9)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return fig


@torch.no_grad()
def reconstruction_grid(model, images: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rows of 8 test images, each row followed by their reconstructions (posterior mean)."""
    mean, _ = model.encode(x)
    recon = model.decode(mean).sigmoid().cpu()
    real = images.float() / 255
    rows = []
    for begin in range(0, len(real), 8):
        rows += [real[begin : begin + 8], recon[begin : begin + 8]]
    return image_grid(torch.cat(rows), columns=8)


@torch.no_grad()
def traversal_grid(model, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Decoded images over a grid of two latent dimensions (the other ones at 0): the two with
    the largest mean KL on the given images, i.e. the ones the model uses most."""
    mean, logvar = model.encode(x)
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean(dim=0)
    dims = kl.argsort(descending=True)[:2].tolist()
    steps = torch.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, TRAVERSAL_STEPS)
    z = torch.zeros(TRAVERSAL_STEPS, TRAVERSAL_STEPS, model.latent)
    z[:, :, dims[0]] = steps.view(1, -1)  # across
    if len(dims) > 1:
        z[:, :, dims[1]] = steps.view(-1, 1)  # down
    device = next(model.parameters()).device
    images = model.decode(z.flatten(0, 1).to(device)).sigmoid()
    return image_grid(images, columns=TRAVERSAL_STEPS), dims


# The page --------------------------------------------------------------------------------------
def write_report(task, run: RunDir, model, plots: dict[str, Path], checkpoint: str) -> Path:
    cfg = run.load_config()
    test = read_eval(run)
    parts = task.report_parts(run, plots)
    options = ", ".join(f"{k}={v}" for k, v in cfg.model.kwargs().items())
    overview = [("Model options", options), ("Parameters, by network", parameter_counts(model)),
                *parts["overview"]]  # fmt: skip
    samples = f"64 new images from z ~ N(0, I), seed 0 (kiln sample {run.path} --seed 0)."
    training = [*parts["training"], ("curves", "Losses and the logged terms per epoch.")]
    return write_run_report(
        run, model, plots,
        test_section=test_section(task, test, parts["test_note"]),
        checkpoint=checkpoint, overview=overview, training=training,
        sections=["<h2>Samples</h2>", figure(plots.get("samples"), samples, "pixels"),
                  *parts["sections"]],
        model_text=model_text(model), subtitle=f"Kiln run report (task={cfg.task})",
        css="\nimg.pixels { image-rendering: pixelated; }",
    )  # fmt: skip


def parameter_counts(model) -> str:
    total = sum(p.numel() for p in model.parameters())
    parts = [
        f"{name} {sum(p.numel() for p in getattr(model, name).parameters()):,}"
        for name in ("generator", "discriminator")
        if hasattr(model, name)
    ]
    return f"{total:,}" + (f" ({', '.join(parts)})" if parts else "")


def model_text(model) -> str:
    return f"{model}\n\nparameters: {parameter_counts(model)}"


def frechet_caption(classifier: str | None) -> str:
    return (
        f"Fréchet distance between real and generated images in the penultimate-layer features "
        f"of Kiln classifier {classifier} (not FID: comparable only between runs "
        "scored by the same classifier). val: the validation split against as many samples of a "
        "fixed seed; train: each epoch's training batches against the samples made for them."
    )


def test_section(task, test: dict[str, Any] | None, note: str) -> str:
    if test is None:
        return no_test_section()
    intro = section_intro(test, f"{test['samples']:,} test images", "") + note
    cells = ([k, number(test[k])] for k in task.TEST_KEYS if k in test)
    return f"<h2>Test</h2>\n{intro}\n{table(['metric', 'value'], cells)}"


def number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def vae_section(plots: dict[str, Path], run: RunDir) -> list[str]:
    if "reconstructions" not in plots:
        return []
    dims = json.loads((run.path / "plots" / "traversal.json").read_text())["dims"]
    across, down = dims[0], dims[-1]
    return [
        "<h2>Reconstructions</h2>",
        figure(plots["reconstructions"], f"The first {RECONSTRUCTIONS} test images (odd rows) "
               "and their reconstructions from the posterior mean (even rows).",
               "pixels"),
        "<h2>Latent traversal</h2>",
        figure(plots["traversal"], f"Decoded images as latent dimension {across} goes from "
               f"-{TRAVERSAL_RANGE:g} to {TRAVERSAL_RANGE:g} across and dimension {down} down, "
               "the other dimensions at 0; the two with the largest mean KL on test images.",
               "pixels"),
    ]  # fmt: skip


def epoch_grids(run: RunDir) -> list[str]:
    """The fixed-noise grids written during training (at most MAX_EPOCH_GRIDS, evenly spaced)."""
    paths = sorted((run.path / "plots").glob("samples_epoch_*.png"))
    if len(paths) > MAX_EPOCH_GRIDS:
        step = (len(paths) - 1) / (MAX_EPOCH_GRIDS - 1)
        paths = [paths[round(i * step)] for i in range(MAX_EPOCH_GRIDS)]
    if not paths:
        return []
    cells = "".join(
        f'<figure style="display:inline-block;margin:0.4rem">{inline_png(p, "", "pixels")}'
        f"<figcaption>epoch {int(p.stem.rsplit('_', 1)[1])}</figcaption></figure>"
        for p in paths
    )
    return ["<h3>The same 64 noise vectors, epoch by epoch</h3>", f"<div>{cells}</div>"]


# `kiln eval` ----------------------------------------------------------------------------------
def print_eval(task, result: dict[str, Any], console) -> None:
    """`kiln eval` of a vae or gan run: the metrics as a table."""
    from rich.table import Table

    console.print(eval_title(result, "images"))
    summary = Table("metric", "value")
    for key in (k for k in task.TEST_KEYS if k in result):
        summary.add_row(key, number(result[key]))
    console.print(summary)
    console.print(task.eval_note(result))
    console.print(f"saved to {eval_file(result)}")
