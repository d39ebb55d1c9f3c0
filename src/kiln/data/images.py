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

from kiln.errors import KilnError

ImageLike = str | Path | Image.Image | torch.Tensor
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
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
        ImageOps.exif_transpose(im, in_place=True)  # rotated where needed, never copied
        return im


def convert_mode(image: Image.Image, channels: int) -> Image.Image:
    """To "L" or "RGB"; transparent pixels are composited onto black, as training images were."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)  # (no copy of what fits)


# Past this many pixels the cover-resize is not made in full: only the region that survives the
# crop is resampled (an image of 1 x 10,000,000 pixels would otherwise be stretched to 80,000,000
# x 8 to cover an 8 x 8 input: 640 million pixels for 64 that are kept).
MAX_COVER_PIXELS = 16_000_000


# data.resize: how an image of another size becomes (height, width); the sidecar says it in words.
RESIZE = {
    "cover": "scale to cover height x width (bilinear), then center-crop",
    "fit": "scale to fit inside height x width (bilinear), then pad with black, centered",
    "stretch": "stretch to height x width (bilinear), whatever the aspect ratio",
}


def fit_size(
    image: Image.Image,
    height: int,
    width: int,
    resample=Image.Resampling.BILINEAR,
    mode: str = "cover",
    fill: int = 0,
) -> Image.Image:
    """To (height, width) as data.resize says (`mode`): `cover` scales so the image covers it,
    then center-crops (no distortion, no borders); `fit` scales so it fits inside, then pads
    with `fill`, centered (no distortion, nothing cut off: the tutorials' letterbox); `stretch`
    resizes to it (nothing cut off, no borders). `resample` NEAREST for masks, whose values are
    class indices (and `fill` 255 for them: ignored)."""
    if image.size == (width, height):
        return image
    if mode == "stretch":
        return resize(image, (width, height), resample)
    if mode == "fit":
        scale = min(width / image.width, height / image.height)
        resized = (min(width, max(1, round(image.width * scale))),
                   min(height, max(1, round(image.height * scale))))  # fmt: skip
        canvas = Image.new(image.mode, (width, height), fill)
        canvas.paste(resize(image, resized, resample),
                     ((width - resized[0]) // 2, (height - resized[1]) // 2))  # fmt: skip
        return canvas
    scale = max(width / image.width, height / image.height)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
    if resized[0] * resized[1] > MAX_COVER_PIXELS:  # an extreme aspect ratio: the kept region
        sx, sy = image.width / resized[0], image.height / resized[1]
        box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
        return image.resize((width, height), resample, box=box, reducing_gap=None)
    image = resize(image, resized, resample)
    return image.crop((left, top, left + width, top + height))


def resize(image: Image.Image, size: tuple[int, int], resample) -> Image.Image:
    """Pillow's resize with its horizontal pass first, always. Pillow 13 picks the order of its
    two passes by a cost estimate, and the order moves some pixels by one level: two one-axis
    calls give the same pixels with every Pillow, and what an export's graph computes
    (kiln/deploy/preprocess.py)."""
    if resample == Image.Resampling.NEAREST:  # no rounding between passes: the order is moot
        return image.resize(size, resample, reducing_gap=None)
    if image.width != size[0]:
        image = image.resize((size[0], image.height), resample, reducing_gap=None)
    if image.height != size[1]:
        image = image.resize(size, resample, reducing_gap=None)
    return image


def decode(
    image: Image.Image | Path | str, channels: int, height: int, width: int, resize: str = "cover"
) -> torch.Tensor:
    """uint8 (C, H, W) in the run's channels and size (resized as data.resize says)."""
    if not isinstance(image, Image.Image):
        image = open_image(Path(image))
    array = to_array(image, channels, height, width, resize)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def to_array(
    image: Image.Image, channels: int, height: int, width: int, resize: str = "cover"
) -> np.ndarray:
    """uint8 (H, W, C) in the run's channels and size, of an image already opened (and rotated
    by its EXIF orientation): what `decode` gives, before it becomes a tensor."""
    image = fit_size(convert_mode(image, channels), height, width, mode=resize)
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


def to_uint8(
    image: ImageLike, input_shape: tuple[int, int, int], resize: str = "cover"
) -> torch.Tensor:
    """Any image -> uint8 (C, H, W) in the model's channels and size (tensors are checked)."""
    if isinstance(image, (str, Path, Image.Image)):
        path = image if isinstance(image, (str, Path)) else None
        try:
            return decode(image, *input_shape, resize=resize)
        except UNREADABLE as exc:
            raise KilnError(f"cannot read image {path or 'given'}: {exc}") from None
    if isinstance(image, torch.Tensor):
        tensor = image.unsqueeze(0) if image.dim() == 2 else image
        if tuple(tensor.shape) != tuple(input_shape):
            raise KilnError(
                f"tensor of shape {tuple(tensor.shape)} does not match the run's input "
                f"{tuple(input_shape)}; pass an image or a tensor of that shape"
            )
        return tensor
    raise KilnError(f"cannot predict on {type(image).__name__}: pass a path, PIL image or tensor")


def normalize(tensor: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels are scaled to [0, 1] first; float tensors are taken as already scaled."""
    x = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    return (x - mean) / std


def expand_paths(
    paths: Iterable[str | Path], suffixes: Iterable[str] = IMAGE_SUFFIXES, kind: str = "images"
) -> list[Path]:
    """Files as given; folders expanded to the files inside them with one of `suffixes`
    (recursively, sorted)."""
    suffixes = tuple(suffixes)
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes)
            if not found:
                raise KilnError(f"folder {p} holds no {kind} ({', '.join(suffixes)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise KilnError(f"{p} does not exist")
    return out
