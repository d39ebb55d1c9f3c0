"""/docs (Swagger UI) and /redoc from files installed with Kiln, never from a CDN: no third party
sees who reads the page, and it works without a network.

The files come from the `fastapi-offline` package (MIT; it ships Swagger UI, Apache-2.0, and
ReDoc, MIT), a dependency of Kiln. Where it is missing, /docs says how to install it and links
/openapi.json, which is always served.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

ASSETS = "/docs-assets"


def assets_folder() -> Path | None:
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def add_docs(app: FastAPI, title: str) -> None:
    """GET /docs and /redoc; `title` (it holds the model's name) is escaped for HTML."""
    shown = html.escape(title)
    folder = assets_folder()
    if folder is None:

        @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
        async def no_docs() -> str:
            return (
                f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{shown}</title></head>"
                f"<body><h1>{shown}</h1><p>The interactive API docs need Swagger UI's files, "
                "which are not installed here: <code>pip install fastapi-offline</code> and "
                "restart kiln serve (Kiln serves them itself; it never loads a CDN).</p>"
                "<p>The API's description: <a href='/openapi.json'>/openapi.json</a>.</p>"
                "</body></html>"
            )

        return
    from fastapi.staticfiles import StaticFiles

    app.mount(ASSETS, StaticFiles(directory=folder), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{shown} - API docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{shown} - API reference",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
