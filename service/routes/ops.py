"""What operations reads: probes, metrics and the settings in force."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import NotAllowed, NotAuthenticated, Unavailable
from service.routes.deps import ServiceDep, require
from service.routes.errors import responses

router = APIRouter(tags=["ops"])


@router.get(
    "/v1/config",
    responses=responses(NotAuthenticated, NotAllowed),
    dependencies=[require("config")],
)
async def get_config(svc: ServiceDep) -> dict[str, Any]:
    """The settings the service started with (secrets masked)."""
    return svc.settings.public()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=responses(Unavailable))
async def readyz(svc: ServiceDep) -> dict[str, str]:
    """Ready for frames.

    Embedded: the bundle is loaded and the engine warmed with one batch. With store
    redis: Redis answers (each scrapscan-worker has its own /readyz).
    """
    await svc.ready()
    return {"status": "ready"}


@router.get("/metrics", response_class=Response)
async def metrics(svc: ServiceDep) -> Response:
    """Prometheus metrics."""
    return Response(svc.metrics.exposition(), media_type=svc.metrics.content_type)
