"""The FastAPI application: ``create_app(settings)``. ``uvicorn app.main:app`` builds one from the
environment; ``clip-serve`` (app/cli.py) does the same and binds CLIP_HOST:CLIP_PORT."""

from __future__ import annotations

import logging
import os
import signal
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

import model

from . import errors
from .engine import resolve_device
from .exceptions import StartupError
from .headers import SecurityHeaders
from .middleware import (
    ApiKey,
    BodyTimeout,
    CancelOnDisconnect,
    MultipartClosed,
    RequestContext,
    ShutdownCutoff,
    UploadLimit,
)
from .openapi import build_openapi
from .routes import classify, embed, health, ui
from .service import ZeroShotService
from .settings import DEFAULT_CHECKPOINT, Settings
from .workers import WorkerGroup

log = logging.getLogger("app")

DESCRIPTION = """Zero-shot image classification with CLIP: upload images, name the classes in plain words,
get each class's probability. Limits come from CLIP_* settings; every error is JSON
`{"error": code, "message": ..., "status": ..., "request_id": ...}` (see each operation's responses).
When the server has CLIP_API_KEY set, `/classify*`, `/embed/*`, `/v1/model` and `/metrics` need
`Authorization: Bearer <key>` (the Authorize button)."""


def check_startup(settings: Settings) -> None:
    """What must hold before the server binds: a usable device, a checkpoint directory that parses,
    and weights whose header fits the config (the tensors themselves load in the background)."""
    resolve_device(settings.device)
    try:
        model.check_checkpoint_files(settings.checkpoint)
        model.check_weights_header(settings.checkpoint)
    except model.ModelError as error:
        hint = "the bundled default is not in this install: " if settings.checkpoint == DEFAULT_CHECKPOINT else ""
        raise StartupError(
            f"cannot serve: {error}; {hint}set CLIP_CHECKPOINT to a checkpoint directory "
            f"(config.json + model.safetensors + vocab.txt), e.g. one made by "
            f"`python -m model.convert minilm OUT_DIR`"
        ) from error


def stop_this_process() -> None:
    """A server whose model cannot load must not live on, healthy and never ready: SIGTERM ends it
    (uvicorn shuts down and exits non-zero), so an orchestrator sees the failure and the log says why."""
    log.error("stopping: the model did not load, so this server can never become ready")
    os.kill(os.getpid(), signal.SIGTERM)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    check_startup(settings)
    workers = WorkerGroup.from_environment(settings)  # None unless clip-serve started several
    service = ZeroShotService(
        settings, on_failure=stop_this_process, on_ready=workers.mark_ready if workers is not None else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="CLIP zero-shot classification",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.workers = workers
    app.state.settings = settings
    errors.install(app)
    for router in (classify.router, embed.router, health.router, ui.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=ui.STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=ui.DOCS_ASSETS_DIR), name="docs-assets")

    # added innermost first: SecurityHeaders wraps all (so middleware's own errors carry them too), then
    # RequestContext, CORS, the shutdown cut-off (its 503 gets the request id, the access log line and
    # CORS headers), the key, the byte limit, the body timeout, the multipart closing check, and
    # innermost the watch for a client that leaves once its body is in
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(MultipartClosed)
    app.add_middleware(BodyTimeout, seconds=settings.body_timeout_s)
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(ApiKey, api_key=api_key)
    app.add_middleware(ShutdownCutoff, drain_seconds=settings.drain_seconds)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestContext)
    app.add_middleware(SecurityHeaders)
    app.openapi = lambda: build_openapi(app, settings)  # type: ignore[method-assign]  # FastAPI's documented way
    return app


def app_from_environment() -> FastAPI:
    """The app for ``uvicorn app.main:app``: a bad setting or checkpoint ends the process with one line."""
    try:
        return create_app(Settings())
    except StartupError as error:
        print(f"clip-serve: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def __getattr__(name: str):
    # built on first access, so importing app.main (tests, clip-serve) reads no environment
    if name == "app":
        return app_from_environment()
    raise AttributeError(name)
