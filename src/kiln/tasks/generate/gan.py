"""task=gan: a DCGAN (model=dcgan) or the Keras tutorial's dense GAN (model=densegan) trained the
standard way, scored by a Fréchet distance.

Each batch takes two steps, as in the DCGAN paper and PyTorch's DCGAN tutorial:
  1. the discriminator: BCE(D(real), 1) + BCE(D(G(z)), 0), on real images and detached samples;
  2. the generator: BCE(D(G(z)), 1) (the non-saturating loss), on the same samples.
Each network has its own Adam optimizer (lr = optim.lr, betas (0.5, 0.999), optim.weight_decay),
declared by `optimizers()`: the trainer builds both, schedules both with sched.* (`none` in the
recipe) and keeps their states in checkpoints/last.pt, so a resumed run continues exactly. The two
networks are called directly: train.compile does not apply; train.grad_clip and optim.l1 are
refused rather than ignored.

The metric, `frechet`, is the Fréchet distance between real and generated images in the features
of a Kiln classifier trained on the same dataset (gan.frechet_classifier; frechet.py):
not FID, lower is better. Without gan.frechet_classifier, Kiln trains a small one itself before
the GAN (a convnet, CLASSIFIER_EPOCHS epochs on the same data, said in one line), kept under
RUN_DIR/.frechet/ and reused by every later GAN run on the same data (`Task.needs`).
val_frechet compares the validation split with as many samples drawn from a fixed seed;
train_frechet compares each epoch's training batches with the samples the
generator made for them as it trained. loss is the generator's; loss_d the discriminator's, and
d_real / d_fake the discriminator's mean probability that real / generated images are real. The
val_ and test values of those come from both networks in evaluation mode (BatchNorm's running
statistics, gathered over separate real and generated batches), so they read differently from
the training ones; the Fréchet distance needs only the generator.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kiln.errors import ConfigError
from kiln.tasks.base import Needed, Optimizes, StepContext
from kiln.tasks.generate.common import EvalMode, GenerativeTask, Pixels, fixed_noise
from kiln.tasks.generate.frechet import (
    ClassifierFeatures,
    distance_from_sums,
    feature_sums,
    load_classifier,
)
from kiln.tasks.registry import register_task

BETAS = (0.5, 0.999)  # the DCGAN paper's Adam momentum
CLASSIFIER_EPOCHS = 2  # the classifier Kiln trains for the Fréchet distance when none is given
# Data keys that do not change the images a classifier sees: they leave the cached one valid
NOT_IMAGES = (
    "batch_size", "eval_batch_size", "drop_last", "workers", "memory", "augment", "balance",
)  # fmt: skip


class GanOptions(BaseModel):
    """task=gan's own config section (`gan:`): the run whose classifier features score the
    samples (frechet.py)."""

    model_config = ConfigDict(extra="forbid")
    frechet_classifier: str | None = Field(
        None, description="a classify run on the same dataset, e.g. runs/mnist-classifier; "
        "unset: Kiln trains a small one first (once, under RUN_DIR/.frechet/)",
    )  # fmt: skip


@register_task(
    "gan", "DCGAN (model=dcgan) or dense GAN (model=densegan): Fréchet distance in a Kiln "
    "classifier's features",
)  # fmt: skip
class GANTask(GenerativeTask):
    metric = "frechet"
    higher_is_better = False
    models = ("dcgan", "densegan")
    Options = GanOptions
    CURVES = (
        ("generator loss", ["loss"]),
        ("discriminator loss", ["loss_d"]),
        ("D: mean probability 'real'", ["d_real", "d_fake"]),
    )
    TEST_KEYS = ("frechet", "loss", "loss_d", "d_real", "d_fake", "feature_dim")

    def __init__(self, features: ClassifierFeatures, pixels: Pixels, seed: int = 0,
                 classifier: str | None = None):  # fmt: skip
        self.features, self.pixels, self.seed = features, pixels, seed
        self.classifier = classifier
        self.eval_noise: torch.Generator | None = None

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.optim.name != "adam":
            raise ConfigError(
                f"optim.name={cfg.optim.name}: task=gan trains both networks with Adam "
                "(betas 0.5, 0.999) as DCGAN does; set optim.name=adam"
            )
        if cfg.train.precision == "fp16":
            raise ConfigError("train.precision=fp16: task=gan runs in fp32 or bf16")
        for key, value in (("train.grad_clip", cfg.train.grad_clip), ("optim.l1", cfg.optim.l1)):
            if value:
                raise ConfigError(f"{key}={value}: task=gan does not use it; leave it unset")

    @classmethod
    def needs(cls, cfg) -> list[Needed]:
        """Without gan.frechet_classifier: a small classifier on the same data, trained once
        under RUN_DIR/.frechet/ and reused."""
        if cls.options(cfg).frechet_classifier:
            return []
        path, config = classifier_run(cfg)
        data = cfg.data.name
        return [Needed(
            path, config, ready=(path / "eval-test.json").is_file(),
            training=f"Fréchet distance: gan.frechet_classifier is not set, so Kiln first trains "
            f"a small classifier on {data} (convnet, {CLASSIFIER_EPOCHS} epochs) -> {path}; "
            "later runs on this data reuse it",
            reusing=f"Fréchet distance: in the features of the classifier Kiln trained on {data} "
            f"before, {path} (gan.frechet_classifier=RUN picks another)",
        )]  # fmt: skip

    @classmethod
    def build(cls, cfg, data, device) -> GANTask:
        info = data.info
        n, batch = len(data.train), cfg.data.batch_size
        if (
            cfg.model.name == "densegan"
            and cfg.model.kwargs().get("batchnorm", True)
            and not cfg.data.drop_last
            and (n % batch == 1)
        ):
            raise ConfigError(
                f"model=densegan: {n:,} training images in batches of {batch} leave a last batch "
                "of one image, which its BatchNorm cannot train on; change data.batch_size or "
                "data.subset, set data.drop_last=true, or set model.batchnorm=false"
            )
        classifier = cls.options(cfg).frechet_classifier or str(classifier_run(cfg)[0])
        features = load_classifier(classifier, info.input_shape, info.name, device)
        return cls(features, Pixels(info.mean, info.std, device), cfg.train.seed, classifier)

    def optimizers(self, model, cfg) -> dict[str, Optimizes]:
        """One Adam per network, betas (0.5, 0.999)."""
        return {name: Optimizes(getattr(model, name), {"betas": BETAS})
                for name in ("generator", "discriminator")}  # fmt: skip

    # Training and evaluation (the trainer calls these) -----------------------------------------
    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor):
        model = ctx.model
        real = self.pixels(x) * 2 - 1  # the generator's range, [-1, 1]
        z = torch.randn(len(x), model.latent, device=x.device)
        with ctx.autocast():
            fake = model.generator(z)
            d_real = model.discriminator(real).float()
            d_fake = model.discriminator(fake.detach()).float()
        loss_d = bce(d_real, 1.0) + bce(d_fake, 0.0)  # per image
        ctx.step(loss_d.mean(), "discriminator")

        with ctx.autocast():
            d_gen = model.discriminator(fake).float()
        loss_g = bce(d_gen, 1.0).mean()
        ctx.step(loss_g, "generator")
        return loss_g.detach(), self.outputs(real, fake.detach(), loss_d, d_real, d_fake)

    def eval_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor):
        if self.eval_noise is None:  # each evaluation draws the same noise (summarize resets it)
            self.eval_noise = torch.Generator().manual_seed(self.seed)
        model = ctx.model
        z = torch.randn(len(x), model.latent, generator=self.eval_noise).to(x.device)
        real = self.pixels(x) * 2 - 1
        with ctx.autocast():
            fake = model.generator(z)
            d_real = model.discriminator(real).float()
            d_fake = model.discriminator(fake).float()
        loss_d = bce(d_real, 1.0) + bce(d_fake, 0.0)
        return bce(d_fake, 1.0).sum(), self.outputs(real, fake, loss_d, d_real, d_fake)

    def outputs(self, real, fake, loss_d, d_real, d_fake) -> tuple[torch.Tensor, ...]:
        """Classifier features of both batches, and per image (loss_d, D(real), D(fake))."""
        values = torch.stack([loss_d.detach(), d_real.sigmoid(), d_fake.sigmoid()], dim=1)
        real_f = self.features((real.float() + 1) / 2)
        fake_f = self.features((fake.float() + 1) / 2)
        return real_f, fake_f, values.detach()

    @staticmethod
    def score(outputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> torch.Tensor:
        """One flat vector of sums: real feature statistics, generated ones, the three values."""
        real_f, fake_f, values = outputs
        return torch.cat([feature_sums(real_f), feature_sums(fake_f), values.sum(0).double()])

    def summarize(self, sums: torch.Tensor, n: int) -> dict[str, float]:
        self.eval_noise = None  # the end of an evaluation: the next one starts from the seed
        keys = ("frechet", "loss_d", "d_real", "d_fake")
        if sums.dim() == 0 or n < 2:
            return dict.fromkeys(keys, float("nan"))
        half = (len(sums) - 3) // 2
        frechet = distance_from_sums(sums[:half], sums[half : 2 * half], n)
        loss_d, d_real, d_fake = (float(v) / n for v in sums[-3:])
        return dict(zip(keys, (frechet, loss_d, d_real, d_fake), strict=True))

    @torch.no_grad()
    def epoch_images(self, ctx: StepContext, epoch: int) -> dict[str, torch.Tensor]:
        """The fixed-noise grid of this epoch, for TensorBoard and as plots/samples_epoch_N.png."""
        from kiln.evaluate.images import display_scale, image_grid, save_png

        model = ctx.model
        with EvalMode(model):
            z = fixed_noise(model.latent, self.seed).to(ctx.device)
            grid = image_grid((model.generate(z) + 1) / 2)
        if ctx.run_path is not None:
            path = ctx.run_path / "plots" / f"samples_epoch_{epoch:03d}.png"
            save_png(grid, path, display_scale(ctx.data.info.height))
        return {"gan/fixed_noise": grid}

    # After training and `kiln eval` ------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, ctx: StepContext, loader, info) -> dict[str, Any]:
        """The Fréchet distance (and the discriminator's view) on a split, with as many samples
        drawn from seed train.seed; the classifier is gan.frechet_classifier."""
        ctx.model.eval()
        sums = torch.zeros((), dtype=torch.float64, device=ctx.device)
        for x, y in loader:
            loss, out = self.eval_step(ctx, x, y)
            sums = sums + torch.cat([self.score(out, y), loss.double().view(1)])
        n = loader.num_samples
        values = self.summarize(sums[:-1], n)
        return {
            "samples": n, **values, "loss": float(sums[-1]) / max(n, 1),
            "classifier": str(self.classifier), "feature_dim": self.features.dim,
        }  # fmt: skip

    def extra_plots(self, run, model, bundle, device, out: Path) -> dict[str, Path]:
        from kiln.tasks.generate.report import frechet_plot

        return frechet_plot(run, out, str(self.classifier))

    def report_parts(self, run, plots: dict[str, Path]) -> dict[str, Any]:
        from kiln.tasks.generate.report import epoch_grids, frechet_caption

        note = (
            '<p class="sub">frechet: the Fréchet distance in the classifier\'s features (lower '
            "is better); loss: the generator's; loss_d: the discriminator's; d_real, d_fake: its "
            "mean probability that real, generated images are real.</p>"
        )
        return {
            "overview": [("Fréchet features", f"classifier run {self.classifier}")],
            "training": [("frechet", frechet_caption(self.classifier))],
            "sections": epoch_grids(run), "test_note": note,
        }  # fmt: skip

    @classmethod
    def eval_note(cls, result: dict[str, Any]) -> str:
        return (f"Fréchet distance in the features of classifier {result['classifier']} "
                "(lower is better; not FID)")  # fmt: skip


def classifier_run(cfg) -> tuple[Path, dict[str, Any]]:
    """(where, config) of the classifier Kiln trains for a GAN's Fréchet distance: a convnet on
    the GAN's data (named by a hash of the data keys that change its images), under run.dir."""
    data = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k not in NOT_IMAGES}
    key = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cfg.run.dir) / ".frechet" / f"{cfg.data.name}-{key}"
    config = {
        "task": "classify", "imports": list(cfg.imports),
        "data": {**data, "batch_size": 128},
        "model": {"name": "convnet", "width": 16},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"epochs": CLASSIFIER_EPOCHS, "device": cfg.train.device, "seed": cfg.train.seed},
        "run": {"dir": str(path.parent), "name": path.name, "report": False},
    }  # fmt: skip
    return path, config


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Per-image binary cross-entropy against an all-`target` label."""
    labels = torch.full_like(logits, target)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
