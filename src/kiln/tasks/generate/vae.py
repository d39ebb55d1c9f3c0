"""task=vae: a variational autoencoder (model=vae, model=densevae): reconstruction + beta x KL.

Per image, in nats (natural-log units), with pixels p in [0, 1] and the decoder's logits:

    recon = sum over pixels of BCE(logits, p)             -E_q[log p(x|z)], one sample of z
    kl    = KL(q(z|x) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)
    loss  = recon + beta x kl                             what training minimizes (model.beta)
    elbo  = -(recon + kl)                                 the evidence lower bound: higher is better

metrics.csv logs train_/val_elbo (the monitored metric), _recon and _kl; `kiln eval` gives them on
the test split. The batches arrive normalized (data.normalize); the task turns them back into
pixels for the loss, so the numbers do not depend on the normalization. MNIST's pixels are grey
levels, not 0/1: as in most VAE examples the Bernoulli likelihood is applied to them as they are,
so the ELBO is comparable between such runs, not with binarized-MNIST likelihoods in papers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kiln.evaluate.images import image_grid
from kiln.tasks.base import StepContext
from kiln.tasks.generate.common import EvalMode, GenerativeTask, Pixels, fixed_noise
from kiln.tasks.registry import register_task


def vae_terms(
    logits: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, pixels: torch.Tensor
) -> torch.Tensor:
    """(N, 2): each image's reconstruction term and KL term, in nats."""
    recon = F.binary_cross_entropy_with_logits(logits.float(), pixels, reduction="none")
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)
    return torch.stack([recon.flatten(1).sum(dim=1), kl], dim=1)


@register_task("vae", "variational autoencoder (model=vae): reconstruction + beta x KL, ELBO")
class VAETask(GenerativeTask):
    metric = "elbo"  # nats per image, higher is better (= -(recon + kl))
    higher_is_better = True
    models = ("vae", "densevae")
    CURVES = (
        ("loss: recon + beta x KL (nats per image)", ["loss"]),
        ("ELBO, nats per image (higher is better)", ["elbo"]),
        ("reconstruction term (nats)", ["recon"]),
        ("KL term (nats)", ["kl"]),
    )
    TEST_KEYS = ("elbo", "recon", "kl", "loss", "beta")

    def __init__(self, beta: float, pixels: Pixels, seed: int = 0):
        self.beta, self.pixels, self.seed = beta, pixels, seed

    @classmethod
    def build(cls, cfg, data, device) -> VAETask:
        beta = float(cfg.model.kwargs().get("beta", 1.0))
        return cls(beta, Pixels(data.info.mean, data.info.std, device), cfg.train.seed)

    # Training and evaluation (the trainer calls these) -----------------------------------------
    def loss(self, terms: torch.Tensor) -> torch.Tensor:
        """Per image: recon + beta x kl."""
        return terms[:, 0] + self.beta * terms[:, 1]

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor):
        with ctx.autocast():
            outputs = ctx.net(x)
        terms = vae_terms(*outputs, self.pixels(x))
        loss = self.loss(terms).mean()
        ctx.step(loss)
        return loss.detach(), terms.detach()

    def eval_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor):
        with ctx.autocast():
            outputs = ctx.net(x)
        terms = vae_terms(*outputs, self.pixels(x))
        return self.loss(terms).sum(), terms

    @staticmethod
    def score(terms: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed (recon, kl) of a batch."""
        return terms.sum(dim=0)

    @staticmethod
    def summarize(sums: torch.Tensor, n: int) -> dict[str, float]:
        if sums.dim() == 0:  # nothing scored yet
            return {"elbo": float("nan"), "recon": float("nan"), "kl": float("nan")}
        recon, kl = (float(v) / n for v in sums)
        return {"elbo": -(recon + kl), "recon": recon, "kl": kl}

    @torch.no_grad()
    def epoch_images(self, ctx: StepContext, epoch: int) -> dict[str, torch.Tensor]:
        """TensorBoard's per-epoch grids: samples from fixed noise, and validation images over
        their reconstructions (from the posterior mean: no random numbers are drawn)."""
        model = ctx.model
        with EvalMode(model):
            z = fixed_noise(model.latent, self.seed).to(ctx.device)
            samples = model.decode(z).sigmoid()
            shown = ctx.data.val if len(ctx.data.val) else ctx.data.train  # val_fraction=0
            real = shown.head(16).to(ctx.device)
            mean, _ = model.encode(ctx.normalize(real))
            recon = model.decode(mean).sigmoid()
        pairs = torch.stack([real.float() / 255, recon], dim=1).flatten(0, 1)  # image, recon, ...
        return {"vae/samples": image_grid(samples), "vae/reconstructions": image_grid(pairs, 8)}

    # After training and `kiln eval` ------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, ctx: StepContext, loader, info) -> dict[str, Any]:
        """ELBO, reconstruction and KL per image on a split (z drawn with seed train.seed)."""
        model, device = ctx.model.eval(), ctx.device
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            for x, _ in loader:
                sums += vae_terms(*model(x), self.pixels(x)).sum(dim=0).double()
        n = max(loader.num_samples, 1)
        values = self.summarize(sums, n)
        loss = values["recon"] + self.beta * values["kl"]
        return {"samples": loader.num_samples, **values, "beta": self.beta, "loss": loss}

    def extra_plots(self, run, model, bundle, device, out: Path) -> dict[str, Path]:
        from kiln.tasks.generate.report import vae_plots

        return vae_plots(run, model, bundle, device, out)

    def report_parts(self, run, plots: dict[str, Path]) -> dict[str, Any]:
        from kiln.tasks.generate.report import vae_section

        note = ('<p class="sub">In nats per image: the ELBO (elbo) = -(recon + kl), higher is '
                "better; loss = recon + beta x kl, what training minimized.</p>")  # fmt: skip
        return {"overview": [], "training": [], "sections": vae_section(plots, run),
                "test_note": note}  # fmt: skip

    @classmethod
    def eval_note(cls, result: dict[str, Any]) -> str:
        return "nats per image; elbo = -(recon + kl), higher is better"
