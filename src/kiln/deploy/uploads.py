"""Turning an HTTP request into images, refusing anything a client could abuse.

Every problem becomes a `BadRequest` with a 4xx status and a message that names the part (file
name or JSON index) and what to send instead, so a bad request never becomes a 500.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * MB  # the whole request body
    max_pixels: int = 40_000_000  # per image, width x height, checked before decoding
    max_images: int = 64  # per request


class BadRequest(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Upload:
    name: str
    data: bytes


IMAGE_TYPES = ("image/", "application/octet-stream")


def check_part_type(name: str, content_type: str | None) -> None:
    """Browsers and curl label files image/... (or octet-stream when they cannot tell)."""
    if content_type and not content_type.lower().startswith(IMAGE_TYPES):
        raise BadRequest(
            415,
            f"part '{name}' has content type {content_type}; send image files "
            "(image/png, image/jpeg, ...)",
        )


def from_base64(index: int, text: str, name: str | None = None) -> Upload:
    """Plain base64 or a data URL (data:image/png;base64,...)."""
    label = name or f"images[{index}]"
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise BadRequest(400, f"{label}: a data URL must be base64-encoded (data:...;base64,)")
        check_part_type(label, header[5:].split(";")[0] or None)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"{label} is not valid base64") from None
    return Upload(label, data)


def read_image(upload: Upload, max_pixels: int) -> Image.Image:
    """Decode one upload; the pixel count is read from the header before any pixel is decoded
    (a 50 KB PNG can claim 50,000 x 50,000 pixels)."""
    if not upload.data:
        raise BadRequest(400, f"{upload.name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(upload.data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise BadRequest(
                        413,
                        f"{upload.name} is {width}x{height} = {width * height:,} pixels, above "
                        f"the limit of {max_pixels:,}; send a smaller image",
                    )
                im.load()
                return ImageOps.exif_transpose(im)
    except BadRequest:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        TypeError,
        MemoryError,
    ) as exc:
        if isinstance(exc, UnidentifiedImageError):
            reason = "not a format Pillow recognises"
        else:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadRequest(
            400, f"{upload.name} is not an image Kiln can read ({reason}); send a PNG or JPEG"
        ) from None
