"""Why a model answered as it did: heat maps over the input image, for any task that says what a
class's score is (kiln/tasks/*: `Task.explain`).

Two methods, in plain PyTorch (forward hooks and autograd):

    gradcam    Grad-CAM (Selvaraju et al., 2017): the feature maps of a late layer weighted by the
               mean gradient of the class's score, ReLU'd and scaled up to the image. The layer
               is the last one to output the smallest feature maps of at least 7x7 (a quarter of
               the side of smaller images): the end of a classifier's convolutional features, a
               U-Net's bottleneck. Coarse and fast.
    ig         integrated gradients (Sundararajan et al., 2017) from a black image: the input's
               difference from black times the mean gradient along the straight path, summed
               over channels. Any model, convolutional or not; pixel-sharp.

`auto` picks Grad-CAM when the model has a convolution to hook, integrated gradients otherwise.
Maps are (H, W) at the model's input size, in [0, 1] (each divided by its maximum).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kiln.errors import KilnError

METHODS = ("auto", "gradcam", "ig")
IG_STEPS = 32
MIN_SIDE = 7  # Grad-CAM's feature maps: ResNet's last stage on 224-pixel images is 7x7
# Score of the explained class for each input: (outputs (N, ...), class index) -> (N,).
Score = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class Explanation:
    """One class's heat map for one image."""

    label: str
    score: float  # what the task shows beside it: a probability, a share of pixels
    heat: torch.Tensor  # (H, W) float in [0, 1]
    method: str  # "gradcam (features.8)", "integrated gradients"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise KilnError(f"--explain {method}: choose one of {', '.join(METHODS)}")
    return method


def grad_cam_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module] | None:
    """Where Grad-CAM looks: of the modules inside the model whose output is a feature map of at
    least MIN_SIDE x MIN_SIDE (a quarter of a small image's side), those of the smallest size,
    the last to run (a block's output, after its activation: the end of a classifier's features,
    a U-Net's bottleneck). None when the model has no convolution."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return None
    seen: list[tuple[int, str, nn.Module]] = []
    hooks = []
    for name, module in model.named_modules():
        if name:  # not the model itself

            def record(mod, inp, out, name=name):  # noqa: ANN001
                if isinstance(out, torch.Tensor) and out.dim() == 4:
                    seen.append((out.shape[-2] * out.shape[-1], name, mod))

            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    least = max(2, min(MIN_SIDE, min(x.shape[-2:]) // 4))  # a 32-pixel image: 8x8, not 4x4
    maps = [s for s in seen if s[0] >= least * least] or [s for s in seen if s[0] > 1]
    if not maps:
        return None
    smallest = min(area for area, _, _ in maps)
    _, name, module = [s for s in maps if s[0] == smallest][-1]
    return name, module


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) >= 0 -> each divided by its maximum (all zeros stay zeros)."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0, 1)


def grad_cam(
    model: nn.Module, x: torch.Tensor, score: Score, classes: torch.Tensor, layer: nn.Module
) -> torch.Tensor:
    """(N, K, H, W) maps: for each input and each of its K classes (`classes`: (N, K))."""
    captured: dict[str, torch.Tensor] = {}

    def keep(module, inp, out):  # noqa: ANN001
        captured["a"] = out

    hook = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            outputs = model(x.detach().requires_grad_(True))
            activations = captured["a"]
            maps = []
            for k in range(classes.shape[1]):
                total = torch.stack([score(outputs[i : i + 1], int(c))[0]
                                     for i, c in enumerate(classes[:, k])]).sum()  # fmt: skip
                (grads,) = torch.autograd.grad(total, activations, retain_graph=True)
                weights = grads.mean(dim=(2, 3), keepdim=True)
                maps.append(F.relu((weights * activations).sum(dim=1)).detach())
    finally:
        hook.remove()
    cams = torch.stack(maps, dim=1).float()  # (N, K, h, w)
    cams = F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return normalize_maps(cams.flatten(0, 1).clamp_min(0)).view_as(cams)


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    score: Score,
    classes: torch.Tensor,
    baseline: torch.Tensor,
    steps: int = IG_STEPS,
) -> torch.Tensor:
    """(N, K, H, W) maps: |sum over channels of (x - baseline) * mean gradient on the path|."""
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps  # midpoints
    maps = []
    for i in range(len(x)):
        path = baseline + alphas.view(-1, 1, 1, 1) * (x[i : i + 1] - baseline)
        per_class = []
        for c in classes[i].tolist():
            with torch.enable_grad():
                points = path.detach().requires_grad_(True)
                (grads,) = torch.autograd.grad(score(model(points), int(c)).sum(), points)
            attribution = (x[i] - baseline[0]) * grads.mean(dim=0)
            per_class.append(attribution.sum(dim=0).abs())
        maps.append(torch.stack(per_class))
    ig = torch.stack(maps).float()  # (N, K, H, W)
    return normalize_maps(ig.flatten(0, 1)).view_as(ig)


def heat_maps(
    model: nn.Module,
    x: torch.Tensor,
    score: Score,
    classes: torch.Tensor,
    black: torch.Tensor,
    method: str = "auto",
) -> tuple[torch.Tensor, str]:
    """(N, K, H, W) maps of the K `classes` (N, K) of each input, and the method's name.
    `black`: a black image as the model takes it (normalized), the baseline of `ig`."""
    check_method(method)
    was_training = model.training
    model.eval()
    try:
        layer = grad_cam_layer(model, x) if method in ("auto", "gradcam") and x.dim() == 4 else None
        if method == "gradcam" and layer is None:
            raise KilnError(
                "Grad-CAM needs a convolution with a spatial output, and this model has none: "
                "use --explain ig (integrated gradients), which works for any model"
            )
        if layer is not None:
            maps = grad_cam(model, x, score, classes, layer[1])
            return maps, f"gradcam ({layer[0]})"
        baseline = black.expand_as(x[:1]).to(x.device, x.dtype)
        return integrated_gradients(model, x, score, classes, baseline), "integrated gradients"
    finally:
        model.train(was_training)


def mass_inside(heat: torch.Tensor, region: torch.Tensor) -> float:
    """The share of a map's total inside a boolean region of the same size."""
    total = float(heat.sum())
    return float(heat[region].sum()) / total if total > 0 else 0.0


def overlay(
    image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5, min_side: int = 224
) -> torch.Tensor:
    """A uint8 (C, H, W) image with its (H, W) map painted over it (matplotlib's 'jet'), as uint8
    (3, H', W'); small images are enlarged (pixels kept square) to at least `min_side`."""
    from matplotlib import colormaps

    rgb = image.expand(3, -1, -1).float() / 255.0 if image.shape[0] == 1 else image.float() / 255
    colours = torch.from_numpy(colormaps["jet"](heat.float().clamp(0, 1).numpy())[..., :3])
    blended = (1 - alpha) * rgb + alpha * colours.permute(2, 0, 1).float()
    scale = max(1, -(-min_side // min(image.shape[-2:])))
    if scale > 1:  # nearest: the model's pixels stay visible
        blended = F.interpolate(blended[None], scale_factor=scale, mode="nearest")[0]
    return (blended.clamp(0, 1) * 255).round().to(torch.uint8)
