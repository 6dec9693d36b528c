"""Liveness, readiness, model information and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from .. import metrics
from ..errors import openapi_responses
from ..exceptions import NotReady
from ..schemas import Health, ModelInfo

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Alive (the process answers)")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    responses=openapi_responses(503),
    summary="Ready (model loaded and warmed up, in every worker); 503 with Retry-After until then",
)
async def readyz(request: Request) -> dict:
    request.app.state.service.ready_engine()
    workers = request.app.state.workers
    if workers is not None and (ready := workers.ready_count()) < workers.size:
        raise NotReady(f"{ready} of {workers.size} workers have loaded the model; retry shortly")
    return {"status": "ready"}


@router.get("/v1/model", response_model=ModelInfo, responses=openapi_responses(401, 503), summary="The model served")
async def model_info(request: Request) -> dict:
    return request.app.state.service.ready_engine().info()


@router.get(
    "/metrics", responses=openapi_responses(401), response_class=Response, summary="Prometheus metrics (text format)"
)
async def prometheus_metrics() -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
