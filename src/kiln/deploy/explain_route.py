"""POST /explain: why the served model answered as it did, as heat maps over each uploaded image
(kiln/infer/explain.py, from the task's `explain`). Served from a run directory only: the maps
follow gradients through the eager model, which an export does not carry."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, Field

from kiln.deploy.reading import read_uploads
from kiln.deploy.uploads import BadRequest, Limits, Upload, read_image
from kiln.deploy.workqueue import WorkQueue
from kiln.errors import KilnError
from kiln.infer import Servable


class Heat(BaseModel):
    label: str
    score: float = Field(description="the class's probability (segmentation: share of pixels)")
    method: str = Field(description="gradcam (LAYER) or integrated gradients")
    overlay_png: str = Field(description="base64 PNG: the image as the model saw it, map over it")
    heat_png: str = Field(description="base64 PNG: the map alone, grey levels 0-255")


class Explained(BaseModel):
    file: str
    explanations: list[Heat]


class ExplainResponse(BaseModel):
    explanations: list[Explained]
    model: str
    elapsed_ms: float


def available(servable: Servable) -> str | None:
    """Why this server cannot explain, or None when it can."""
    if servable.model is None:
        return (
            f"{servable.source.name} is an export: explanations follow gradients through the "
            "model, so serve the run directory (kiln serve RUN) to get them"
        )
    if not servable.task.explains:
        return f"explanations are not available for task={servable.spec.task}"
    return None


def explain_uploads(servable: Servable, uploads: list[Upload], max_pixels: int, top_k: int,
                    method: str) -> list[dict[str, Any]]:  # fmt: skip
    from kiln.infer.explain import as_json, explain_items

    answers = []
    for upload in uploads:
        image = read_image(upload, max_pixels)
        try:
            ((pixels, explained),) = explain_items(servable, [image], top_k, method)
        except KilnError as exc:
            raise BadRequest(400, f"{upload.name}: {exc}") from None
        answers.append({"file": upload.name, "explanations": as_json(explained, pixels)})
    return answers


def add_explain(
    app: FastAPI, servable: Servable, limits: Limits, work: WorkQueue, errors: dict, body: dict
) -> None:
    """The route; `work` is the server's bounded decoding queue, `errors` and `body` the
    documented error answers and request body of POST /predict, which it shares."""
    reason = available(servable)

    @app.post(
        "/explain",
        response_model=ExplainResponse,
        responses={**errors, 404: {"description": "this server cannot explain (an export)"}},
        openapi_extra=body,
        include_in_schema=reason is None,
        summary="why: a heat map over each image (multipart files or JSON base64) per top class "
        "(Grad-CAM for convolutional models, else integrated gradients)",
    )  # fmt: skip
    async def explain(
        request: Request,
        top_k: int = Query(1, ge=1, le=10),
        method: Literal["auto", "gradcam", "ig"] = "auto",
    ) -> ExplainResponse:
        started = time.perf_counter()
        if reason is not None:
            raise BadRequest(404, reason)
        uploads, top_k = await read_uploads(request, limits, top_k, work)
        answers = await work.run(
            explain_uploads, servable, uploads, limits.max_pixels, top_k, method
        )
        elapsed = (time.perf_counter() - started) * 1000
        return ExplainResponse(explanations=answers, model=servable.spec.model.name,
                               elapsed_ms=elapsed)  # fmt: skip
