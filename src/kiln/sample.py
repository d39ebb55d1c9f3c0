"""New images from a trained VAE or GAN run, as one grid or one PNG each.

`sample_images(run_dir, n, seed)` is the one function the CLI (and anything else that wants
samples: a report, an export) calls: it rebuilds the model from the run directory, loads its
weights with torch.load(weights_only=True) and decodes n seeded draws of z ~ N(0, I).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from kiln.errors import ConfigError, RunError

GENERATIVE_TASKS = ("vae", "gan")


def load_generative(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """The run's model with its weights, in evaluation mode, and its config."""
    from kiln.predict import load_model
    from kiln.rundir import RunDir

    run = RunDir.open(run_dir)
    cfg = run.load_config()
    if cfg.task not in GENERATIVE_TASKS:
        raise RunError(
            f"{run.path} is a task={cfg.task} run; kiln sample draws new images from "
            f"task=vae or task=gan runs"
        )
    model, _ = load_model(run, which, device)
    if not hasattr(model, "sample"):
        raise RunError(f"the model of {run.path} ({cfg.model.name}) has no sample(n) method")
    return model, cfg


def sample_images(
    run_dir: str | Path,
    n: int = 64,
    seed: int = 0,
    checkpoint: str = "best",
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """n generated images as uint8 (n, C, H, W); the same seed gives the same images."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    model, _ = load_generative(run_dir, checkpoint, device)
    pixels = model.sample(n, generator=torch.Generator().manual_seed(seed))
    return to_uint8(pixels)


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
