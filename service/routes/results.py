"""The results feed for dashboards: pages, long-polls and server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from service.result import Verdict
from service.routes.deps import ServiceDep, require
from service.routes.errors import LIST, responses
from service.routes.frames import FrameInfo
from service.settings import ID_PATTERN
from service.store import CURSOR, FeedPage

router = APIRouter(tags=["results"])


class FeedItem(FrameInfo):
    """An ended frame in the feed (done or failed)."""

    cursor: str = Field(description="this item's place in the feed (resume after it)")
    completed_at: float | None
    verdict: Verdict | None
    scores: dict[str, float] | None
    instances: int = Field(description="how many instances were found")


class Page(BaseModel):
    """A page of the feed and the cursor of the next one."""

    items: list[FeedItem]
    next: str = Field(description="pass as `after` for the next page")


def feed_items(page: FeedPage) -> list[FeedItem]:
    """The page's frames as the feed shows them."""
    return [
        FeedItem(
            **FeedItem.fields(r),
            cursor=seq,
            completed_at=r.completed_at,
            verdict=r.result.verdict if r.result else None,
            scores=r.result.scores if r.result else None,
            instances=len(r.result.instances) if r.result else 0,
        )
        for seq, r in page.items
    ]


@router.get(
    "/v1/results", response_model=Page, responses=responses(*LIST), dependencies=[require("feed")]
)
async def results(
    svc: ServiceDep,
    after: str | None = Query(
        None,
        description="the `next` of the previous page",
        json_schema_extra={"pattern": CURSOR.pattern},
    ),
    limit: int = Query(100, ge=1, le=1000),
    camera_id: str | None = Query(None, pattern=ID_PATTERN),
    wait: float = Query(0, ge=0, le=60, description="long-poll up to this many seconds"),
) -> Page:
    """Finished frames (done or failed) in completion order, for dashboards.

    Page with `after=<next>`: each finished frame appears exactly once, however many
    arrive while paging. With `wait`, an empty page waits for the next frame to finish.
    """
    page = await svc.feed(after or "", limit, camera_id, wait)
    return Page(items=feed_items(page), next=page.next)


@router.get(
    "/v1/results/stream",
    response_class=StreamingResponse,
    responses=responses(*LIST, content={"text/event-stream": {}}),
    dependencies=[require("feed")],
)
async def results_stream(
    request: Request,
    svc: ServiceDep,
    after: str | None = Query(
        None, description="the cursor to start after", json_schema_extra={"pattern": CURSOR.pattern}
    ),
    camera_id: str | None = Query(None, pattern=ID_PATTERN),
    last: int | None = Query(
        None,
        ge=0,
        le=10_000,
        description="start with the last N finished frames (a dashboard opening); not with "
        "`after` or Last-Event-ID",
    ),
    last_event_id: str | None = Header(
        None,
        description="resume after this event's id",
        json_schema_extra={"pattern": CURSOR.pattern},
    ),
) -> StreamingResponse:
    """The same feed as server-sent events (`id:` is the cursor; Last-Event-ID resumes)."""
    start = last_event_id or after
    if start is None and last is not None:
        start = await asyncio.to_thread(svc.store.tail_cursor, last)
    # the first page is read before the answer starts, so a bad cursor is a 400
    first = await svc.feed(start or "", 100, camera_id, 0)

    async def events() -> AsyncIterator[str]:
        page = first
        while True:
            items = feed_items(page)
            if not items:
                yield ": keep-alive\n\n"
            for item in items:
                yield f"id: {item.cursor}\nevent: result\ndata: {item.model_dump_json()}\n\n"
            if await request.is_disconnected():
                return
            page = await svc.feed(page.next, 100, camera_id, 15)

    return StreamingResponse(events(), media_type="text/event-stream")
