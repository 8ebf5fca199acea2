"""Truck reports for operators: one truck's frames aggregated, and the trucks of a period."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.types import DecoratedCallable
from pydantic import BaseModel

from service.errors import InvalidInput, NotFound, ServiceError
from service.reports import TruckList, TruckReport, report_csv, trucks_csv
from service.result import Verdict
from service.routes.deps import ServiceDep, Since, Until, epoch, require
from service.routes.errors import LIST, ONE, responses
from service.settings import ID_PATTERN
from service.store import TRUCK_CURSOR, TruckQuery

router = APIRouter(tags=["trucks"], dependencies=[require("reports")])
"""Every route here is a report's (the reports permission)."""

DEFAULT_WINDOW_S = 86400.0
"""The truck listing's range without `since`: the day before `until`."""
MAX_TRUCKS = 1000
"""The most trucks on one page of the listing."""

Format = Annotated[Literal["json", "csv"], Query()]
CSV = {"text/csv": {"schema": {"type": "string"}}}


TruckId = Annotated[
    str, Path(description="the truck's id", json_schema_extra={"pattern": ID_PATTERN})
]


async def known_truck(svc: ServiceDep, truck_id: str) -> TruckReport:
    """The truck's report; InvalidInput for a malformed id, NotFound for an unknown truck."""
    if not re.match(ID_PATTERN, truck_id):
        raise InvalidInput("invalid_truck_id", f"a truck_id matches {ID_PATTERN}")
    report = await asyncio.to_thread(svc.store.truck_report, truck_id)
    if report is None:
        raise NotFound("truck_not_found", f"no frame of truck {truck_id}")
    return report


def _table(
    path: str, model: type[BaseModel], what: str, *errors: type[ServiceError]
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """A GET route that answers `what` as JSON, or as CSV with format=csv."""
    ok = f"{what} (JSON, or CSV with format=csv)"
    return router.get(path, response_model=model, responses=responses(*errors, content=CSV, ok=ok))


def _answer(model: BaseModel, csv_text: Callable[[], str], fmt: str) -> Response:
    """The model as JSON, or its CSV form with format=csv."""
    if fmt == "csv":
        return PlainTextResponse(csv_text(), media_type="text/csv; charset=utf-8")
    return JSONResponse(model.model_dump(mode="json"))


@_table("/v1/trucks/{truck_id}/report", TruckReport, "the report", *ONE)
async def truck(svc: ServiceDep, truck_id: TruckId, format: Format = "json") -> Response:
    """Every frame of a truck aggregated.

    Per class: highest score, frames, distinct instances, contaminated area; the
    verdict (clean, inspect, reject); the evidence frames, strongest first.
    """
    report = await known_truck(svc, truck_id)
    return _answer(report, lambda: report_csv(report), format)


TruckCursor = Annotated[
    str | None,
    Query(
        description="the `next` of the page before (the same query otherwise)",
        json_schema_extra={"pattern": TRUCK_CURSOR.pattern},
    ),
]
TrucksPerPage = Annotated[int, Query(ge=1, le=MAX_TRUCKS, description="trucks per page")]


@_table("/v1/trucks", TruckList, "the trucks", *LIST)
async def trucks(
    svc: ServiceDep,
    since: Since = None,
    until: Until = None,
    verdict: Annotated[Verdict | None, Query()] = None,
    after: TruckCursor = None,
    limit: TrucksPerPage = 100,
    format: Format = "json",
) -> Response:
    """Trucks whose latest frame came in [since, until), latest first, with their verdicts.

    `until` defaults to now and `since` to a day before `until`. A page holds at most
    `limit` trucks; the JSON's `next`, passed as `after` with the same query, gives the
    next page (CSV: one page per request, the same parameters).
    """
    end = epoch(until, "until") or time.time()
    start = epoch(since, "since")
    start = end - DEFAULT_WINDOW_S if start is None else start
    try:
        query = TruckQuery(start, end, verdict, after or "", limit)
        page = await asyncio.to_thread(svc.store.trucks, query)
    except ValueError:
        raise InvalidInput(
            "invalid_cursor", "`after` is not a cursor this service gave out"
        ) from None
    listed = TruckList(trucks=page.items, next=page.next)
    return _answer(listed, lambda: trucks_csv(listed.trucks), format)
