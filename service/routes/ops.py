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


@router.get(
    "/v1/config",
    responses=responses(NotAuthenticated, NotAllowed),
    dependencies=[require("config")],
)
async def get_config(svc: ServiceDep) -> dict[str, Any]:
    """The settings the service started with (secrets masked)."""
    return svc.settings.public()


LATEST = 20
"""The status names the model of the latest done frame among this many ended last."""


class ServiceStatus(BaseModel):
    """What a dashboard's status strip shows."""

    ready: bool
    not_ready: str | None = Field(description="why not, when not ready")
    model: ModelRef | None = Field(
        description=f"the model of the latest done frame (of the last {LATEST} ended)"
    )
    backlog: int = Field(description="frames accepted and not ended")
    frames_per_minute: float = Field(description="frames ended in the last 5 minutes, a minute")
    failed_last_hour: int = Field(description="frames failed in the last hour")
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
    now = time.time()
    tail = await asyncio.to_thread(svc.store.tail_cursor, LATEST)
    latest = [r for _, r in (await svc.feed(tail, LATEST, None, 0)).items]
    last_done = await asyncio.to_thread(svc.store.pace, now - 300)
    last_hour = await asyncio.to_thread(svc.store.pace, now - 3600)
    return ServiceStatus(
        ready=not_ready is None,
        not_ready=not_ready,
        model=next(
            (r.result.model for r in reversed(latest) if isinstance(r.result, FrameResult)), None
        ),
        backlog=await asyncio.to_thread(svc.store.backlog),
        frames_per_minute=last_done[0] / 5,
        failed_last_hour=last_hour[1],
        last_ended=latest[-1].completed_at if latest else None,
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=responses(Unavailable))
async def readyz(svc: ServiceDep) -> dict[str, Any]:
    """Ready for frames.

    Embedded: the bundle is loaded and the engine warmed with one batch; `model` is the
    one served. With store redis: Redis answers (each scrapscan-worker has its own
    /readyz, which names the model it serves).
    """
    await svc.ready()
    if svc.runner is None:
        return {"status": "ready"}
    return {"status": "ready", "model": svc.runner.models.serving()}


@router.get("/metrics", response_class=Response)
async def metrics(svc: ServiceDep) -> Response:
    """Prometheus metrics."""
    return Response(svc.metrics.exposition(), media_type=svc.metrics.content_type)
