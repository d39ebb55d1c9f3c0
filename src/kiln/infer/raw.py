"""Inputs of an export that carries its preprocessing (`kiln export --embed-preprocessing`):
decoded images as they are, uint8 RGB (H, W, 3) at their own size. The graph converts, resizes,
crops and normalizes them itself (kiln/deploy/preprocess.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kiln.data.images import UNREADABLE, ImageLike, convert_mode, open_image
from kiln.errors import KilnError


def raw_rgb(image: ImageLike) -> torch.Tensor:
    """Any image -> uint8 RGB (H, W, 3) at its own size: EXIF rotation applied and transparent
    pixels put on black, as Kiln's decode does. A uint8 tensor (H, W, 3) passes as it is; one
    (C, H, W) with 1 or 3 channels is turned around."""
    if isinstance(image, torch.Tensor):
        return tensor_rgb(image)
    if not isinstance(image, (str, Path, Image.Image)):
        kind = type(image).__name__
        raise KilnError(f"cannot predict on {kind}: pass a path, PIL image or tensor")
    try:
        if not isinstance(image, Image.Image):
            image = open_image(Path(image))
        array = np.asarray(convert_mode(image, 3), dtype=np.uint8)
    except UNREADABLE as exc:
        raise KilnError(f"cannot read image {image if isinstance(image, (str, Path)) else 'given'}"
                        f": {exc}") from None  # fmt: skip
    return torch.from_numpy(array.copy())


def tensor_rgb(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype == torch.uint8 and tensor.dim() == 3 and tensor.shape[2] == 3:
        return tensor
    if tensor.dtype == torch.uint8 and tensor.dim() == 3 and tensor.shape[0] in (1, 3):
        return tensor.expand(3, -1, -1).permute(1, 2, 0).contiguous()
    raise KilnError(
        f"a tensor of {tensor.dtype} {tuple(tensor.shape)} is not an image this export takes: "
        "pass uint8 (H, W, 3) RGB, uint8 (C, H, W), or a file"
    )


def ragged(images: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """One tensor when the images share a size, else the list (one forward pass per size)."""
    if len({tuple(x.shape) for x in images}) <= 1:
        return torch.stack(images)
    return list(images)


def by_size(forward: Callable[[torch.Tensor], torch.Tensor], images: list[torch.Tensor]):
    """forward() over images of several sizes, one batch per size, answers in the given order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    answers: list[torch.Tensor | None] = [None] * len(images)
    for index in groups.values():
        for i, out in zip(index, forward(torch.stack([images[i] for i in index])), strict=True):
            answers[i] = out
    return torch.stack(answers)
