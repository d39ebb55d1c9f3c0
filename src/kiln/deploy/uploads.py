"""Turning an HTTP request into images, refusing anything a client could abuse.

Every problem becomes a `BadRequest` with a 4xx status and a message that names the part (file
name or JSON index) and what to send instead, so a bad request never becomes a 500.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from kiln.deploy.guards import OUT_OF_MEMORY

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * MB  # the whole request body
    max_pixels: int = 40_000_000  # per image, width x height, checked before decoding
    max_images: int = 64  # per request


# Limits that are not settings: what no valid request comes near.
MAX_ASPECT = 1000  # width:height or height:width; no model input is that far from square
MAX_NAME_CHARS = 256  # a name in a JSON body, echoed back as "file"
MAX_TOP_K = 1000


class BadRequest(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


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


def check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    """413 for an image with too many pixels, or a shape no model input can use (a 1 x 10,000,000
    strip costs memory per row to decode, and is nothing but stretched pixels once cropped)."""
    if width * height > max_pixels:
        raise BadRequest(
            413,
            f"{name} is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,}; send a smaller image",
        )
    if max(width, height) > MAX_ASPECT * max(min(width, height), 1):
        raise BadRequest(
            413,
            f"{name} is {width}x{height}, an aspect ratio above the limit of {MAX_ASPECT}:1 "
            "(the model sees a center crop of it); crop it closer to the model's input shape",
        )


def read_image(upload: Upload, max_pixels: int) -> Image.Image:
    """Decode one upload; the size is read from the header and checked before any pixel is
    decoded (a 50 KB PNG can claim 50,000 x 50,000 pixels), and again once decoded."""
    if not upload.data:
        raise BadRequest(400, f"{upload.name} is empty")
    try:
        with Image.open(io.BytesIO(upload.data)) as im:
            check_size(upload.name, *im.size, max_pixels)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no copy: a 40 MP image is 120 MB
        check_size(upload.name, *im.size, max_pixels)
        return im
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadRequest(
            413, f"{upload.name} has more pixels than the server decodes ({exc}); the limit is "
            f"{max_pixels:,} pixels: send a smaller image",
        ) from None  # fmt: skip
    except MemoryError:
        raise BadRequest(503, f"{upload.name}: {OUT_OF_MEMORY}", {"Retry-After": "5"}) from None
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        TypeError,
        KeyError,
        struct.error,
        ZeroDivisionError,
        RecursionError,
    ) as exc:
        if isinstance(exc, UnidentifiedImageError):
            reason = "not a format Pillow recognises"
        else:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadRequest(
            400, f"{upload.name} is not an image Kiln can read ({reason}); send a PNG or JPEG"
        ) from None


# JSON bodies ------------------------------------------------------------------------------------


def json_shape_check(body: bytes, max_images: int) -> None:
    """Refuse, before parsing, a body with far more values than a request can need (3 million
    empty strings parse into 3 million Python objects): every list item, key or nesting level
    costs a `,`, `:`, `[` or `{`, and a valid body has a few per image (names may hold some)."""
    found = sum(body.count(c) for c in (b",", b":", b"[", b"{"))
    allowed = 16 + max_images * (8 + MAX_NAME_CHARS)
    if found > allowed:
        raise BadRequest(
            413,
            f"the JSON body holds {found:,} separators (',', ':', '[' or '{{'), far more than "
            f"{max_images} images and their names need (at most {allowed:,}); send "
            '{"images": [base64, ...], "names": [...]}',
        )


def parse_json(body: bytes, max_images: int) -> Any:
    """The body as Python objects, or a 4xx: too many values, too deep, not JSON."""
    json_shape_check(body, max_images)
    try:
        raw = json.loads(body)
    except RecursionError:
        raise BadRequest(400, "the JSON body is nested too deeply; send a flat object") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the body is not valid JSON ({exc})") from None
    images = raw.get("images") if isinstance(raw, dict) else None
    if isinstance(images, list) and len(images) > max_images:
        raise BadRequest(413, f"{len(images)} images in one request, above the limit of "
                         f"{max_images}")  # fmt: skip
    return raw
