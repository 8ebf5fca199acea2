"""Truck reports for operators: one truck's frames aggregated, and the trucks of a period."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from service.errors import InvalidInput, NotAllowed, NotAuthenticated, NotFound, Unavailable
from service.reports import TruckList, TruckReport, report_csv, truck_report, trucks_csv
from service.result import Verdict
from service.routes.deps import ServiceDep, Since, Until, epoch, require
from service.routes.errors import responses
from service.settings import ID_PATTERN

router = APIRouter(tags=["trucks"])

Format = Literal["json", "csv"]
CSV = {"text/csv": {"schema": {"type": "string"}}}


def _answer(model: BaseModel, csv_text: Callable[[], str], fmt: Format) -> Response:
    """The model as JSON, or its CSV form with format=csv."""
    if fmt == "csv":
        return PlainTextResponse(csv_text(), media_type="text/csv; charset=utf-8")
    return JSONResponse(model.model_dump(mode="json"))


@router.get(
    "/v1/trucks/{truck_id}/report",
    response_model=TruckReport,
    responses={
        200: {"content": CSV, "description": "the report (JSON, or CSV with format=csv)"},
        **responses(InvalidInput, NotAuthenticated, NotAllowed, NotFound, Unavailable),
    },
    dependencies=[require("reports")],
)
async def truck(
    svc: ServiceDep,
    truck_id: Annotated[
        str, Path(description="the truck's id", json_schema_extra={"pattern": ID_PATTERN})
    ],
    format: Annotated[Format, Query()] = "json",
) -> Response:
    """Every frame of a truck aggregated.

    Per class: highest score, frames, distinct instances, contaminated area; the
    verdict (clean, inspect, reject); the evidence frames, strongest first.
    """
    if not re.match(ID_PATTERN, truck_id):
        raise InvalidInput("invalid_truck_id", f"a truck_id matches {ID_PATTERN}")
    frames = await asyncio.to_thread(svc.store.truck, truck_id)
    if not frames:
        raise NotFound("truck_not_found", f"no frame of truck {truck_id}")
    report = truck_report(truck_id, frames)
    return _answer(report, lambda: report_csv(report), format)


@router.get(
    "/v1/trucks",
    response_model=TruckList,
    responses={
        200: {"content": CSV, "description": "the trucks (JSON, or CSV with format=csv)"},
        **responses(InvalidInput, NotAuthenticated, NotAllowed, Unavailable),
    },
    dependencies=[require("reports")],
)
async def trucks(
    svc: ServiceDep,
    since: Since = None,
    until: Until = None,
    verdict: Annotated[Verdict | None, Query()] = None,
    format: Annotated[Format, Query()] = "json",
) -> Response:
    """Trucks whose latest frame came in [since, until), latest first, with their verdicts."""
    ids = await asyncio.to_thread(svc.store.trucks, epoch(since, "since"), epoch(until, "until"))
    every = await asyncio.to_thread(svc.store.trucks_frames, ids)
    reports = [truck_report(t, every[t]) for t in ids if every[t]]  # no frames: expired
    listed = TruckList(trucks=[r for r in reports if verdict is None or r.verdict == verdict])
    return _answer(listed, lambda: trucks_csv(listed.trucks), format)
