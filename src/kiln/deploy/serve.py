"""`kiln serve`: a FastAPI app around a run or an export, with a page at / and docs at /docs.

Requests that arrive together are answered by one forward pass (see `Batcher`); bodies, image
sizes and counts are bounded (`Limits`); every bad request gets a 4xx JSON message.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from kiln.deploy.uploads import BadRequest, Limits, Upload, check_part_type, from_base64, read_image
from kiln.errors import RunError
from kiln.infer import Servable

# Schemas (they are the OpenAPI document at /docs) -------------------------------------------------


class Score(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    """A classifier answers label, probability and top_k (a multi-label one: labels and top_k);
    a regression model answers values; other tasks answer their own fields (kept as they are)."""

    model_config = ConfigDict(extra="allow")
    file: str
    label: str | None = None
    probability: float | None = None
    top_k: list[Score] | None = None
    labels: list[Score] | None = Field(
        None, description="task=multilabel: every label at or above its threshold"
    )
    threshold: float | None = Field(None, description="task=binary: the positive class's")
    values: dict[str, float] | None = Field(None, description="task=regress: target -> value")
    mask_png: str | None = Field(
        None, description="task=segment: base64 PNG, one class index per pixel, at the model's "
        "input size (the image resized and center-cropped as for classification)",
    )  # fmt: skip
    classes: dict[str, float] | None = Field(
        None, description="task=segment: share of the mask's pixels per class"
    )


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str
    elapsed_ms: float


class PredictJSON(BaseModel):
    """JSON alternative to multipart: base64 images (or data: URLs), optional names."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1, description="base64 image files or data: URLs")
    names: list[str] | None = Field(None, description="one per image, echoed back as 'file'")
    top_k: int | None = Field(None, ge=1, description="overrides the query parameter")


class Problem(BaseModel):
    detail: str


class Samples(BaseModel):
    images: list[str] = Field(description="base64 PNG files, one per image")
    seed: int
    model: str


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "application/json": {"schema": PredictJSON.model_json_schema()},
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in {
        400: "the request or an image in it cannot be read",
        401: "missing or wrong bearer token (only when the server has one)",
        413: "body, image or image count above the server's limits",
        415: "not multipart/form-data or application/json, or a part that is not an image",
        422: "parameters out of range",
    }.items()
}


# Batching -----------------------------------------------------------------------------------------


class Batcher:
    """Concurrent requests share forward passes: while the model runs, new requests queue, and the
    next pass takes all of them (up to `max_batch` images). No timer, so no added latency when
    requests come one at a time."""

    def __init__(self, servable: Servable, max_batch: int = 64):
        self.servable, self.max_batch = servable, max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None

    async def outputs(self, x: torch.Tensor) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or a new event loop (tests)
            self._loop, self._queue = loop, asyncio.Queue()
            loop.create_task(self._work(self._queue))
        future = loop.create_future()
        await self._queue.put((x, future))
        return await future

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            jobs = [await queue.get()]
            size = len(jobs[0][0])
            while not queue.empty() and size + len(queue._queue[0][0]) <= self.max_batch:
                jobs.append(queue.get_nowait())
                size += len(jobs[-1][0])
            try:
                batch = torch.cat([x for x, _ in jobs])
                outputs = await run_in_threadpool(self.servable.logits, batch)
            except Exception as exc:  # the model failed: every waiting request hears it
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for x, future in jobs:
                if not future.done():
                    future.set_result(outputs[start : start + len(x)])
                start += len(x)


# Middleware (plain ASGI: they answer before FastAPI reads anything) -------------------------------


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class BearerToken:
    """Every route but /health needs `Authorization: Bearer TOKEN`, compared in constant time.

    The page itself (GET /, static HTML without any model data) is the one exception: a browser
    cannot send the header when it opens a URL, so the page reads the token from its address
    (/#token=TOKEN, a fragment the browser never sends) and puts it on its own API calls."""

    OPEN = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/"), ("HEAD", "/")}

    def __init__(self, app, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["method"], scope["path"]) not in self.OPEN:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = problem(
                    401,
                    "this server needs a token: send the header 'Authorization: Bearer TOKEN'",
                    {"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """Reads the body up to the limit before the app sees it; one byte more is a 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = problem(
            413, f"request body above the server's limit of {self.max_bytes:,} bytes "
            "(kiln serve --max-upload-mb); send fewer or smaller images",
        )  # fmt: skip
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await problem(400, "invalid Content-Length header")(scope, receive, send)
            if int(declared) > self.max_bytes:
                return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await too_big(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# The app ------------------------------------------------------------------------------------------


def create_app(
    servable: Servable,
    token: str | None = None,
    limits: Limits = Limits(),
    max_batch: int = 64,
) -> FastAPI:
    """The FastAPI app; `serve` runs it under uvicorn, tests call it through httpx.
    `max_batch`: images per forward pass when requests queue up (1 turns batching off)."""
    spec = servable.spec
    if spec.input.depth is not None:
        raise RunError(
            f"{servable.source} segments volumes (.npy, C x D x H x W); kiln serve takes image "
            "uploads: predict on volumes with `kiln predict RUN volumes/ -o masks/`"
        )
    title = f"Kiln: {spec.model.name} ({spec.model.run})"
    about = f"task {spec.task}, {len(servable.classes)} outputs; {spec.format}"
    about += f" via {servable.runtime}"
    app = FastAPI(title=title, version=spec.model.kiln_version,
                  description=f"{about}. POST images to /predict.")  # fmt: skip
    batcher = Batcher(servable, max_batch=max_batch)
    page = files("kiln.deploy").joinpath("page.html").read_text()

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException):
        return problem(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return problem(422, "; ".join(describe(e) for e in exc.errors()))

    @app.exception_handler(BadRequest)
    async def bad(request: Request, exc: BadRequest):
        return problem(exc.status, exc.detail)

    @app.get("/health", summary="liveness: no token needed")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": spec.model.name}

    @app.get("/metadata", summary="classes, input spec, model name and version")
    async def metadata() -> dict[str, Any]:
        return {**servable.metadata(), "limits": asdict(limits)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        openapi_extra=PREDICT_BODY,
        summary="answers for one or many images (multipart files or JSON base64): top-k labels, "
        "or values for a regression model",
    )
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000)) -> PredictResponse:
        started = time.perf_counter()
        if servable.task.generates:
            raise BadRequest(404, f"this model generates images (task={spec.task}): it takes no "
                             "images to answer; GET /sample?n=16 for new ones")  # fmt: skip
        uploads, top_k = await read_uploads(request, limits, top_k)
        images = await run_in_threadpool(decode_all, servable, uploads, limits.max_pixels)
        outputs = await batcher.outputs(images)
        rows = [servable.task.serve_answer(r) for r in servable.answers(uploads, outputs, top_k)]
        predictions = [{"file": u.name, **row} for u, row in zip(uploads, rows, strict=True)]
        elapsed = (time.perf_counter() - started) * 1000
        return PredictResponse(predictions=predictions, model=spec.model.name, elapsed_ms=elapsed)

    if servable.task.generates:
        add_sampling(app, servable, limits)

    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    if token:
        app.add_middleware(BearerToken, token=token)  # added last: runs first
    return app


def add_sampling(app: FastAPI, servable: Servable, limits: Limits) -> None:
    """GET /sample for a generator (task=vae|gan): n new images, the same as `kiln sample`."""
    from kiln.evaluate.images import image_grid, png_bytes

    @app.get(
        "/sample",
        responses={200: {"content": {"image/png": {}}, "description": "a PNG grid (format=png)"},
                   **{k: v for k, v in ERRORS.items() if k in (401, 422)}},
        response_model=Samples,
        summary="n new images from the generator: one PNG grid, or JSON with a PNG per image",
    )  # fmt: skip
    async def sample(
        n: int = Query(16, ge=1, le=limits.max_images),
        seed: int = Query(0, ge=0, le=2**31 - 1),
        format: Literal["png", "json"] = "png",
    ):
        images = await run_in_threadpool(servable.sample, n, seed)
        if format == "png":
            return Response(png_bytes(image_grid(images)), media_type="image/png")
        encoded = [base64.b64encode(png_bytes(im)).decode("ascii") for im in images]
        return Samples(images=encoded, seed=seed, model=servable.spec.model.name)


def describe(error: dict[str, Any]) -> str:
    where = " ".join(str(x) for x in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}"


async def read_uploads(request: Request, limits: Limits, top_k: int) -> tuple[list[Upload], int]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        uploads = await read_multipart(request, limits)
    elif media == "application/json":
        uploads, top_k = await read_json(request, top_k)
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


async def read_json(request: Request, top_k: int) -> tuple[list[Upload], int]:
    try:
        raw = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the body is not valid JSON ({exc})") from None
    try:
        body = PredictJSON.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(422, "; ".join(describe(e) for e in exc.errors())) from None
    if body.names is not None and len(body.names) != len(body.images):
        raise BadRequest(422, f"{len(body.names)} names for {len(body.images)} images")
    names = body.names or [None] * len(body.images)
    pairs = enumerate(zip(body.images, names, strict=True))
    uploads = [from_base64(i, text, name) for i, (text, name) in pairs]
    return uploads, body.top_k or top_k


def decode_all(servable: Servable, uploads: list[Upload], max_pixels: int) -> torch.Tensor:
    """Images -> one normalized batch, through the same preprocessing as `kiln predict`."""
    from kiln.errors import KilnError

    batch = []
    for upload in uploads:
        image = read_image(upload, max_pixels)
        try:
            batch.append(servable.preprocess(image))
        except KilnError as exc:
            raise BadRequest(400, f"{upload.name}: {exc}") from None
    return torch.stack(batch)


def serve(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    limits: Limits = Limits(),
    max_batch: int = 64,
    log=print,
) -> None:
    """Load, warm up, then run uvicorn until interrupted."""
    import uvicorn

    from kiln.infer import load_servable

    servable = load_servable(path)
    servable.logits(servable.example(1))  # first call pays the set-up
    app = create_app(servable, token=token, limits=limits, max_batch=max_batch)
    spec = servable.spec
    shown = f"[{host}]" if ":" in host else host
    log(f"Serving {spec.model.name} from {servable.source} ({spec.format}, {servable.runtime}), "
        f"task {spec.task}, {len(servable.classes)} outputs")  # fmt: skip
    log(f"Page: http://{shown}:{port}/   API docs: http://{shown}:{port}/docs")
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log(f"warning: listening on {host} without --token: anyone who can reach it can use it")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
