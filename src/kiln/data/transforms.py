"""Training-time augmentation (`data.augment`), built from YAML with torchvision.transforms.v2.

A user writes a preset name or a list of steps under `data.augment:`; each step is a bare name, or
a one-key mapping whose value is a scalar (the step's main parameter) or a mapping of parameters:

    data:
      augment:
        - flip
        - rotation: 15
        - random_resized_crop: {scale: [0.8, 1.0]}

`resolve_augment` turns either form into the canonical list (one `{name: {params}}` per step, every
default filled in), which is what the run's config.yaml records; `build_augment` turns that into a
`v2.Compose`. Errors name the key and the 0-based step index, e.g. `data.augment[1].rotation`.

The module is applied per sample, in DataLoader workers, to uint8 tensors of shape (C, H, W) that
already have the run's size and channel count, and returns a uint8 tensor of the same shape (no
normalization here: that happens later on whole batches). Pixel-valued parameters (`fill`, the
erasing `value`) are therefore on the 0-255 scale.

Randomness: v2 transforms draw from torch's global RNG. DataLoader seeds it differently in each
worker (from the loader's base seed), and in the main process it follows `torch.manual_seed`, so a
seeded run gets the same augmentations again; nothing here keeps its own generator.

Grayscale runs (C=1): v2 handles them. RandomGrayscale is then the identity, ColorJitter's
saturation and hue are no-ops (matching PIL), and AutoAugment / RandAugment / TrivialAugmentWide
run their ops on the single channel (their colour op is a no-op there). `build_augment` drops
color_jitter's saturation and hue for C=1 so presets can be written once for both.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable
from typing import Any

import torch

from kiln.data.batch_augment import BATCHABLE, PAD_MODES, PerSample
from kiln.errors import ConfigError


class _LazyV2:
    """torchvision.transforms.v2, imported on first use: importing torchvision takes seconds, and
    a run whose steps all run on whole batches never needs it."""

    def __getattr__(self, name: str) -> Any:
        from torchvision.transforms import v2 as module

        return getattr(module, name)


v2 = _LazyV2()

# Presets are data in the YAML form a user would write; `resolve_augment` fills in the defaults.
PRESETS: dict[str, list] = {
    "none": [],
    "light": ["flip"],
    "standard": [{"random_resized_crop": {"scale": [0.8, 1.0]}}, "flip"],
    "strong": [
        {"random_resized_crop": {"scale": [0.5, 1.0]}},
        "flip",
        {"rotation": 15},
        # saturation is dropped at build time on 1-channel runs (it is a no-op there anyway)
        {"color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3}},
        {"random_erasing": {"p": 0.25}},
    ],
}

# Interpolation modes v2 supports on tensors.
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")
POLICIES = ("imagenet", "cifar10", "svhn")  # v2.AutoAugmentPolicy's values

Size = tuple[int, int]


def _pair(v: Any) -> Any:
    """A scalar `v` as [v, v]; anything else passes through (v2 validates it)."""
    return [v, v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _erasing(p: dict[str, Any], size: Size, channels: int) -> v2.Transform:
    return v2.RandomErasing(p=p["p"], scale=p["scale"], ratio=p["ratio"], value=p["value"])


def _color_jitter(p: dict[str, Any], size: Size, channels: int) -> v2.Transform:
    if channels == 1:  # saturation and hue do nothing to one channel; don't draw for them
        p = {**p, "saturation": 0.0, "hue": 0.0}
    return v2.ColorJitter(**p)


def _auto_augment(p: dict[str, Any], size: Size, channels: int) -> v2.Transform:
    policy = v2.AutoAugmentPolicy(p["policy"])
    return v2.AutoAugment(policy, interpolation=p["interpolation"], fill=p["fill"])


def _rrc_scalar(v: Any) -> Any:
    """`random_resized_crop: 0.5` is the smallest fraction of the area kept: scale [0.5, 1.0]."""
    return [v, 1.0] if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class _Step:
    """One transform name: its defaults, how a scalar value maps to parameters, how to build it."""

    def __init__(
        self,
        defaults: dict[str, Any],
        scalar: Callable[[Any], dict[str, Any]],
        build: Callable[[dict[str, Any], Size, int], v2.Transform],
        bare: dict[str, Any] | None = None,
    ) -> None:
        self.defaults = defaults
        self.scalar = scalar
        self.build = build
        self.bare = bare or {}  # what a bare name means, when that differs from the defaults


STEPS: dict[str, _Step] = {
    "flip": _Step({"p": 0.5}, lambda v: {"p": v}, lambda p, s, c: v2.RandomHorizontalFlip(**p)),
    "vflip": _Step({"p": 0.5}, lambda v: {"p": v}, lambda p, s, c: v2.RandomVerticalFlip(**p)),
    "rotation": _Step(
        {"degrees": 15, "interpolation": "nearest", "fill": 0},
        lambda v: {"degrees": v},
        lambda p, s, c: v2.RandomRotation(**p),
    ),
    "translate": _Step(
        {"translate": [0.1, 0.1], "interpolation": "nearest", "fill": 0},
        lambda v: {"translate": _pair(v)},
        lambda p, s, c: v2.RandomAffine(degrees=0, **p),
    ),
    "affine": _Step(
        {
            "degrees": 10,
            "translate": [0.1, 0.1],
            "scale": [0.9, 1.1],
            "shear": None,
            "interpolation": "nearest",
            "fill": 0,
        },
        lambda v: {"degrees": v},
        lambda p, s, c: v2.RandomAffine(**p),
    ),
    "crop": _Step(
        {"padding": 4, "padding_mode": "constant", "fill": 0},
        lambda v: {"padding": v},
        lambda p, s, c: v2.RandomCrop(s, **p),
    ),
    "random_resized_crop": _Step(
        {
            "scale": [0.08, 1.0],
            "ratio": [3 / 4, 4 / 3],
            "interpolation": "bilinear",
            "antialias": True,
        },
        lambda v: {"scale": _rrc_scalar(v)},
        lambda p, s, c: v2.RandomResizedCrop(s, **p),
    ),
    # In the mapping form a factor not named is off; a bare name or a scalar sets brightness,
    # contrast and saturation together (`color_jitter: 0.4`, the common recipe).
    "color_jitter": _Step(
        {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0},
        lambda v: {"brightness": v, "contrast": v, "saturation": v},
        _color_jitter,
        bare={"brightness": 0.4, "contrast": 0.4, "saturation": 0.4},
    ),
    "grayscale": _Step({"p": 0.1}, lambda v: {"p": v}, lambda p, s, c: v2.RandomGrayscale(**p)),
    "auto_augment": _Step(
        {"policy": "imagenet", "interpolation": "nearest", "fill": 0},
        lambda v: {"policy": v},
        _auto_augment,
    ),
    "trivial_augment": _Step(
        {"num_magnitude_bins": 31, "interpolation": "nearest", "fill": 0},
        lambda v: {"num_magnitude_bins": v},
        lambda p, s, c: v2.TrivialAugmentWide(**p),
    ),
    "rand_augment": _Step(
        {
            "num_ops": 2,
            "magnitude": 9,
            "num_magnitude_bins": 31,
            "interpolation": "nearest",
            "fill": 0,
        },
        lambda v: {"magnitude": v},
        lambda p, s, c: v2.RandAugment(**p),
    ),
    # Cutout: a size x size square (size < 1: a fraction of the shorter side) at a random centre.
    "cutout": _Step(
        {"size": 0.25, "p": 1.0, "value": 0},
        lambda v: {"size": v},
        lambda p, s, c: PerSample("cutout", p),
    ),
    "random_erasing": _Step(
        {"p": 0.5, "scale": [0.02, 0.33], "ratio": [0.3, 3.3], "value": 0},
        lambda v: {"p": v},
        _erasing,
    ),
    "gaussian_blur": _Step(
        {"kernel_size": 3, "sigma": [0.1, 2.0]},
        lambda v: {"kernel_size": v},
        lambda p, s, c: v2.GaussianBlur(**p),
    ),
}


def resolve_augment(spec: str | list, key: str = "data.augment") -> list[dict[str, dict]]:
    """Validate a preset name or an explicit list and return the canonical list: one
    {name: {params}} per step, every default filled in, so it can be saved in the run's config.yaml
    and rebuilt identically. Resolving a canonical list again returns it unchanged."""
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name not in PRESETS:
            hint = f" (for a single transform write a list: [{name}])" if name in STEPS else ""
            raise ConfigError(
                f"{key}: unknown preset '{spec}'; presets: {', '.join(PRESETS)}, "
                f"or a list of steps{hint}"
            )
        spec = PRESETS[name]
    if not isinstance(spec, (list, tuple)):
        raise ConfigError(
            f"{key}: expected a preset name ({', '.join(PRESETS)}) or a list of steps, got {spec!r}"
        )
    steps = []
    for i, item in enumerate(spec):
        name, params = _resolve_step(item, f"{key}[{i}]")
        _check(name, params, f"{key}[{i}].{name}", None, None)
        steps.append({name: params})
    return steps


def build_augment(
    steps: list[dict[str, dict]], size: tuple[int, int], channels: int
) -> torch.nn.Module:
    """A v2.Compose of the resolved steps (an identity module for an empty list), for uint8
    (C, H, W) images of the run's `size` (H, W) and `channels` (1 or 3); the output keeps both.
    The steps are validated again, so a list edited by hand in config.yaml gets the same errors."""
    size = (int(size[0]), int(size[1]))
    if channels not in (1, 3):
        raise ConfigError(f"data.channels: augmentation needs 1 or 3 channels, got {channels}")
    resolved = resolve_augment(steps)
    if not resolved:
        return v2.Identity()
    transforms = []
    for i, step in enumerate(resolved):
        ((name, params),) = step.items()
        transforms.append(_check(name, params, f"data.augment[{i}].{name}", size, channels))
    return v2.Compose(transforms)


def _resolve_step(item: Any, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        name, value = item, None
    elif isinstance(item, dict) and len(item) == 1:
        ((name, value),) = item.items()
    else:
        raise ConfigError(
            f"{where}: expected a transform name or a one-key mapping like "
            f"'rotation: 15' or 'flip: {{p: 0.5}}', got {item!r}"
        )
    if not isinstance(name, str) or name.strip().lower() not in STEPS:
        close = difflib.get_close_matches(str(name), STEPS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{where}: unknown transform '{name}'{hint}; available: {', '.join(STEPS)}"
        )
    name = name.strip().lower()
    step = STEPS[name]
    if value is None:
        given = dict(step.bare)
    elif isinstance(value, dict):
        given = dict(value)
    else:
        given = step.scalar(value)
    for param in given:
        if param not in step.defaults:
            raise ConfigError(
                f"{where}.{name}: unknown parameter '{param}'; "
                f"parameters: {', '.join(step.defaults)}"
            )
    params = {k: _plain(given.get(k, default)) for k, default in step.defaults.items()}
    return name, params


def _plain(value: Any) -> Any:
    """YAML-safe and canonical: tuples become lists (yaml.safe_dump cannot write tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check(
    name: str, params: dict[str, Any], where: str, size: Size | None, channels: int | None
) -> v2.Transform:
    """Build the step (with a stand-in size and 3 channels when resolving), turning what v2 or
    these checks reject into a ConfigError that names the step."""
    step = STEPS[name]
    for param, value in params.items():
        default = step.defaults[param]
        if isinstance(default, bool) != isinstance(value, bool):
            kind = "true or false" if isinstance(default, bool) else "a value, not true/false"
            raise ConfigError(f"{where}: {param} must be {kind}, got {value!r}")
    interp = params.get("interpolation")
    if interp is not None and interp not in INTERPOLATIONS:
        raise ConfigError(
            f"{where}: unknown interpolation {interp!r}; choose one of: {', '.join(INTERPOLATIONS)}"
        )
    if name == "auto_augment" and params["policy"] not in POLICIES:
        raise ConfigError(
            f"{where}: unknown policy {params['policy']!r}; choose one of: {', '.join(POLICIES)}"
        )
    if name in ("random_resized_crop", "random_erasing"):
        # v2 only warns about a reversed range
        for pair in ("scale", "ratio"):
            if not _is_range(params[pair], strict=pair == "ratio"):
                raise ConfigError(
                    f"{where}: {pair} must be [min, max] with 0 <= min <= max "
                    f"(ratio: 0 < min), got {params[pair]!r}"
                )
    if name == "cutout":
        size, chance = params["size"], params["p"]
        if not (isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0):
            raise ConfigError(
                f"{where}: size must be pixels (>= 1) or a fraction (< 1), got {size!r}"
            )
        if not (isinstance(chance, (int, float)) and 0 <= chance <= 1):
            raise ConfigError(f"{where}: p must be a probability from 0 to 1, got {chance!r}")
        if not _is_pixel(params["value"]):
            raise ConfigError(
                f"{where}: value must be a pixel value 0-255 or one per channel, "
                f"got {params['value']!r}"
            )
    if name in ("rand_augment", "trivial_augment"):
        _check_magnitudes(params, where)
    if name == "random_erasing" and not _is_pixel(params["value"]):
        # v2 would take 'random', but its normal noise cast to uint8 is mostly 0 and 255
        raise ConfigError(
            f"{where}: value must be a pixel value 0-255 or one per channel, "
            f"got {params['value']!r}"
        )
    if channels is not None:
        for param in ("fill", "value"):
            value = params.get(param)
            if isinstance(value, list) and len(value) not in (1, channels):
                allowed = "1 value" if channels == 1 else f"1 or {channels} values"
                raise ConfigError(
                    f"{where}: {param} has {len(value)} values; the run has {channels} channel(s) "
                    f"(data.channels), so give {allowed}"
                )
    if size is None and name in BATCHABLE:
        _check_batchable(name, params, where)  # no torchvision needed: nor imported
        return None
    try:
        transform = step.build(copy.deepcopy(params), size or (32, 32), channels or 3)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc} (got {params})") from None
    if isinstance(transform, v2.GaussianBlur) and size is not None:
        kx, ky = transform.kernel_size  # (width, height), as v2 pads them
        if kx // 2 >= size[1] or ky // 2 >= size[0]:
            raise ConfigError(
                f"{where}: kernel_size {params['kernel_size']} is too large for "
                f"{size[0]}x{size[1]} images (data.size)"
            )
    return transform


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_batchable(name: str, params: dict[str, Any], where: str) -> None:
    """What v2's constructors would reject, for the steps that also run on whole batches."""
    if name in ("flip", "vflip", "cutout") and not (_number(params["p"]) and 0 <= params["p"] <= 1):
        raise ConfigError(f"{where}: p must be a probability from 0 to 1, got {params['p']!r}")
    if name == "crop":
        pad = params["padding"]
        pads = pad if isinstance(pad, list) else [pad]
        ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pads)
        if not (ints and len(pads) in (1, 2, 4)):
            raise ConfigError(
                f"{where}: padding must be pixels >= 0: one number, [x, y] or "
                f"[left, top, right, bottom], got {pad!r}"
            )
        if params["padding_mode"] not in PAD_MODES:
            raise ConfigError(
                f"{where}: padding_mode must be one of {', '.join(PAD_MODES)}, "
                f"got {params['padding_mode']!r}"
            )
    if name == "translate":
        t = params["translate"]
        if not (isinstance(t, list) and len(t) == 2 and all(_number(v) and 0 <= v <= 1 for v in t)):
            raise ConfigError(f"{where}: translate must be [x, y] fractions from 0 to 1, got {t!r}")
    for key in ("fill", "value"):
        if key in params and not _is_pixel(params[key]):
            raise ConfigError(
                f"{where}: {key} must be a pixel value 0-255 or one per channel, "
                f"got {params[key]!r}"
            )


def _is_range(value: Any, strict: bool) -> bool:
    numbers = isinstance(value, list) and len(value) == 2
    numbers = numbers and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
    return numbers and (0 < value[0] if strict else 0 <= value[0]) and value[0] <= value[1]


def _is_pixel(value: Any) -> bool:
    values = value if isinstance(value, list) and value else [value]
    return all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 255 for v in values
    )


def _check_magnitudes(params: dict[str, Any], where: str) -> None:
    bins = params["num_magnitude_bins"]
    if not isinstance(bins, int) or bins < 2:
        raise ConfigError(f"{where}: num_magnitude_bins must be an integer >= 2, got {bins!r}")
    if "num_ops" in params and (not isinstance(params["num_ops"], int) or params["num_ops"] < 1):
        raise ConfigError(f"{where}: num_ops must be an integer >= 1, got {params['num_ops']!r}")
    magnitude = params.get("magnitude", 0)
    if not isinstance(magnitude, int) or not 0 <= magnitude < bins:
        raise ConfigError(
            f"{where}: magnitude must be an integer from 0 to {bins - 1} "
            f"(num_magnitude_bins - 1), got {magnitude!r}"
        )
