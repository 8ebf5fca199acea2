"""Operators' feedback: a frame's instances judged, a missed contaminant, a truck's decision.

The rules of what may be said about what are in service/feedback.py; the store keeps the
items (and holds a judged frame from the retention); /metrics counts them, so the plant's
running precision per class is confirmed / (confirmed + false_alarm).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.types import DecoratedCallable
from starlette.background import BackgroundTask

from common.classes import ANOMALY_CLASSES
from service.auth import Permission
from service.errors import ServiceError
from service.feedback import (
    FrameFeedback,
    FrameFeedbackIn,
    TruckDecision,
    TruckDecisionIn,
    frame_feedback,
    metric_class,
    truck_decision,
)
from service.feedback_export import zip_export
from service.result import FrameResult
from service.routes.deps import ServiceDep, Since, Until, epoch, require
from service.routes.errors import CHANGE, LIST, ONE, responses
from service.routes.frames import FrameId, checked_id
from service.routes.trucks import TruckId, known_truck

router = APIRouter(tags=["feedback"])

Judge = Annotated[str, require("feedback")]
"""Who gives the feedback: the caller's key (it must hold the feedback role)."""


def _recorded(
    path: str, model: type, *errors: type[ServiceError]
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """A POST route that records a judgement: 201 with the judgement as recorded."""
    return router.post(path, status_code=201, response_model=model, responses=responses(*errors))


@_recorded("/v1/frames/{frame_id}/feedback", FrameFeedback, *CHANGE)
async def post_frame_feedback(
    svc: ServiceDep, frame_id: FrameId, given: FrameFeedbackIn, by: Judge
) -> FrameFeedback:
    """Judge one of a done frame's instances, or mark a contaminant it missed.

    `confirmed`, `false_alarm` or `other_class` (with `class`) about `instance` (its index
    in the result's instances); `missed` with a `box` (x, y, width, height in frame
    pixels) and, if known, a `class`. The latest judgement of an instance counts. The
    frame is then kept past its retention, for `scrapscan-data export-feedback`.
    """
    record = await svc.record(checked_id(frame_id))
    item = frame_feedback(given, frame_id, record.result, ANOMALY_CLASSES, by)
    await asyncio.to_thread(svc.store.add_feedback, item)
    assert isinstance(record.result, FrameResult)  # frame_feedback said so
    svc.metrics.feedback.labels(item.label, metric_class(item, record.result)).inc()
    return item


def _listed(
    path: str, model: Any, permission: Permission
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """A GET route of the judgements of one frame or truck, oldest first."""
    return router.get(
        path,
        response_model=list[model],
        responses=responses(*ONE),
        dependencies=[require(permission)],
    )


@_listed("/v1/frames/{frame_id}/feedback", FrameFeedback, "frames")
async def get_frame_feedback(svc: ServiceDep, frame_id: FrameId) -> list[FrameFeedback]:
    """The feedback given on a frame, oldest first."""
    await svc.record(checked_id(frame_id))
    items = await asyncio.to_thread(svc.store.feedback, "frame", frame_id)
    return [i for i in items if isinstance(i, FrameFeedback)]


@_recorded("/v1/trucks/{truck_id}/decisions", TruckDecision, *ONE)
async def post_truck_decision(
    svc: ServiceDep, truck_id: TruckId, given: TruckDecisionIn, by: Judge
) -> TruckDecision:
    """Record what was done with a truck: accepted, rejected or sent for manual inspection."""
    await known_truck(svc, truck_id)
    item = truck_decision(given, truck_id, by)
    await asyncio.to_thread(svc.store.add_feedback, item)
    svc.metrics.truck_decisions.labels(item.decision).inc()
    return item


@_listed("/v1/trucks/{truck_id}/decisions", TruckDecision, "reports")
async def get_truck_decisions(svc: ServiceDep, truck_id: TruckId) -> list[TruckDecision]:
    """The decisions recorded for a truck, oldest first (the last is the one in force)."""
    await known_truck(svc, truck_id)
    items = await asyncio.to_thread(svc.store.feedback, "truck", truck_id)
    return [i for i in items if isinstance(i, TruckDecision)]


@router.get(
    "/v1/feedback/export",
    response_class=FileResponse,
    responses=responses(*LIST, content={"application/zip": {}}, ok="the COCO folder, zipped"),
    dependencies=[require("export")],
)
async def export_feedback(
    svc: ServiceDep,
    since: Since = None,
    until: Until = None,
) -> FileResponse:
    """The frames operators judged in [since, until), as a labelled COCO folder in a zip.

    What `scrapscan-data export-feedback` writes (service/feedback_export.py): the uploads,
    masks (confirmed and reclassified regions with their class, false alarms normal,
    unjudged regions and missed boxes unknown), annotations.json, feedback.json.
    """
    start, end = epoch(since, "since"), epoch(until, "until")
    archive = await asyncio.to_thread(zip_export, svc.store, start, end)
    return FileResponse(
        archive,
        media_type="application/zip",
        filename="scrapscan-feedback.zip",
        background=BackgroundTask(shutil.rmtree, archive.parent, True),
    )
