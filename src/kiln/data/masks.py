"""Segmentation data (`data.name=seg-folder`): images with a parallel folder of masks.

    ROOT/classes.txt                optional: one class name a line, background first; a line
                                    `name #rrggbb` also maps that RGB mask colour to the class
    ROOT/train/images/NAME.png      ROOT/train/masks/NAME.png   (the same file stem)
    ROOT/val/...                    optional: else data.val_fraction of train, at random
    ROOT/test/...                   optional: else data.test_fraction of train, at random

A mask holds one class index per pixel: a grayscale PNG whose values are the indices, a palette
PNG (the palette index is the class), or RGB colours listed in classes.txt. 255 marks pixels
whose class is unknown: no loss and no metric counts them. Without classes.txt the classes are
0 ("background") to the largest index found.

Volumes (3-D segmentation): images/NAME.npy of shape (C, D, H, W) or (D, H, W), uint8 (pixels,
scaled like images) or any number type (read as float32 in its own units), with masks/NAME.npy
(D, H, W) of integers. Volumes must all have one shape; they are not resized.

Everything is decoded into memory: images as (N, C, H, W) or (N, C, D, H, W), masks as uint8
(N, H, W) or (N, D, H, W), the `labels` of a Split.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kiln.data.batch_augment import IGNORE
from kiln.data.folder import listing
from kiln.data.images import (
    IMAGE_SUFFIXES,
    UNREADABLE,
    convert_mode,
    fit_size,
    infer_channels,
    infer_size,
    open_image,
)
from kiln.data.registry import RawDataset, Split, register_dataset
from kiln.data.workers import default_workers
from kiln.errors import ConfigError, DataError

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")
VOLUME = ".npy"


@register_dataset(
    "seg-folder",
    "segmentation: ROOT/{train,test}/images/* with masks/* of the same name (PNG, or .npy volumes)",
)
def load_seg_folder(cfg, root: Path) -> RawDataset:
    if cfg.balance != "none":
        raise ConfigError("data.balance balances whole-image classes; with masks use "
                          "train.dice_weight (Dice weighs every class alike) instead")  # fmt: skip
    if not (root / "train").is_dir():
        raise DataError(
            f"data.root={root}: expected {root / 'train' / 'images'} and "
            f"{root / 'train' / 'masks'} (and test/, val/ alike); `kiln data make mnist-seg` "
            "builds an example"
        )
    problems: list[str] = []
    pairs = {
        s: find_pairs(root / s, problems) for s in ("train", "val", "test") if (root / s).is_dir()
    }
    names, colours = read_classes(root / "classes.txt")
    train_pairs = pairs["train"]
    if not train_pairs:
        raise DataError(f"no image with a mask under {root / 'train'}" + listing(problems))
    if train_pairs[0][0].suffix == VOLUME:
        loaded, sizes, modes = load_volume_splits(pairs, cfg.channels, names, problems)
    else:
        channels, size, sizes, modes = image_format(train_pairs, pairs, cfg)
        workers = default_workers(cfg.workers)
        loaded = {s: load_images(v, channels, size, colours, names, problems, workers, cfg.resize)
                  for s, v in pairs.items()}  # fmt: skip
    if problems and cfg.on_bad == "error":
        raise DataError(f"{len(problems)} problem(s) in the images and masks, found before "
                        f"training:{listing(problems)}\nFix or remove these files, or set "
                        "data.on_bad=skip to train on the rest")  # fmt: skip
    if names is None:  # classes 0 .. the largest index in any mask
        known = [m[m != IGNORE] for _, m in loaded.values()]
        found = max((int(k.max()) for k in known if k.numel()), default=0)
        names = ["background", *(str(i) for i in range(1, found + 1))]
    splits = {s: Split(*loaded[s]) for s in loaded if len(loaded[s][1])}
    if "train" not in splits:
        raise DataError(f"no readable image with a mask under {root / 'train'}")
    train, test = splits["train"], splits.get("test")
    if test is None:  # no test split given: hold out a fixed random part of train
        from kiln.data import stratified_split

        train, test = stratified_split(train, cfg.test_fraction)
    return RawDataset(train, test, names, val=splits.get("val"), skipped=problems, sizes=sizes,
                      modes=modes)  # fmt: skip


def find_pairs(folder: Path, problems: list[str]) -> list[tuple[Path, Path]]:
    """(image, mask) paths of one split, matched by file stem; strays go to `problems`."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            problems.append(f"{d}: folder missing ({folder} needs images/ and masks/)")
            return []
    images = by_stem(images_dir, (*IMAGE_SUFFIXES, VOLUME), problems)
    masks = by_stem(masks_dir, (*MASK_SUFFIXES, VOLUME), problems)
    for stem, mask in masks.items():
        if stem not in images:
            problems.append(f"{mask}: a mask without an image; expected {images_dir / stem}.png "
                            "(or .jpg, .npy, ...)")  # fmt: skip
    pairs = []
    for stem, image in images.items():
        if stem in masks:
            pairs.append((image, masks[stem]))
        else:
            suffix = VOLUME if image.suffix == VOLUME else ".png"
            problems.append(f"{image}: no mask; expected {masks_dir / (stem + suffix)}")
    return pairs


def by_stem(folder: Path, suffixes: tuple[str, ...], problems: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            problems.append(f"{path}: same name as {found[path.stem]}; keep one of them")
            continue
        found[path.stem] = path
    return found


def read_classes(path: Path) -> tuple[list[str] | None, dict[tuple, int] | None]:
    """Class names (background first) and, for RGB masks, colour -> class index."""
    if not path.is_file():
        return None, None
    names, colours = [], {}
    lines = [line.strip() for line in path.read_text().splitlines()]
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        match = re.fullmatch(r"(.+?)(?:\s+#([0-9a-fA-F]{6}))?", line)
        names.append(match.group(1))
        if match.group(2):
            rgb = tuple(int(match.group(2)[i : i + 2], 16) for i in (0, 2, 4))
            if rgb in colours:
                raise DataError(f"{path}:{number}: colour #{match.group(2)} is already class "
                                f"{names[colours[rgb]]}")  # fmt: skip
            colours[rgb] = len(names) - 1
    if not names or len(names) > IGNORE:
        raise DataError(f"{path}: list 1 to {IGNORE} class names, one a line (background first)")
    return names, colours or None


def image_format(train_pairs, pairs, cfg) -> tuple[int, tuple[int, int], dict, dict]:
    """Channels and size of the run (data.channels / data.size, else what most training images
    are), and the sizes and modes of every image, from their headers."""
    headers = {}
    for image, _ in (p for split in pairs.values() for p in split):
        try:
            with Image.open(image) as im:
                headers[image] = (im.mode, im.height, im.width)
        except (OSError, SyntaxError, ValueError):
            headers[image] = ("unreadable", 0, 0)  # load_images reports it
    train_heads = [headers[image] for image, _ in train_pairs]
    channels = cfg.channels or infer_channels(mode for mode, _, _ in train_heads)
    size = tuple(cfg.size or infer_size((h, w) for _, h, w in train_heads))
    sizes = dict(Counter(f"{h}x{w}" for _, h, w in headers.values()).most_common())
    modes = dict(Counter(mode for mode, _, _ in headers.values()).most_common())
    return channels, size, sizes, modes


def load_images(
    pairs, channels: int, size, colours, names, problems, workers: int, resize: str = "cover"
) -> tuple:
    """Decode a split's images and masks, in DataLoader worker processes (small PNGs cost more in
    PIL's Python than in decoding: threads would wait for the GIL); `resize`: data.resize."""
    height, width = size
    source = PairSource(pairs, channels, size, colours, names, resize)
    chunks = [list(range(b, min(b + 256, len(pairs)))) for b in range(0, len(pairs), 256)]
    loader = DataLoader(source, batch_sampler=chunks, collate_fn=as_list,
                        num_workers=min(workers, len(chunks)))  # fmt: skip
    results = [r for chunk in loader for r in chunk]
    problems += [r for r in results if isinstance(r, str)]
    good = [r for r in results if not isinstance(r, str)]
    if not good:
        return torch.empty(0, channels, height, width, dtype=torch.uint8), torch.empty(0)
    images = torch.from_numpy(np.stack([g[0] for g in good])).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.stack([g[1] for g in good]))


def as_list(batch: list) -> list:
    return batch


class PairSource(Dataset):
    """index -> (image (H, W, C) uint8, mask (H, W) uint8) in the run's channels and size, or the
    problem (a str) that keeps the pair out."""

    def __init__(self, pairs, channels: int, size, colours, names, resize: str = "cover"):
        self.pairs, self.channels, self.size = pairs, channels, size
        self.colours, self.names, self.resize = colours, names, resize

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray] | str:
        image_path, mask_path = self.pairs[index]
        height, width = self.size
        try:
            image, mask_image = open_image(image_path), open_image(mask_path)
        except UNREADABLE as exc:
            return f"{image_path} or its mask {mask_path}: cannot be read ({exc})"
        if image.size != mask_image.size:
            return (
                f"{mask_path}: the mask is {mask_image.width}x{mask_image.height} but its image "
                f"{image_path} is {image.width}x{image.height}; they must match"
            )
        mask = mask_array(mask_image, mask_path, self.colours)
        if isinstance(mask, str):
            return mask
        bad = bad_index(mask, self.names, mask_path)
        if bad:
            return bad
        image = fit_size(convert_mode(image, self.channels), height, width, mode=self.resize)
        pixels = np.asarray(image, np.uint8).reshape(height, width, self.channels)
        return pixels, fit_mask(mask, height, width, self.resize)


def mask_array(mask: Image.Image, path: Path, colours) -> np.ndarray | str:
    """(H, W) uint8 class indices from a mask image, or a problem (str)."""
    if mask.mode in ("L", "P"):  # grayscale values, or palette indices: the classes
        return np.asarray(mask, dtype=np.uint8)
    if mask.mode in ("1", "I", "I;16", "LA"):
        values = np.asarray(mask.getchannel(0) if mask.mode == "LA" else mask)
        if values.max(initial=0) > IGNORE:
            return f"{path}: mask values up to {values.max()}; class indices go up to 254"
        return values.astype(np.uint8)
    if mask.mode not in ("RGB", "RGBA"):
        return f"{path}: mask mode {mask.mode}; use a grayscale, palette or RGB PNG"
    if not colours:
        return (
            f"{path}: an RGB mask, but no colours are listed; write classes.txt in data.root "
            "with `name #rrggbb` a line, or save masks as class indices (grayscale PNG)"
        )
    rgb = np.asarray(mask.convert("RGB"), dtype=np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(code.shape, IGNORE, dtype=np.uint8)
    for (r, g, b), index in colours.items():
        out[code == (r << 16) | (g << 8) | b] = index
    unknown = code[out == IGNORE]
    if len(unknown):
        first = int(unknown[0])
        return f"{path}: colour #{first:06x} is not in classes.txt ({len(unknown)} pixels)"
    return out


def bad_index(mask: np.ndarray, names: list[str] | None, path: Path) -> str | None:
    """A problem when a mask holds a class index beyond the classes listed in classes.txt."""
    if names is None or mask.max(initial=0) < len(names):
        return None
    values = np.unique(mask)
    bad = values[(values >= len(names)) & (values != IGNORE)]
    if len(bad):
        return (f"{path}: class index {', '.join(map(str, bad[:5]))} but classes.txt lists "
                f"{len(names)} classes (0-{len(names) - 1}; 255 = ignore)")  # fmt: skip
    return None


def fit_mask(mask: np.ndarray, height: int, width: int, resize: str = "cover") -> np.ndarray:
    """The image's geometry (fit_size, as data.resize says), with nearest neighbours so that
    class indices stay class indices; the padding of `fit` is ignored (255)."""
    if mask.shape == (height, width):
        return mask
    nearest = Image.Resampling.NEAREST
    return np.asarray(fit_size(Image.fromarray(mask), height, width, nearest, resize, IGNORE))


def read_volume(path: Path) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    return array[None] if array.ndim == 3 else array


def volume_shape(path: Path, problems: list[str]) -> tuple[int, ...]:
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: cannot be read as a NumPy array ({exc})")
        return ()


def load_volume_splits(pairs: dict, channels: int | None, names, problems) -> tuple:
    """Every split's volumes in the shape most training volumes have; float32 for all when any
    is not uint8 (then every volume is numbers in its own units)."""
    shapes = Counter(volume_shape(p, problems) for p, _ in pairs["train"])
    shape = shapes.most_common(1)[0][0]
    shape = tuple(shape) if len(shape) == 4 else (1, *shape)  # (D, H, W): one channel
    loaded = {s: load_volumes(v, shape, channels, names, problems) for s, v in pairs.items()}
    floats = any(images.is_floating_point() for images, _ in loaded.values())
    loaded = {s: (i.float() if floats else i, m) for s, (i, m) in loaded.items()}
    count = sum(len(m) for _, m in loaded.values())
    sizes = {"x".join(map(str, shape[1:])): count}
    return loaded, sizes, {f"npy {'float32' if floats else 'uint8'}": count}


def load_volumes(pairs, shape, channels: int | None, names, problems) -> tuple:
    """Stack a split's volumes (N, C, D, H, W) and masks (N, D, H, W)."""
    if channels is not None and channels != shape[0]:
        raise ConfigError(f"data.channels={channels}, but the volumes have {shape[0]} channel(s)")
    images, masks = [], []
    for image_path, mask_path in pairs:
        try:
            image, mask = read_volume(image_path), np.load(mask_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            problems.append(f"{image_path} or its mask {mask_path}: cannot be read ({exc})")
            continue
        if image.shape != shape:
            problems.append(f"{image_path}: shape {image.shape}, but most volumes are {shape} "
                            "(C, D, H, W); volumes are not resized")  # fmt: skip
        elif mask.shape != shape[1:]:
            problems.append(
                f"{mask_path}: the mask is {mask.shape} but its volume {image_path} is "
                f"{image.shape[1:]} (D, H, W); they must match"
            )
        elif not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
            problems.append(f"{mask_path}: mask of {mask.dtype}; save class indices as integers")
        elif mask.min(initial=0) < 0 or mask.max(initial=0) > IGNORE:
            problems.append(f"{mask_path}: mask values outside 0-255 (class indices, 255 = ignore)")
        elif problem := bad_index(mask, names, mask_path):
            problems.append(problem)
        else:
            images.append(image if image.dtype == np.uint8 else image.astype(np.float32))
            masks.append(mask.astype(np.uint8))
    if not images:
        return torch.empty(0, *shape, dtype=torch.uint8), torch.empty(0)
    if any(i.dtype != np.uint8 for i in images):  # mixed: every volume as numbers
        images = [i.astype(np.float32) for i in images]
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))
