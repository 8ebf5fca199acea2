"""What operations reads: probes, metrics and the settings in force."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from service.errors import NotAllowed, NotAuthenticated, Unavailable
from service.result import FrameResult, ModelRef
from service.routes.deps import ServiceDep, require
from service.routes.errors import responses

router = APIRouter(tags=["ops"])

RECENT = 300
"""The latest ended frames the status strip is worked out from."""


@router.get(
    "/v1/config",
    responses=responses(NotAuthenticated, NotAllowed),
    dependencies=[require("config")],
)
async def get_config(svc: ServiceDep) -> dict[str, Any]:
    """The settings the service started with (secrets masked)."""
    return svc.settings.public()


class ServiceStatus(BaseModel):
    """What a dashboard's status strip shows."""

    ready: bool
    not_ready: str | None = Field(description="why not, when not ready")
    model: ModelRef | None = Field(description="the model of the latest done frame")
    backlog: int = Field(description="frames accepted and not ended")
    frames_per_minute: float = Field(description="frames ended in the last 5 minutes, a minute")
    failed_last_hour: int = Field(
        description=f"frames failed in the last hour (of the last {RECENT} ended)"
    )
    last_ended: float | None = Field(description="when the latest frame ended (epoch seconds)")


@router.get(
    "/v1/status",
    response_model=ServiceStatus,
    responses=responses(NotAuthenticated, NotAllowed, Unavailable),
    dependencies=[require("frames")],
)
async def status(svc: ServiceDep) -> ServiceStatus:
    """Ready or not, the model, the backlog and the pace of the latest frames."""
    try:
        await svc.ready()
        not_ready = None
    except Unavailable as err:
        not_ready = err.message
    tail = await asyncio.to_thread(svc.store.tail_cursor, RECENT)
    recent = [r for _, r in (await svc.feed(tail, RECENT, None, 0)).items]
    now = time.time()
    ends = [r.completed_at or 0.0 for r in recent]
    model = next(
        (r.result.model for r in reversed(recent) if isinstance(r.result, FrameResult)), None
    )
    return ServiceStatus(
        ready=not_ready is None,
        not_ready=not_ready,
        model=model,
        backlog=await asyncio.to_thread(svc.store.backlog),
        frames_per_minute=sum(t > now - 300 for t in ends) / 5,
        failed_last_hour=sum(
            r.status == "failed" and (r.completed_at or 0) > now - 3600 for r in recent
        ),
        last_ended=max(ends, default=None),
    )


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
