"""The operator console at ``/`` and the OpenAPI docs with local assets.

Why static files and no server-side pages: the console is a client of the operator REST API
(``/api/v1``, bearer token) like any script, so it can do nothing the API does not allow and
the token is checked in one place. The page itself holds no data; it asks for the operator
token and keeps it in the tab's sessionStorage only.

Why the docs are re-mounted here: FastAPI's ``/docs`` loads Swagger UI from a public CDN, a
blank page on an offline cabinet network. ``fastapi-offline`` (pinned in pyproject) ships
the Swagger UI and ReDoc bundles (their licences travel with that package); they are served
from ``/docs-assets``.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
_DROP = {"/docs", "/redoc", "/docs/oauth2-redirect"}


def mount_console(app: FastAPI) -> FastAPI:
    """Add the console (``/``, ``/console/*``) and replace the CDN docs by local ones."""
    app.router.routes[:] = [r for r in app.router.routes
                            if getattr(r, "path", None) not in _DROP]
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/console", StaticFiles(directory=STATIC), name="console")
    openapi = app.openapi_url or "/openapi.json"

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(STATIC / "console.html", media_type="text/html",
                            headers={"Cache-Control": "no-store"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi, title=f"{app.title} - API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi, title=f"{app.title} - ReDoc",
                              redoc_js_url="/docs-assets/redoc.standalone.js",
                              redoc_favicon_url="/docs-assets/favicon.png",
                              with_google_fonts=False)

    return app
