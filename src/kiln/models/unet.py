"""U-Net (Ronneberger et al., 2015): a class score for every pixel (or voxel) of an image.

The encoder halves the size and doubles the channels `depth` times; the decoder doubles the size
back, each time joining (concatenating) the encoder's features of the same size through a skip
connection, so fine detail lost by pooling comes back. One 1x1 convolution turns the last
features into class scores. The same code builds the 2-D network (images) and the 3-D one
(volumes): only the layer types change.

Inputs whose sides are not multiples of 2**depth are padded with zeros up to the next multiple and
the scores cropped back, so any size works and the output always matches the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kiln.data.registry import DataInfo
from kiln.models.registry import register_model

UPSAMPLING = ("bilinear", "transpose")


def layers_for(dims: int) -> dict[str, type[nn.Module]]:
    """The 2-D or 3-D versions of the layers a U-Net is made of."""
    if dims == 2:
        return {"conv": nn.Conv2d, "norm": nn.BatchNorm2d, "pool": nn.MaxPool2d,
                "up": nn.ConvTranspose2d, "dropout": nn.Dropout2d}  # fmt: skip
    return {"conv": nn.Conv3d, "norm": nn.BatchNorm3d, "pool": nn.MaxPool3d,
            "up": nn.ConvTranspose3d, "dropout": nn.Dropout3d}  # fmt: skip


class DoubleConv(nn.Sequential):
    """(3x3 convolution, batch norm, ReLU) twice: the U-Net's building block."""

    def __init__(self, in_channels: int, out_channels: int, dims: int, dropout: float = 0.0):
        L = layers_for(dims)
        super().__init__(
            L["conv"](in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            L["norm"](out_channels),
            nn.ReLU(inplace=True),
            L["conv"](out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            L["norm"](out_channels),
            nn.ReLU(inplace=True),
            *([L["dropout"](dropout)] if dropout > 0 else []),
        )


class Down(nn.Sequential):
    """Halve the size (2x2 max-pool), then a DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, dims: int, dropout: float = 0.0):
        super().__init__(
            layers_for(dims)["pool"](2), DoubleConv(in_channels, out_channels, dims, dropout)
        )


class Up(nn.Module):
    """Double the size, concatenate the skip connection, then a DoubleConv.

    `transpose`: a learned 2x2 transposed convolution that also halves the channels; `bilinear`
    (trilinear in 3-D): fixed interpolation followed by a 1x1 convolution that halves them."""

    def __init__(self, in_channels: int, out_channels: int, dims: int, up: str):
        super().__init__()
        L = layers_for(dims)
        if up == "transpose":
            self.up = L["up"](in_channels, out_channels, kernel_size=2, stride=2)
        else:
            mode = "bilinear" if dims == 2 else "trilinear"
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
                L["conv"](in_channels, out_channels, kernel_size=1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels, dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: int = 2,
        depth: int = 4,
        width: int = 32,
        up: str = "bilinear",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.depth = depth
        channels = [width * 2**level for level in range(depth + 1)]  # e.g. 32, 64, 128, 256, 512
        self.stem = DoubleConv(in_channels, channels[0], dims)
        # dropout where the features are most abstract: the two deepest levels
        self.downs = nn.ModuleList(
            Down(channels[i], channels[i + 1], dims, dropout if i >= depth - 2 else 0.0)
            for i in range(depth)
        )
        self.ups = nn.ModuleList(
            Up(channels[i + 1], channels[i], dims, up) for i in reversed(range(depth))
        )
        self.head = layers_for(dims)["conv"](channels[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        x = pad_to_multiple(x, 2**self.depth)
        if x.dim() == 5 and x.device.type == "cpu":  # 3-D convolutions trained 1.3x faster
            x = x.contiguous(memory_format=torch.channels_last_3d)  # on the CPU in this layout
        skips = []
        x = self.stem(x)
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up, skip in zip(self.ups, reversed(skips), strict=True):
            x = up(x, skip)
        scores = self.head(x)
        # crop the padding back off: one score per input pixel
        return scores[(..., *(slice(0, s) for s in sizes))]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the spatial sides (after the batch and channel axes) at their far end up to the
    next multiple, so `depth` halvings divide evenly (zero is the mean of normalized inputs)."""
    extra = [-size % multiple for size in x.shape[2:]]
    if not any(extra):
        return x
    pad = []
    for amount in reversed(extra):  # F.pad lists the last axis first: (left, right, top, ...)
        pad += [0, amount]
    return F.pad(x, pad)


@register_model("unet", "U-Net for segmentation: a class per pixel (dims=2) or voxel (dims=3)")
def unet(
    info: DataInfo,
    dims: int | str = "auto",
    depth: int = 4,
    width: int = 32,
    up: str = "bilinear",
    dropout: float = 0.0,
) -> nn.Module:
    """`dims`: 2 for images, 3 for volumes, auto: from the data (volumes have a depth)."""
    volumes = getattr(info, "depth", None) is not None
    if dims == "auto":
        dims = 3 if volumes else 2
    if dims not in (2, 3):
        raise ValueError(f"model.dims must be 2, 3 or auto, got {dims!r}")
    if volumes != (dims == 3):
        data = "volumes (C, D, H, W)" if volumes else "2-D images (C, H, W)"
        raise ValueError(f"model.dims={dims} does not fit the data, which are {data}; "
                         f"set model.dims={3 if volumes else 2} or auto")  # fmt: skip
    for key, value in (("depth", depth), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
    if up not in UPSAMPLING:
        raise ValueError(f"model.up must be one of {', '.join(UPSAMPLING)}, got {up!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
    return UNet(info.channels, info.num_outputs, dims, depth, width, up, dropout)
