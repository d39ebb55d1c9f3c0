"""Masks for new images from a segmentation run: `kiln predict RUN images... -o OUT/` and
`kiln.load(RUN).predict(images)` for task=segment.

An image is predicted at its own size (a U-Net takes any size): the mask has one class index per
pixel of the image given. Its channels are converted to the run's, and it is normalized with the
run's mean and std, as in training. Volumes (.npy, (C, D, H, W) or (D, H, W)) likewise.

The steps are separate functions (read, normalize, scores -> mask, write) around any callable that
maps a normalized batch to class scores, so an exported model's runtime can reuse them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kiln.data.images import UNREADABLE, convert_mode, open_image
from kiln.data.masks import VOLUME, read_volume
from kiln.data.memory import Normalize
from kiln.data.registry import DataInfo
from kiln.errors import KilnError
from kiln.evaluate.segment import display_image, middle, overlay, palette
from kiln.models.tta import infer

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


class MaskPredictor:
    """`.predict(images)` -> one uint8 mask of class indices per image (or volume)."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        info: DataInfo,
        device: str | torch.device = "cpu",
        tta: str = "none",
    ):
        self.model, self.info, self.device, self.tta = model, info, torch.device(device), tta
        self.normalize = Normalize(info.mean, info.std, self.device)

    @classmethod
    def from_run(
        cls, run_dir: str | Path, which: str = "best", device: str = "cpu", model=None
    ) -> MaskPredictor:
        from kiln.predict import load_model
        from kiln.rundir import RunDir

        run = RunDir.open(run_dir)
        model, _ = load_model(run, which, device, model)
        return cls(model, run.data_info(), device, run.load_config().model.tta)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @torch.inference_mode()
    def predict_one(self, item: Input) -> torch.Tensor:
        """(H, W) or (D, H, W) uint8 class indices, the size of the input."""
        x = self.normalize(read_input(item, self.info).unsqueeze(0).to(self.device))
        if hasattr(self.model, "eval"):
            self.model.eval()
        scores = infer(self.model, x, self.tta)
        return scores.argmax(dim=1)[0].to(torch.uint8).cpu()

    def predict(self, images: Input | Sequence[Input]) -> torch.Tensor | list[torch.Tensor]:
        """A mask for one image, or a list of masks for a list of images."""
        if isinstance(images, (str, Path, Image.Image, np.ndarray, torch.Tensor)):
            return self.predict_one(images)
        return [self.predict_one(item) for item in images]

    def write(self, files: Sequence[Path], out: Path, with_overlay: bool = False) -> list[dict]:
        """OUT/<name>.png (volumes: OUT/<name>.npy) holding class indices, and with `with_overlay`
        OUT/<name>.overlay.png (the mask painted over the image; volumes: the middle slice)."""
        check_names(files)
        out.mkdir(parents=True, exist_ok=True)
        colours = palette(len(self.classes))
        results = []
        for path in files:
            mask = self.predict_one(path)
            target = out / (path.stem + (VOLUME if mask.dim() == 3 else ".png"))
            if mask.dim() == 3:
                np.save(target, mask.numpy())
            else:
                Image.fromarray(mask.numpy(), mode="L").save(target)
            entry: dict[str, Any] = {"file": str(path), "mask": str(target),
                                     "classes": class_shares(mask, self.classes)}  # fmt: skip
            if with_overlay:
                picture = display_image(read_input(path, self.info))
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
    from kiln.predict import expand_paths

    return expand_paths(paths, (VOLUME,), "volumes") if volumes else expand_paths(paths)
