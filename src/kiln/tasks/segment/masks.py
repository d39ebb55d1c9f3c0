"""Masks for new images from a segmentation run (`kiln predict RUN images... -o OUT/`).

An image is predicted at its own size (a U-Net takes any size): the mask has one class index per
pixel of the image given. Its channels are converted to the run's, and it is normalized with the
run's mean and std, as in training. Volumes (.npy, (C, D, H, W) or (D, H, W)) likewise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kiln.data.images import UNREADABLE, convert_mode, expand_paths, open_image
from kiln.data.masks import VOLUME, read_volume
from kiln.data.overlay import display_image, middle, overlay, palette
from kiln.data.registry import DataInfo
from kiln.errors import KilnError

Input = str | Path | Image.Image | torch.Tensor | np.ndarray


def read_input(item: Input, info: DataInfo) -> torch.Tensor:
    """An image (C, H, W) uint8 in the run's channels, or a volume (C, D, H, W), at its own size."""
    volumes = info.depth is not None
    if isinstance(item, (str, Path)) and Path(item).suffix == VOLUME:
        item = read_volume(Path(item))
    if isinstance(item, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(item))
    elif isinstance(item, (str, Path, Image.Image)):
        if volumes:
            raise KilnError(f"{item}: this run segments volumes; pass .npy files (C, D, H, W)")
        try:
            image = open_image(Path(item)) if not isinstance(item, Image.Image) else item
        except UNREADABLE as exc:
            raise KilnError(f"cannot read image {item}: {exc}") from None
        array = np.asarray(convert_mode(image, info.channels), dtype=np.uint8)
        tensor = torch.from_numpy(array.reshape(*array.shape[:2], info.channels).copy())
        return tensor.permute(2, 0, 1)
    elif isinstance(item, torch.Tensor):
        tensor = item
    else:
        raise KilnError(f"cannot segment {type(item).__name__}: pass a path, image or tensor")
    spatial = 3 if volumes else 2
    if tensor.dim() == spatial:  # one channel, without its axis
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != spatial + 1 or tensor.shape[0] != info.channels:
        kind = "(C, D, H, W)" if volumes else "(C, H, W)"
        raise KilnError(f"input of shape {tuple(tensor.shape)}: the run takes {kind} with "
                        f"C = {info.channels}")  # fmt: skip
    return tensor if tensor.dtype == torch.uint8 else tensor.float()


def write_masks(predictor, files: Sequence[Path], out: Path, with_overlay: bool) -> list[dict]:
    """OUT/<name>.png (volumes: OUT/<name>.npy) holding class indices, and with `with_overlay`
    OUT/<name>.overlay.png (the mask painted over the image; volumes: the middle slice)."""
    check_names(files)
    out.mkdir(parents=True, exist_ok=True)
    info = predictor.info
    colours = palette(len(info.classes))
    results = []
    for path in files:
        mask = predictor.predict(path)
        target = out / (path.stem + (VOLUME if mask.dim() == 3 else ".png"))
        if mask.dim() == 3:
            np.save(target, mask.numpy())
        else:
            Image.fromarray(mask.numpy(), mode="L").save(target)
        entry: dict[str, Any] = {"file": str(path), "mask": str(target),
                                 "classes": class_shares(mask, info.classes)}  # fmt: skip
        if with_overlay:
            picture = display_image(read_input(path, info))
            drawn = out / f"{path.stem}.overlay.png"
            Image.fromarray(overlay(picture, middle(mask), colours)).save(drawn)
            entry["overlay"] = str(drawn)
        results.append(entry)
    return results


def class_shares(mask: torch.Tensor, classes: list[str]) -> dict[str, float]:
    """The fraction of the pixels given to each class found, largest first."""
    counts = torch.bincount(mask.flatten().long(), minlength=len(classes)).tolist()
    shares = {classes[k]: round(c / mask.numel(), 4) for k, c in enumerate(counts) if c}
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def check_names(files: Sequence[Path]) -> None:
    """Masks are named after their images: two inputs of one name would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise KilnError(f"{seen[path.stem]} and {path} would both write {path.stem}.png; "
                            "predict them into separate folders (-o)")  # fmt: skip
        seen[path.stem] = path


def expand_inputs(paths: Sequence[str | Path], volumes: bool) -> list[Path]:
    """Files as given; folders expanded to their images (volumes: .npy files), sorted."""
    return expand_paths(paths, (VOLUME,), "volumes") if volumes else expand_paths(paths)
