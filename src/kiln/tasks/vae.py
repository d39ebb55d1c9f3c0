"""task=vae: a variational autoencoder (model=vae), trained on reconstruction + beta x KL.

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

from typing import Any

import torch
import torch.nn.functional as F

from kiln.engine.device import autocast
from kiln.tasks.generate import EvalMode, GenerativeTask, Pixels, fixed_noise, require_model
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

    def __init__(self, beta: float, pixels: Pixels, seed: int = 0):
        self.beta, self.pixels, self.seed = beta, pixels, seed

    @classmethod
    def build(cls, cfg, data, device) -> VAETask:
        require_model(cfg, "vae", "vae")
        beta = float(cfg.model.kwargs().get("beta", 1.0))
        return cls(beta, Pixels(data.info.mean, data.info.std, device), cfg.train.seed)

    # Training and evaluation (the trainer calls these) -----------------------------------------
    def loss(self, terms: torch.Tensor) -> torch.Tensor:
        """Per image: recon + beta x kl."""
        return terms[:, 0] + self.beta * terms[:, 1]

    def train_step(self, trainer, x: torch.Tensor, y: torch.Tensor):
        with autocast(trainer.cfg.train.precision, trainer.device):
            outputs = trainer.net(x)
        terms = vae_terms(*outputs, self.pixels(x))
        loss = self.loss(terms).mean()
        trainer.optimize(loss)
        return loss.detach(), terms.detach()

    def eval_step(self, trainer, x: torch.Tensor, y: torch.Tensor):
        with autocast(trainer.cfg.train.precision, trainer.device):
            outputs = trainer.net(x)
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
    def epoch_images(self, trainer, epoch: int) -> dict[str, torch.Tensor]:
        """TensorBoard's per-epoch grids: samples from fixed noise, and validation images over
        their reconstructions (from the posterior mean: no random numbers are drawn)."""
        from kiln.sample import image_grid

        model = trainer.model
        with EvalMode(model):
            z = fixed_noise(model.latent, self.seed).to(trainer.device)
            samples = model.decode(z).sigmoid()
            real = trainer.data.val.head(16).to(trainer.device)
            mean, _ = model.encode(trainer.normalize(real))
            recon = model.decode(mean).sigmoid()
        pairs = torch.stack([real.float() / 255, recon], dim=1).flatten(0, 1)  # image, recon, ...
        return {"vae/samples": image_grid(samples), "vae/reconstructions": image_grid(pairs, 8)}

    # After training and `kiln eval` ------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def evaluate_loader(cls, model, loader, info, cfg) -> dict[str, Any]:
        """ELBO, reconstruction and KL per image on a split (z drawn with seed train.seed)."""
        device = next(model.parameters()).device
        task = cls(float(cfg.model.kwargs().get("beta", 1.0)), Pixels(info.mean, info.std, device))
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.train.seed)
            for x, _ in loader:
                sums += vae_terms(*model(x), task.pixels(x)).sum(dim=0).double()
        n = max(loader.num_samples, 1)
        values = cls.summarize(sums, n)
        loss = values["recon"] + task.beta * values["kl"]
        return {"samples": loader.num_samples, **values, "beta": task.beta, "loss": loss}
