"""Operations routes: Prometheus metrics and the readiness check."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from callbot.web.services import Services

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """200 when ready for calls, 503 while draining (SIGTERM)."""
    services: Services = request.app.state.services
    status = 200 if services.ready else 503
    body = {
        "status": "ok" if services.ready else "draining",
        "active_calls": len(services.active_calls),
        "fast_paths": services.fast_paths.describe(),
    }
    return JSONResponse(body, status_code=status)
