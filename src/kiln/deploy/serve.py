"""`kiln serve`: a FastAPI app around a run or an export, with a page at / and docs at /docs.

Requests that arrive together are answered by one forward pass (see `Batcher`); bodies, image
sizes and counts are bounded (`Limits`), decoding and parsing run in a bounded queue of threads
(`WorkQueue`), and the guards in kiln.deploy.guards stand in front; every bad request gets a 4xx
(or 503) JSON message.
"""

from __future__ import annotations

import base64
import time
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from kiln.deploy.batching import Batcher
from kiln.deploy.guards import (
    BearerToken,
    BodyLimit,
    HostCheck,
    LastResort,
    allowed_hosts,
    answer_for,
    problem,
)
from kiln.deploy.reading import PredictJSON, decode_all, describe, read_uploads
from kiln.deploy.uploads import MAX_TOP_K, BadRequest, Limits
from kiln.deploy.workqueue import WorkQueue
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
        403: "without a token: a Host header that is not this server's address",
        408: "the body did not arrive in time",
        413: "body, image, image shape, JSON size or image count above the server's limits",
        415: "not multipart/form-data or application/json, or a part that is not an image",
        422: "parameters out of range",
        503: "busy (past the queue's limit) or out of memory: try again after Retry-After",
    }.items()
}


# The app ------------------------------------------------------------------------------------------


def default_threads() -> int:
    """Decoding threads: one core is left to the event loop and the model (on 2 cores, 40
    concurrent 40-megapixel uploads kept /health near 100 ms with 1 thread, 235 ms with 2: see
    benchmarks/hostile.py), and each thread may hold a large decoded image."""
    from kiln.data.workers import cpu_count

    return max(1, min(2, cpu_count() - 1))


@dataclass(frozen=True)
class Protection:
    """How the server defends itself, besides the sizes in `Limits` (see kiln.deploy.guards)."""

    hosts: frozenset[str] | None = None  # without a token: Host names allowed (None: no check)
    allow_origins: tuple[str, ...] = ()  # CORS: browser origins allowed to call the API
    body_timeout: float = 30.0  # seconds for a request body to arrive in full
    decode_threads: int = 1  # images decoded (and JSON parsed) at once; see default_threads
    queue: int = 128  # requests waiting for a decoding thread; past it 503
    max_connections: int = 256  # open connections and requests at once (uvicorn); past it 503


def create_app(
    servable: Servable,
    token: str | None = None,
    limits: Limits = Limits(),
    max_batch: int = 64,
    protection: Protection = Protection(),
) -> FastAPI:
    """The FastAPI app; `serve` runs it under uvicorn, tests call it through httpx.
    `max_batch`: images per forward pass when requests queue up (1 turns batching off)."""
    from kiln.deploy.docs import add_docs

    spec = servable.spec
    if spec.input.depth is not None:
        raise RunError(
            f"{servable.source} segments volumes (.npy, C x D x H x W); kiln serve takes image "
            "uploads: predict on volumes with `kiln predict RUN volumes/ -o masks/`"
        )
    title = f"Kiln: {spec.model.name} ({spec.model.run})"
    about = f"task {spec.task}, {len(servable.classes)} outputs; {spec.format}"
    about += f" via {servable.runtime}"
    app = FastAPI(title=title, version=spec.model.kiln_version, docs_url=None, redoc_url=None,
                  description=f"{about}. POST images to /predict.")  # fmt: skip
    add_docs(app, title)
    batcher = Batcher(servable, max_batch=max_batch)
    work = WorkQueue(protection.decode_threads, protection.queue)
    page = files("kiln.deploy").joinpath("page.html").read_text()

    @app.exception_handler(MemoryError)
    @app.exception_handler(RecursionError)
    async def exhausted(request: Request, exc: Exception):
        return answer_for(exc)

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException):
        return problem(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return problem(422, "; ".join(describe(e) for e in exc.errors()))

    @app.exception_handler(BadRequest)
    async def bad(request: Request, exc: BadRequest):
        return problem(exc.status, exc.detail, exc.headers)

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
    async def predict(
        request: Request, top_k: int = Query(5, ge=1, le=MAX_TOP_K)
    ) -> PredictResponse:
        started = time.perf_counter()
        if servable.task.generates:
            raise BadRequest(404, f"this model generates images (task={spec.task}): it takes no "
                             "images to answer; GET /sample?n=16 for new ones")  # fmt: skip
        uploads, top_k = await read_uploads(request, limits, top_k, work)
        images = await work.run(decode_all, servable, uploads, limits.max_pixels)
        outputs = await batcher.outputs(images)
        rows = [servable.task.serve_answer(r) for r in servable.answers(uploads, outputs, top_k)]
        predictions = [{"file": u.name, **row} for u, row in zip(uploads, rows, strict=True)]
        elapsed = (time.perf_counter() - started) * 1000
        return PredictResponse(predictions=predictions, model=spec.model.name, elapsed_ms=elapsed)

    if servable.task.generates:
        add_sampling(app, servable, limits)
    else:
        from kiln.deploy.explain_route import add_explain

        add_explain(app, servable, limits, work, ERRORS, PREDICT_BODY)  # POST /explain

    # The last added runs first: LastResort, HostCheck, CORS, BearerToken, BodyLimit, the app.
    app.add_middleware(
        BodyLimit, max_bytes=limits.max_upload_bytes, timeout=protection.body_timeout
    )
    if token:
        app.add_middleware(BearerToken, token=token)
    if protection.allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(protection.allow_origins),
            allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip
    if protection.hosts is not None and not token:
        app.add_middleware(HostCheck, hosts=protection.hosts)
    app.add_middleware(LastResort)
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


def serve(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    limits: Limits = Limits(),
    max_batch: int = 64,
    protection: Protection = Protection(),
    log=print,
    checkpoint: str = "best",
) -> None:
    """Load (a run: its `checkpoint`), warm up, then run uvicorn until interrupted."""
    import dataclasses

    import uvicorn

    from kiln.infer import load_servable

    servable = load_servable(path, which=checkpoint)
    servable.logits(servable.example(1))  # first call pays the set-up
    if protection.hosts is None:  # without a token, requests must address this server
        protection = dataclasses.replace(protection, hosts=frozenset(allowed_hosts(host)))
    app = create_app(servable, token=token, limits=limits, max_batch=max_batch,
                     protection=protection)  # fmt: skip
    spec = servable.spec
    shown = f"[{host}]" if ":" in host else host
    log(f"Serving {spec.model.name} from {servable.source} ({spec.format}, {servable.runtime}), "
        f"task {spec.task}, {len(servable.classes)} outputs")  # fmt: skip
    log(f"Page: http://{shown}:{port}/   API docs: http://{shown}:{port}/docs")
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log(f"warning: listening on {host} without --token: anyone who can reach it can use it")
    uvicorn.run(
        app, host=host, port=port, log_level="warning", access_log=False,
        limit_concurrency=protection.max_connections, timeout_keep_alive=5,
    )  # fmt: skip
