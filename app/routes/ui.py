"""The demo page at / and the API docs (/docs, /redoc) served from local files, no CDN."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from ..headers import content_security_policy, policy_allowing_inline

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# Swagger UI and ReDoc bundles (Apache-2.0 / MIT, licences in the fastapi-offline distribution)
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def demo_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title=f"{request.app.title} - API",
        swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/favicon.svg",
    )
    # FastAPI's page starts Swagger UI with an inline script: its hash lets exactly that one run
    page.headers["content-security-policy"] = policy_allowing_inline(bytes(page.body).decode())
    return page


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}/docs-assets/redoc.standalone.js",
        redoc_favicon_url=f"{root}/static/favicon.svg",
        with_google_fonts=False,
    )
    # ReDoc (styled-components) injects <style> elements while it renders, and its bundled CSS loader
    # does so before any option is read, so neither a hash nor a nonce can cover them (a nonce
    # attribute on <redoc> is hidden from scripts by the browser): this page alone allows inline
    # styles. Scripts stay limited to this server's files.
    page.headers["content-security-policy"] = content_security_policy({"style-src": ["'unsafe-inline'"]})
    return page
