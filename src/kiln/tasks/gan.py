"""task=gan: a DCGAN (model=dcgan) trained the standard way, scored by a Fréchet distance.

Each batch takes two steps, as in the DCGAN paper and PyTorch's DCGAN tutorial:
  1. the discriminator: BCE(D(real), 1) + BCE(D(G(z)), 0), on real images and detached samples;
  2. the generator: BCE(D(G(z)), 1) (the non-saturating loss), on the same samples.
Each network has its own Adam optimizer (lr = optim.lr, betas (0.5, 0.999), optim.weight_decay),
owned by this task; their states go into checkpoints/last.pt under "task", so a resumed run
continues exactly. The trainer's own optimizer never steps: it only carries the learning rate
schedule (sched.*, `none` in the recipe), which both Adams follow, and the logged lr. The two
networks are called directly: train.compile does not apply; train.grad_clip and optim.l1 are
refused rather than ignored.

The metric, `frechet`, is the Fréchet distance between real and generated images in the features
of a Kiln classifier trained on the same dataset (gan.frechet_classifier; kiln.evaluate.frechet):
not FID, lower is better. val_frechet compares the validation split with as many samples drawn
from a fixed seed; train_frechet compares each epoch's training batches with the samples the
generator made for them as it trained. loss is the generator's; loss_d the discriminator's, and
d_real / d_fake the discriminator's mean probability that real / generated images are real. The
val_ and test values of those come from both networks in evaluation mode (BatchNorm's running
statistics, gathered over separate real and generated batches), so they read differently from
the training ones; the Fréchet distance needs only the generator.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from kiln.engine.device import autocast
from kiln.errors import ConfigError
from kiln.evaluate.frechet import (
    ClassifierFeatures,
    distance_from_sums,
    feature_sums,
    load_classifier,
)
from kiln.tasks.generate import EvalMode, GenerativeTask, Pixels, fixed_noise, require_model
from kiln.tasks.registry import register_task

BETAS = (0.5, 0.999)  # the DCGAN paper's Adam momentum


@register_task("gan", "DCGAN (model=dcgan): Fréchet distance in a Kiln classifier's features")
class GANTask(GenerativeTask):
    metric = "frechet"
    higher_is_better = False

    def __init__(self, features: ClassifierFeatures, pixels: Pixels, seed: int = 0):
        self.features, self.pixels, self.seed = features, pixels, seed
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.pending: dict[str, Any] = {}  # optimizer states from a checkpoint, until they exist
        self.eval_noise: torch.Generator | None = None

    @classmethod
    def build(cls, cfg, data, device) -> GANTask:
        require_model(cfg, "gan", "dcgan")
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
        info = data.info
        features = load_classifier(cfg.gan.frechet_classifier, info.input_shape, info.name, device)
        return cls(features, Pixels(info.mean, info.std, device), cfg.train.seed)

    # The two optimizers ------------------------------------------------------------------------
    def ensure_optimizers(self, trainer) -> dict[str, torch.optim.Optimizer]:
        if not self.optimizers:
            model, optim = trainer.model, trainer.cfg.optim
            lr = trainer.optimizer.param_groups[0]["lr"]  # the schedule's current value
            for name in ("generator", "discriminator"):
                params = list(getattr(model, name).parameters())
                self.optimizers[name] = torch.optim.Adam(
                    params, lr=lr, betas=BETAS, weight_decay=optim.weight_decay
                )
                if name in self.pending:
                    self.optimizers[name].load_state_dict(self.pending.pop(name))
        return self.optimizers

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()} or self.pending

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = dict(state)
        self.optimizers = {}

    def follow_schedule(self, trainer) -> None:
        """Step the trainer's schedule and give both optimizers its learning rate."""
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": by design
            warnings.simplefilter("ignore", UserWarning)
            trainer.scheduler.step()
        lr = trainer.optimizer.param_groups[0]["lr"]
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    # Training and evaluation (the trainer calls these) -----------------------------------------
    def train_step(self, trainer, x: torch.Tensor, y: torch.Tensor):
        model, opts = trainer.model, self.ensure_optimizers(trainer)
        real = self.pixels(x) * 2 - 1  # the generator's range, [-1, 1]
        z = torch.randn(len(x), model.latent, device=x.device)
        with autocast(trainer.cfg.train.precision, trainer.device):
            fake = model.generator(z)
            d_real = model.discriminator(real).float()
            d_fake = model.discriminator(fake.detach()).float()
        loss_d = bce(d_real, 1.0) + bce(d_fake, 0.0)  # per image
        opts["discriminator"].zero_grad(set_to_none=True)
        loss_d.mean().backward()
        opts["discriminator"].step()

        with autocast(trainer.cfg.train.precision, trainer.device):
            d_gen = model.discriminator(fake).float()
        loss_g = bce(d_gen, 1.0).mean()
        opts["generator"].zero_grad(set_to_none=True)
        loss_g.backward()
        opts["generator"].step()
        self.follow_schedule(trainer)
        return loss_g.detach(), self.outputs(real, fake.detach(), loss_d, d_real, d_fake)

    def eval_step(self, trainer, x: torch.Tensor, y: torch.Tensor):
        if self.eval_noise is None:  # each evaluation draws the same noise (summarize resets it)
            self.eval_noise = torch.Generator().manual_seed(self.seed)
        model = trainer.model
        z = torch.randn(len(x), model.latent, generator=self.eval_noise).to(x.device)
        real = self.pixels(x) * 2 - 1
        with autocast(trainer.cfg.train.precision, trainer.device):
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
    def epoch_images(self, trainer, epoch: int) -> dict[str, torch.Tensor]:
        """The fixed-noise grid of this epoch, for TensorBoard and as plots/samples_epoch_N.png."""
        from kiln.sample import display_scale, image_grid, save_png

        model = trainer.model
        with EvalMode(model):
            z = fixed_noise(model.latent, self.seed).to(trainer.device)
            grid = image_grid((model.generate(z) + 1) / 2)
        path = trainer.run.path / "plots" / f"samples_epoch_{epoch:03d}.png"
        save_png(grid, path, display_scale(trainer.data.info.height))
        return {"gan/fixed_noise": grid}

    # After training and `kiln eval` ------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def evaluate_loader(cls, model, loader, info, cfg) -> dict[str, Any]:
        """The Fréchet distance (and the discriminator's view) on a split, with as many samples
        drawn from seed train.seed; the classifier is gan.frechet_classifier."""
        device = next(model.parameters()).device
        features = load_classifier(cfg.gan.frechet_classifier, info.input_shape, info.name, device)
        task = cls(features, Pixels(info.mean, info.std, device), cfg.train.seed)
        shim = _EvalTrainer(model.eval(), cfg, device)
        sums = torch.zeros((), dtype=torch.float64, device=device)
        for x, y in loader:
            loss, out = task.eval_step(shim, x, y)
            sums = sums + torch.cat([task.score(out, y), loss.double().view(1)])
        n = loader.num_samples
        values = task.summarize(sums[:-1], n)
        return {
            "samples": n, **values, "loss": float(sums[-1]) / max(n, 1),
            "classifier": str(cfg.gan.frechet_classifier), "feature_dim": features.dim,
        }  # fmt: skip


class _EvalTrainer:
    """What eval_step reads from a trainer, for `kiln eval` (no trainer there)."""

    def __init__(self, model, cfg, device):
        self.model, self.cfg, self.device = model, cfg, device


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Per-image binary cross-entropy against an all-`target` label."""
    labels = torch.full_like(logits, target)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
