"""Pictures as files: uint8 pixels, grids (torchvision's make_grid) and PNGs, for `kiln sample`,
the reports, TensorBoard, segmentation masks over HTTP and GET /sample."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from kiln.errors import ConfigError


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> uint8 on the CPU."""
    return (pixels.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def image_grid(images: torch.Tensor, columns: int | None = None, pad: int = 2) -> torch.Tensor:
    """(N, C, H, W) uint8 (or floats in [0, 1]) -> one (C, rows x H, columns x W) uint8 image,
    `pad` white pixels between cells; square-ish by default (torchvision's make_grid)."""
    from torchvision.utils import make_grid

    if images.is_floating_point():
        images = to_uint8(images)
    columns = columns or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images, nrow=columns, padding=pad, pad_value=255)
    return grid[: images.shape[1]]  # make_grid repeats one channel three times


def display_scale(height: int) -> int:
    """How many times to enlarge a grid of `height`-pixel images for viewing (8x8 digits: 7)."""
    return max(1, math.ceil(56 / height))


def save_png(image: torch.Tensor, path: Path, scale: int = 1) -> Path:
    """A (C, H, W) uint8 image as a PNG (grey for one channel), enlarged `scale` times."""
    from PIL import Image
    from torchvision.transforms.v2.functional import to_pil_image

    picture = to_pil_image(image)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def is_folder(output: str | Path) -> bool:
    return str(output).endswith(("/", "\\")) or Path(output).is_dir()


def check_output(output: str | Path) -> None:
    if not is_folder(output) and Path(output).suffix.lower() != ".png":
        raise ConfigError(
            f"-o {output}: write a grid to a .png file, or single images to a folder (end it in /)"
        )


def write_samples(images: torch.Tensor, output: str | Path) -> list[Path]:
    """A grid when `output` is a .png file; one PNG per image when it is a folder (ends in /)."""
    check_output(output)
    out = Path(output)
    if is_folder(output):
        digits = max(3, len(str(len(images) - 1)))
        return [save_png(img, out / f"sample_{i:0{digits}d}.png") for i, img in enumerate(images)]
    return [save_png(image_grid(images), out)]


def png_bytes(image: torch.Tensor) -> bytes:
    """A uint8 (C, H, W) image (or an (H, W) mask) as PNG file bytes."""
    from torchvision.transforms.v2.functional import to_pil_image

    buffer = io.BytesIO()
    to_pil_image(image).save(buffer, format="PNG")
    return buffer.getvalue()
