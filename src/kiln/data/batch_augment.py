"""Augmentation on whole batches, on the training device: the in-memory path's augmentation.

A DataLoader augments one image at a time in Python, in worker processes. When the training set
is one uint8 tensor in memory, the geometric augmentations people use on small images (flip,
random crop with padding, small translations, cutout) are cheap index arithmetic that can be done
for a whole batch at once, on the GPU when there is one: every image gets its own random draw, with
no per-sample Python.

Each op takes a uint8 batch (N, C, H, W) and a torch.Generator on the batch's device, and returns
a uint8 batch of the same shape. The same ops serve the per-sample path (a batch of one), so a
step means the same thing on both paths. Pixel values (`fill`, `value`) are on the 0-255 scale.

Segmentation masks (N, H, W) move with their images: a geometric step (flip, crop, translate)
runs on the image and its mask as one tensor, so both get the same draw; pixels that come in from
outside are marked IGNORE in the mask (not scored). Cutout paints the image only. Volumes
(N, C, D, H, W) take flip and vflip.
"""

from __future__ import annotations

from typing import Any

import torch

# The data.augment steps that can run on whole batches; a list made only of these keeps a dataset
# that fits in memory on the in-memory path.
BATCHABLE = ("flip", "vflip", "crop", "translate", "cutout")
GEOMETRIC = ("flip", "vflip", "crop", "translate")  # they move pixels: a mask moves with them
PAD_MODES = ("constant", "edge", "reflect", "symmetric")
IGNORE = 255  # mask value for pixels no label is known for (scored by no metric, in no loss)


def _rand(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device)


def _randint(low: int, high: int, n: int, g: torch.Generator, device) -> torch.Tensor:
    """n integers in [low, high], both ends included."""
    return torch.randint(low, high + 1, (n,), generator=g, device=device)


def _pixels(value: Any, channels: int, device: torch.device) -> torch.Tensor:
    """A fill value (one number, or one per channel) as a (1, C, 1, 1) uint8 tensor."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values = list(values) * channels
    return torch.tensor(values, dtype=torch.uint8, device=device).view(1, channels, 1, 1)


def flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5, dim: int = -1) -> torch.Tensor:
    """Mirror each image (or volume) with probability p (dim -1: left-right, -2: up-down)."""
    chosen = _rand(len(x), g, x.device) < p
    return torch.where(chosen.view(-1, *[1] * (x.dim() - 1)), x.flip(dim), x)


def _source_index(index: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Where each output row/column reads from when it falls outside the image."""
    if mode == "edge":
        return index.clamp(0, size - 1)
    if mode == "reflect" and size > 1:  # d c b | a b c d | c b a
        period = 2 * (size - 1)
        index = index.remainder(period)
        return torch.where(index >= size, period - index, index)
    if mode == "symmetric":  # c b a | a b c d | d c b
        period = 2 * size
        index = index.remainder(period)
        return torch.where(index >= size, period - 1 - index, index)
    return index.clamp(0, size - 1)  # constant: read anything, then overwrite with the fill


def shift(
    x: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    mode: str = "constant",
    fill: Any = 0,
) -> torch.Tensor:
    """Move image i down by dy[i] and right by dx[i] pixels, filling what comes in from outside
    per `mode` (constant, edge, reflect, symmetric): a random crop of a padded image is this."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h) - dy.view(n, 1)  # (N, H)
    cols = torch.arange(w, device=x.device).view(1, w) - dx.view(n, 1)  # (N, W)
    src_rows, src_cols = _source_index(rows, h, mode), _source_index(cols, w, mode)
    out = x.gather(2, src_rows.view(n, 1, h, 1).expand(n, c, h, w))
    out = out.gather(3, src_cols.view(n, 1, 1, w).expand(n, c, h, w))
    if mode == "constant":
        inside = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(
            n, 1, 1, w
        )
        out = torch.where(inside, out, _pixels(fill, c, x.device))
    return out


def random_crop(
    x: torch.Tensor, g: torch.Generator, padding: int = 4, mode: str = "constant", fill: Any = 0
) -> torch.Tensor:
    """RandomCrop(size, padding): pad by `padding` on every side, cut out an image of the
    original size at a random place (so each image moves by up to `padding` pixels)."""
    n = len(x)
    dy = _randint(-padding, padding, n, g, x.device)
    dx = _randint(-padding, padding, n, g, x.device)
    return shift(x, dy, dx, mode, fill)


def translate(
    x: torch.Tensor, g: torch.Generator, fraction: tuple[float, float] = (0.1, 0.1), fill: Any = 0
) -> torch.Tensor:
    """Move each image by up to fraction x width horizontally and fraction x height vertically,
    whole pixels, filling with `fill` (RandomAffine(translate=...) with nearest interpolation)."""
    n, _, h, w = x.shape
    max_x, max_y = round(fraction[0] * w), round(fraction[1] * h)
    dx = _randint(-max_x, max_x, n, g, x.device)
    dy = _randint(-max_y, max_y, n, g, x.device)
    return shift(x, dy, dx, "constant", fill)


def cutout(
    x: torch.Tensor, g: torch.Generator, size: int | float = 0.25, p: float = 1.0, value: Any = 0
) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017): with probability p, paint a size x size square at a random
    centre (it may hang over the edge). `size` below 1 is a fraction of the shorter side."""
    n, c, h, w = x.shape
    side = max(1, round(size * min(h, w))) if size < 1 else int(size)
    cy = _randint(0, h - 1, n, g, x.device).view(n, 1)
    cx = _randint(0, w - 1, n, g, x.device).view(n, 1)
    top, left = cy - side // 2, cx - side // 2
    ys = torch.arange(h, device=x.device).view(1, h)
    xs = torch.arange(w, device=x.device).view(1, w)
    in_rows = (ys >= top) & (ys < top + side)  # (N, H)
    in_cols = (xs >= left) & (xs < left + side)  # (N, W)
    chosen = (_rand(n, g, x.device) < p).view(n, 1, 1, 1)
    square = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w) & chosen
    return torch.where(square, _pixels(value, c, x.device), x)


def apply_step(x: torch.Tensor, g: torch.Generator, name: str, p: dict[str, Any]) -> torch.Tensor:
    """One resolved data.augment step (see transforms.STEPS for the parameters) on a batch."""
    if name == "flip":
        return flip(x, g, p["p"], dim=-1)
    if name == "vflip":
        return flip(x, g, p["p"], dim=-2)
    if name == "crop":
        return random_crop(x, g, p["padding"], p["padding_mode"], p["fill"])
    if name == "translate":
        return translate(x, g, tuple(p["translate"]), p["fill"])
    if name == "cutout":
        return cutout(x, g, p["size"], p["p"], p["value"])
    raise ValueError(f"{name} does not run on whole batches; batchable steps: {BATCHABLE}")


def with_masks(
    x: torch.Tensor, masks: torch.Tensor, g: torch.Generator, name: str, p: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One geometric step on images and their masks together: the mask rides along as one more
    channel, filled with IGNORE where the image gets `fill`."""
    channels = x.shape[1]
    if "fill" in p:
        fill = p["fill"] if isinstance(p["fill"], (list, tuple)) else [p["fill"]]
        fill = list(fill) * channels if len(fill) == 1 else list(fill)
        p = {**p, "fill": [*fill, IGNORE]}
    joined = torch.cat([x, masks.unsqueeze(1).to(x.dtype)], dim=1)
    out = apply_step(joined, g, name, p)
    return out[:, :channels], out[:, channels].to(masks.dtype)


def per_sample_only(steps: list[dict[str, dict]]) -> list[str]:
    """The names of the steps that can only run per sample (empty: the list runs on batches)."""
    names = []
    for step in steps:
        ((name, params),) = step.items()
        uneven = name == "crop" and (
            not isinstance(params["padding"], int) or params["padding_mode"] not in PAD_MODES
        )
        if name not in BATCHABLE or uneven:
            names.append(name)
    return names


class BatchAugment:
    """A resolved data.augment list applied to whole uint8 batches, in order."""

    def __init__(self, steps: list[dict[str, dict]]):
        if per_sample_only(steps):
            raise ValueError(f"not batchable: {', '.join(per_sample_only(steps))}")
        self.steps = [next(iter(step.items())) for step in steps]

    def __call__(self, x: torch.Tensor, g: torch.Generator, masks: torch.Tensor | None = None):
        """The augmented batch; (batch, masks) when `masks` (N, [D,] H, W) are given."""
        for name, params in self.steps:
            if masks is not None and name in GEOMETRIC:
                x, masks = with_masks(x, masks, g, name, params)
            else:
                x = apply_step(x, g, name, params)
        return x if masks is None else (x, masks)

    def __repr__(self) -> str:
        return f"BatchAugment({', '.join(name for name, _ in self.steps)})"


class PerSample(torch.nn.Module):
    """A batch op as a per-sample transform for the DataLoader path: a batch of one image, drawn
    from torch's global RNG (which the worker seeds per sample)."""

    def __init__(self, name: str, params: dict[str, Any]):
        super().__init__()
        self.name, self.params = name, params

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        return apply_step(image.unsqueeze(0), g, self.name, self.params).squeeze(0)
