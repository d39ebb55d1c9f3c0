"""Test-time augmentation (`model.tta`): a model's answer for an image averaged over a few views of
it. `flip`: the image and its mirror image (one more forward pass; usually a few tenths of a
percent on natural images such as CIFAR-10). `flip_translate`: also both of those shifted by one
pixel up-left and down-right (six passes; the CIFAR-10 speed runs' test-time views), weighted
half for the unshifted pair and a quarter for each shifted pair. Both are wrong for images whose
mirror means something else (digits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TTA = ("none", "flip", "flip_translate")


def infer(
    model: nn.Module, x: torch.Tensor, tta: str = "none", one_pass: bool = False
) -> torch.Tensor:
    """Logits for a batch, averaged over the test-time views `tta` names. Dense outputs (a
    score per pixel, e.g. task=segment) of a mirrored or shifted view are moved back first.
    `one_pass` stacks the views into one batch and calls the model once: what an exported graph
    does, since a graph that calls the same layers twice cannot be lowered everywhere
    (ExecuTorch's int8 XNNPACK delegate refuses a quantized convolution whose weights another
    call already used)."""
    if tta == "none":
        return model(x)
    views = [x, x.flip(-1)]
    if tta == "flip_translate":
        up_left, down_right = shift(x, -1), shift(x, 1)
        views += [up_left, up_left.flip(-1), down_right, down_right.flip(-1)]
    if one_pass:
        outputs = model(torch.cat(views)).unflatten(0, (len(views), -1)).unbind(0)
    else:
        outputs = [model(view) for view in views]
    dense = outputs[0].dim() == x.dim()  # (N, K, H, W) for (N, C, H, W): the same layout
    logits = _mean_of_mirrors(outputs[0], outputs[1], dense)
    if tta == "flip_translate":
        up_left = _mean_of_mirrors(*outputs[2:4], dense, back=lambda t: shift(t, 1))
        down_right = _mean_of_mirrors(*outputs[4:6], dense, back=lambda t: shift(t, -1))
        logits = logits / 2 + (up_left + down_right) / 4
    return logits


def _mean_of_mirrors(plain, mirrored, dense: bool, back=None) -> torch.Tensor:
    """The mean of the outputs for a view and its mirror image; dense ones are mirrored back
    first and `back` undoes the view's shift."""
    if dense:
        mirrored = mirrored.flip(-1)
        if back is not None:
            plain, mirrored = back(plain), back(mirrored)
    return (plain + mirrored) / 2


def shift(x: torch.Tensor, by: int) -> torch.Tensor:
    """x's content moved `by` pixels along its last two dimensions (1: one pixel down and right,
    -1: up and left), the edge reflected into the gap; in x's memory format."""
    h, w = x.shape[-2:]
    flat = x.reshape(-1, h, w)  # reflection padding takes (C, H, W) whatever came before
    padded = F.pad(flat, (1, 1, 1, 1), mode="reflect")
    start = 1 - by
    moved = padded[:, start : start + h, start : start + w].reshape(x.shape)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not x.is_contiguous():  # one channel (or 1x1) is both: leave it be
        moved = moved.contiguous(memory_format=torch.channels_last)
    return moved
