"""Plots and the self-contained report of a generative run (task=vae or task=gan).

RUN/plots/: curves.png (losses and the logged terms per epoch), samples.png (64 samples, seed 0),
for a VAE reconstructions.png and traversal.png, for a GAN frechet.png (the Fréchet distance per
epoch) beside the fixed-noise grids training wrote (samples_epoch_NNN.png). RUN/report.html
inlines them all, like the classification report (kiln.evaluate.report, whose helpers it uses).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from kiln import data as kdata
from kiln.data import Normalize
from kiln.evaluate.plots import best_row, plot_splits, read_metrics, save
from kiln.evaluate.report import (
    duration,
    epoch_table,
    inline_png,
    key_value_table,
    read_eval,
    section_intro,
    table,
    versions_table,
    write_page,
)  # fmt: skip
from kiln.rundir import RunDir
from kiln.sample import display_scale, image_grid, save_png

RECONSTRUCTIONS = 32  # test images shown over their reconstructions
TRAVERSAL_STEPS, TRAVERSAL_RANGE = 10, 3.0  # a 10 x 10 grid from -3 to 3 standard deviations
MAX_EPOCH_GRIDS = 12
CURVES = {
    "vae": [
        ("loss: recon + beta x KL (nats per image)", ["loss"]),
        ("ELBO, nats per image (higher is better)", ["elbo"]),
        ("reconstruction term (nats)", ["recon"]),
        ("KL term (nats)", ["kl"]),
    ],
    "gan": [
        ("generator loss", ["loss"]),
        ("discriminator loss", ["loss_d"]),
        ("D: mean probability 'real'", ["d_real", "d_fake"]),
    ],
}
TEST_KEYS = {
    "vae": ("elbo", "recon", "kl", "loss", "beta"),
    "gan": ("frechet", "loss", "loss_d", "d_real", "d_fake", "feature_dim"),
}


def make_generate_report(
    run: RunDir, model: torch.nn.Module, bundle, device, checkpoint: str = "best"
) -> Path:
    """Plots, then the report (the tasks' `report`: the end of training and `kiln report`)."""
    plots = write_plots(run, model, bundle, device)
    return write_report(run, model, plots, checkpoint)


# Plots -------------------------------------------------------------------------------------------
def write_plots(run: RunDir, model, bundle, device) -> dict[str, Path]:
    cfg = run.load_config()
    out = run.path / "plots"
    out.mkdir(exist_ok=True)
    rows = read_metrics(run)
    written: dict[str, Path] = {}
    if rows:
        written["curves"] = save(curves_figure(rows, CURVES[cfg.task]), out / "curves.png")
        if cfg.task == "gan":
            best = best_row(rows, cfg.train.early_stop.monitor, cfg.train.early_stop.mode)
            figure = frechet_figure(rows, best, str(cfg.gan.frechet_classifier))
            written["frechet"] = save(figure, out / "frechet.png")
    scale = display_scale(run.data_info().height)  # small images: bigger pixels
    samples = model.sample(64, generator=torch.Generator().manual_seed(0))
    written["samples"] = save_png(image_grid(samples), out / "samples.png", scale)
    if cfg.task == "vae":
        bundle = bundle or kdata.build(cfg.data)
        info = run.data_info()
        images = bundle.test.head(1000)  # the traversal's; the first ones are reconstructed
        x = Normalize(info.mean, info.std, device)(images.to(device))
        grid = reconstruction_grid(model, images[:RECONSTRUCTIONS], x[:RECONSTRUCTIONS])
        written["reconstructions"] = save_png(grid, out / "reconstructions.png", scale)
        grid, dims = traversal_grid(model, x)
        written["traversal"] = save_png(grid, out / "traversal.png", scale)
        run.write_json("plots/traversal.json", {"dims": dims, "range": TRAVERSAL_RANGE})
    return written


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
def write_report(run: RunDir, model, plots: dict[str, Path], checkpoint: str) -> Path:
    cfg, info = run.load_config(), run.load_info()
    rows = read_metrics(run)
    test = read_eval(run, "test")
    best = best_row(rows, cfg.train.early_stop.monitor, cfg.train.early_stop.mode)
    body = [
        f"<h1>{escape(run.path.name)}</h1>",
        f'<p class="sub">Kiln run report (task={escape(cfg.task)}), '
        f"{escape(str(info.get('created', '')))}; images from the {escape(checkpoint)} "
        "checkpoint.</p>",
        "<h2>Run</h2>",
        key_value_table(overview(run, cfg, info, rows, best, model)),
        test_section(cfg.task, test),
        "<h2>Training</h2>",
        figure(plots.get("frechet"), frechet_caption(cfg)),
        figure(plots.get("curves"), "Losses and the logged terms per epoch."),
        "<h3>Per epoch</h3>",
        epoch_table(rows),
        "<h2>Samples</h2>",
        figure(
            plots.get("samples"),
            f"64 new images from z ~ N(0, I), seed 0 (kiln sample {run.path} --seed 0).",
        ),  # fmt: skip
        *vae_section(plots, run),
        *(epoch_grids(run) if cfg.task == "gan" else []),
        "<h2>Model</h2>",
        f"<pre>{escape(model_text(model))}</pre>",
        "<h2>Config</h2>",
        f"<pre>{escape(run.config_path.read_text())}</pre>",
        "<h2>Versions</h2>",
        versions_table(info),
    ]
    return write_page(run, body, css="\nimg.pixels { image-rendering: pixelated; }")


def overview(run, cfg, info, rows, best, model) -> list[tuple[str, str]]:
    shape = "x".join(map(str, info.get("input_shape", [])))
    samples = info.get("samples", {})
    options = ", ".join(f"{k}={v}" for k, v in cfg.model.kwargs().items())
    items = [
        ("Directory", str(run.path.resolve())),
        ("Dataset", f"{info.get('name', cfg.data.name)}, images {shape}"),
        ("Samples", ", ".join(f"{n:,} {name}" for name, n in samples.items()) or "unknown"),
        ("Model", f"{cfg.model.name} ({options})"),
        ("Parameters", parameter_counts(model)),
        ("Epochs run", f"{len(rows)} of {cfg.train.epochs}"),
        ("Training time", duration(sum(r.get("seconds", 0.0) for r in rows))),
        ("Device", f"{info.get('device', cfg.train.device)}, {cfg.train.precision}"),
    ]
    if cfg.task == "gan":
        items.append(("Fréchet features", f"classifier run {cfg.gan.frechet_classifier}"))
    if best is not None:
        monitor = cfg.train.early_stop.monitor
        items.append(("Best epoch", f"{best['epoch']:.0f} (by {monitor} = {best[monitor]:.4f})"))
    items += [
        ("Seed", str(info.get("seed"))),
        ("Git commit", str(info.get("git_commit") or "not a git checkout")),
        ("Command", str(info.get("command") or "")),
    ]
    return items


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


def frechet_caption(cfg) -> str:
    return (
        f"Fréchet distance between real and generated images in the penultimate-layer features "
        f"of Kiln classifier {cfg.gan.frechet_classifier} (not FID: comparable only between runs "
        "scored by the same classifier). val: the validation split against as many samples of a "
        "fixed seed; train: each epoch's training batches against the samples made for them."
    )


def test_section(task: str, test: dict[str, Any] | None) -> str:
    if test is None:
        return '<h2>Test</h2>\n<p class="sub">No eval-test.json in the run: run `kiln eval`.</p>'
    intro = section_intro(test, f"{test['samples']:,} test images", "")
    if task == "vae":
        intro += (
            '<p class="sub">In nats per image: the ELBO (elbo) = -(recon + kl), higher is '
            "better; loss = recon + beta x kl, what training minimized.</p>"
        )
    else:
        intro += (
            '<p class="sub">frechet: the Fréchet distance in the classifier\'s features (lower is '
            "better); loss: the generator's; loss_d: the discriminator's; d_real, d_fake: its mean "
            "probability that real, generated images are real.</p>"
        )
    cells = ([k, number(test[k])] for k in TEST_KEYS[task] if k in test)
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
               "and their reconstructions from the posterior mean (even rows)."),  # fmt: skip
        "<h2>Latent traversal</h2>",
        figure(plots["traversal"], f"Decoded images as latent dimension {across} goes from "
               f"-{TRAVERSAL_RANGE:g} to {TRAVERSAL_RANGE:g} across and dimension {down} down, "
               "the other dimensions at 0; the two with the largest mean KL on test images."),
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


def figure(path: Path | None, caption: str) -> str:
    if path is None or not Path(path).is_file():
        return ""
    shown = inline_png(path, caption, "pixels")
    return f"<figure>{shown}<figcaption>{escape(caption)}</figcaption></figure>"


# `kiln eval` ----------------------------------------------------------------------------------
def print_eval(result: dict[str, Any], as_json: bool) -> int:
    """`kiln eval` of a vae or gan run: the metrics as a table, or one JSON object."""
    task = "vae" if "elbo" in result else "gan"
    keys = [k for k in TEST_KEYS[task] if k in result]
    if as_json:
        extra = {"classifier": result["classifier"]} if "classifier" in result else {}
        print(json.dumps({k: result[k] for k in keys} | extra | {
            "split": result["split"], "samples": result["samples"]}))  # fmt: skip
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{result['run']}[/] {result['split']} split, {result['checkpoint']} checkpoint "
        f"(epoch {result['epoch']}), {result['samples']:,} images"
    )
    summary = Table("metric", "value")
    for key in keys:
        summary.add_row(key, number(result[key]))
    console.print(summary)
    if task == "vae":
        console.print("nats per image; elbo = -(recon + kl), higher is better")
    else:
        console.print(f"Fréchet distance in the features of classifier {result['classifier']} "
                      "(lower is better; not FID)")  # fmt: skip
    console.print(f"saved to {Path(result['run']) / ('eval-' + result['split'] + '.json')}")
    return 0
