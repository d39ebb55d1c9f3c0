"""Masks drawn over their images: a colour per class (black background), for `kiln data show`,
a segmentation run's plots and the overlays `kiln predict --overlay` writes."""

from __future__ import annotations

import numpy as np
import torch

from kiln.data.batch_augment import IGNORE


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours: black background, then well-separated hues (tab10, then more)."""
    import matplotlib

    base = [matplotlib.colors.to_rgb(c) for c in matplotlib.colormaps["tab10"].colors]
    extra = matplotlib.colormaps["hsv"](np.linspace(0, 1, max(num_classes, 2), endpoint=False))
    colours = [(0.0, 0.0, 0.0), *base, *(tuple(c[:3]) for c in extra)]
    return (np.array(colours[:num_classes]) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.55):
    """An (H, W, 3) uint8 picture: the image in gray or colour, each non-background class painted
    over it in its colour (IGNORE pixels left as they are)."""
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    rgb = rgb.astype(np.float32)
    painted = (mask > 0) & (mask != IGNORE)
    colour = colours[np.where(painted, mask, 0).clip(0, len(colours) - 1)].astype(np.float32)
    rgb[painted] = (1 - alpha) * rgb[painted] + alpha * colour[painted]
    return rgb.round().astype(np.uint8)


def display_image(image: torch.Tensor) -> np.ndarray:
    """A uint8 picture (H, W) or (H, W, 3) from a dataset item (C, H, W) or a volume's middle
    slice (C, D, H, W); float volumes are stretched to 0-255."""
    if image.dim() == 4:
        image = image[:, image.shape[1] // 2]
    x = image.float()
    if image.dtype != torch.uint8:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8) * 255
    x = x.round().clamp(0, 255).to(torch.uint8)
    return x[0].numpy() if x.shape[0] != 3 else x.permute(1, 2, 0).numpy()


def middle(mask: torch.Tensor) -> np.ndarray:
    """A 2-D mask as is, a volume's mask at its middle slice."""
    return (mask[mask.shape[0] // 2] if mask.dim() == 3 else mask).numpy()
