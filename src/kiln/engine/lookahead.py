"""Lookahead weight averaging (`train.lookahead=true`), as the CIFAR-10 speed runs use it.

From a quarter of the way through training on, every EVERY optimizer steps the trainer keeps a
slow copy of the weights: the slow copy moves a little towards the weights the optimizer reached,
and the model goes on from the slow copy (Zhang et al., "Lookahead Optimizer: k steps forward, 1
step back"). The slow copy is an exponential average whose memory grows over training (decay
BASE ** EVERY x progress ** POWER: close to plain training early, a strong average at the end),
so the final weights sit in the middle of where the last epochs wandered, which generalizes
better than the last step. The model is set to the slow copy at the end of every epoch, so that
validation, checkpoints and the final weights are the averaged ones.

Averaged: every floating-point parameter and buffer (BatchNorm's running statistics too).
Checkpointed in last.pt, so a resumed run continues with the same slow weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

START = 0.25  # the fraction of training after which averaging begins
EVERY = 5  # optimizer steps between two updates of the slow weights
BASE, POWER = 0.95, 3.0  # the decay per update: (BASE ** EVERY) x (progress ** POWER)


class Lookahead:
    """The slow weights of `model` over a run of `total_steps` optimizer steps."""

    def __init__(self, model: nn.Module, total_steps: int, enabled: bool = True):
        self.model, self.total_steps, self.enabled = model, total_steps, enabled
        self.slow: dict[str, torch.Tensor] | None = None  # None until averaging begins

    def _averaged(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Called after optimizer step number `step` (counted from 1 over the whole run)."""
        if not self.enabled or step < START * self.total_steps or step % EVERY:
            return
        current = self._averaged()
        if self.slow is None:
            self.slow = {k: v.detach().clone() for k, v in current.items()}
            return
        decay = BASE**EVERY * min(step / self.total_steps, 1.0) ** POWER
        for key, value in current.items():
            self.slow[key].lerp_(value, 1.0 - decay)
            value.copy_(self.slow[key])

    @torch.no_grad()
    def end_epoch(self) -> None:
        """The model takes the slow weights: what is validated and saved."""
        if self.slow is not None:
            for key, value in self._averaged().items():
                value.copy_(self.slow[key])

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        slow = (state or {}).get("slow")
        if slow is not None:
            current = self._averaged()
            slow = {k: v.to(current[k].device, current[k].dtype) for k, v in slow.items()}
        self.slow = slow
