"""Reading a /predict request into uploads and a batch: multipart files or a JSON body, parsed
and decoded in the server's work queue (threads), never on the event loop."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.exceptions import HTTPException

from kiln.deploy.uploads import (
    MAX_NAME_CHARS,
    MAX_TOP_K,
    BadRequest,
    Limits,
    Upload,
    check_part_type,
    from_base64,
    parse_json,
    read_image,
)
from kiln.deploy.workqueue import WorkQueue
from kiln.infer import Servable


class PredictJSON(BaseModel):
    """JSON alternative to multipart: base64 images (or data: URLs), optional names."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1, description="base64 image files or data: URLs")
    names: list[Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]] | None = Field(
        None, description="one per image, echoed back as 'file'"
    )
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="overrides the query parameter")


def describe(error: dict[str, Any]) -> str:
    where = " ".join(str(x) for x in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}"


async def read_uploads(
    request: Request, limits: Limits, top_k: int, work: WorkQueue
) -> tuple[list[Upload], int]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        uploads = await read_multipart(request, limits)
    elif media == "application/json":
        body = await request.body()  # already read in full by BodyLimit
        uploads, top_k = await work.run(read_json, body, top_k, limits.max_images)
    else:
        raise BadRequest(
            415, f"content type '{media or 'none'}' is not accepted: send multipart/form-data "
            "with image files, or application/json {\"images\": [base64, ...]}",
        )  # fmt: skip
    if not uploads:
        raise BadRequest(400, "no image in the request: attach files (multipart field 'files')")
    if len(uploads) > limits.max_images:
        raise BadRequest(
            413, f"{len(uploads)} images in one request, above the limit of {limits.max_images}"
        )
    return uploads, top_k


async def read_multipart(request: Request, limits: Limits) -> list[Upload]:
    try:
        form = await request.form(
            max_files=limits.max_images + 1, max_fields=limits.max_images + 16
        )
    except (HTTPException, ValueError, KeyError, AssertionError) as exc:
        detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
        raise BadRequest(400, f"cannot parse the multipart body: {detail}") from None
    uploads = []
    try:
        for field, value in form.multi_items():
            if isinstance(value, str):
                if field == "top_k":
                    continue
                raise BadRequest(
                    400, f"form field '{field}' is text, not a file: attach image files"
                )
            name = value.filename or field
            check_part_type(name, value.content_type)
            uploads.append(Upload(name, await value.read()))
    finally:
        await form.close()
    return uploads


def read_json(body: bytes, top_k: int, max_images: int) -> tuple[list[Upload], int]:
    """A JSON body -> uploads (in a worker thread: parsing and base64 cost CPU time)."""
    raw = parse_json(body, max_images)
    try:
        parsed = PredictJSON.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(422, "; ".join(describe(e) for e in exc.errors()[:10])) from None
    if parsed.names is not None and len(parsed.names) != len(parsed.images):
        raise BadRequest(422, f"{len(parsed.names)} names for {len(parsed.images)} images")
    names = parsed.names or [None] * len(parsed.images)
    pairs = enumerate(zip(parsed.images, names, strict=True))
    uploads = [from_base64(i, text, name) for i, (text, name) in pairs]
    return uploads, parsed.top_k or top_k


def decode_all(servable: Servable, uploads: list[Upload], max_pixels: int):
    """Images -> one batch, through the same preprocessing as `kiln predict` (normalized; or
    decoded pixels as they are for an export that carries its preprocessing)."""
    from kiln.errors import KilnError

    batch = []
    for upload in uploads:
        image = read_image(upload, max_pixels)
        try:
            batch.append(servable.preprocess(image))
        except KilnError as exc:
            raise BadRequest(400, f"{upload.name}: {exc}") from None
    return servable.collate(batch)
