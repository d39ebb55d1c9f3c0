"""What a pruned model is measured by: its task's metric on the validation split, and how many of
its weights are zero, layer by layer."""

from __future__ import annotations

import torch
from torch import nn

from kiln.config import RunConfig
from kiln.data import DataBundle, Normalize, make_loader
from kiln.models.resize import CONVS
from kiln.tasks import StepContext, get_task

PRUNABLE = (*CONVS, nn.Linear)  # the layers whose weights pruning zeroes


@torch.inference_mode()
def validation_metric(cfg: RunConfig, model: nn.Module, bundle: DataBundle,
                      device: torch.device) -> float:  # fmt: skip
    """The task's metric (val_acc, val_miou, ...) of `model` on the validation split, computed
    by the same steps as validation during training."""
    task = get_task(cfg.task).build(cfg, bundle, device)
    normalize = Normalize(bundle.info.mean, bundle.info.std, device)
    loader = make_loader(bundle.val, cfg.data.eval_batch_size, normalize, device)
    model = model.to(device).eval()
    ctx = StepContext(net=model, model=model, device=device, tta=cfg.model.tta)
    score, n = torch.zeros((), device=device), 0
    for x, y in loader:
        _, outputs = task.eval_step(ctx, x, y)
        score = score + task.score(outputs, y)
        n += len(y)
    return task.summarize(score, n)[task.metric]


def layer_sparsity(model: nn.Module) -> list[dict]:
    """Per prunable layer: its weights, how many are zero, its shape."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            w = module.weight.detach()
            zeros = int((w == 0).sum())
            rows.append({"layer": name, "kind": type(module).__name__, "shape": list(w.shape),
                         "weights": w.numel(), "zeros": zeros,
                         "sparsity": zeros / max(w.numel(), 1)})  # fmt: skip
    return rows


def nonzero_parameters(model: nn.Module) -> int:
    return sum(int((p.detach() != 0).sum()) for p in model.parameters())
