"""Turning any image file into the run's input: channels, EXIF orientation, size (and which
channels and size a run of mixed images takes: what most of its training images are).

Training, evaluation and prediction all go through `decode`, so a PNG of any size or mode gets
exactly the preprocessing the model was trained with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

SINGLE_CHANNEL_MODES = {"1", "L", "LA", "I", "I;16", "F"}

# What PIL raises for a file that is not a readable image (not a bug): caught, and reported
# with the file's name.
UNREADABLE = (
    UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
)  # fmt: skip


def open_image(path: Path) -> Image.Image:
    """Open and fully decode (so a truncated file fails here, not later), EXIF rotation applied."""
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im)


def convert_mode(image: Image.Image, channels: int) -> Image.Image:
    """To "L" or "RGB"; transparent pixels are composited onto black, as training images were."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)  # (no copy of what fits)


def fit_size(
    image: Image.Image, height: int, width: int, resample=Image.Resampling.BILINEAR
) -> Image.Image:
    """Scale so the image covers (height, width), then center-crop: no distortion, no borders
    (`resample` NEAREST for masks, whose values are class indices)."""
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(resized, resample, reducing_gap=None)
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


def decode(image: Image.Image | Path | str, channels: int, height: int, width: int) -> torch.Tensor:
    """uint8 (C, H, W) in the run's channels and size."""
    if not isinstance(image, Image.Image):
        image = open_image(Path(image))
    return torch.from_numpy(to_array(image, channels, height, width).copy()).permute(2, 0, 1)


def to_array(image: Image.Image, channels: int, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, C) in the run's channels and size, of an image already opened (and rotated
    by its EXIF orientation): what `decode` gives, before it becomes a tensor."""
    image = fit_size(convert_mode(image, channels), height, width)
    return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def infer_channels(modes: Iterable[str]) -> int:
    """1 when most training images (their PIL modes) are single-channel, else 3."""
    modes = list(modes)
    single = sum(mode in SINGLE_CHANNEL_MODES for mode in modes)
    return 1 if single * 2 > len(modes) else 3


def infer_size(sizes: Iterable[tuple[int, int]]) -> list[int]:
    """The most common (height, width) among the training images."""
    (height, width), _ = Counter(sizes).most_common(1)[0]
    return [height, width]
