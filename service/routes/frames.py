"""POST /v1/frames and a frame's status, mask and overlay.

A frame's path, in the order it runs: `post_frame` here checks and stores the upload and
hands it to the Service (service/runtime.py); the FrameRunner (service/runner.py) takes it
from the queue and runs it through the Pipeline (service/pipeline.py, over the stages of
service/stages.py); its FrameResult (service/result.py) is kept by the store
(service/store.py: SQLite or Redis) and read back by `get_frame` here.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import cv2
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from common.classes import ANOMALY_CLASSES, CLASS_NAMES
from service.decode import FORMATS, read_header, thumbnail
from service.errors import (
    Busy,
    Conflict,
    InvalidInput,
    NotFound,
    TooLarge,
    Unavailable,
    UnsupportedMedia,
)
from service.heatmap import MAPS, decode_map, render_heatmap
from service.region import DescribeIn, Description
from service.reports import frame_links
from service.result import FrameResult, Summary
from service.routes.deps import BodyTooLarge, ServiceDep, parse_time, require
from service.routes.errors import CHANGE, LIST, ONE, responses
from service.runtime import Service
from service.settings import ID_PATTERN
from service.store import FrameRecord, NewFrame

router = APIRouter(tags=["frames"])

ID = re.compile(ID_PATTERN)
FRAME_ID_PATTERN = r"^[0-9a-f]{32}$"
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


class FrameAccepted(BaseModel):
    """202: the frame is stored and queued."""

    frame_id: str = Field(examples=["3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b"])
    status: str = Field(examples=["queued"])
    links: dict[str, str]


class FrameInfo(BaseModel):
    """What the service knows of a frame besides its result."""

    frame_id: str
    camera_id: str
    truck_id: str | None
    captured_at: str | None
    status: str = Field(examples=["done"], description="queued, processing, done or failed")
    error: str | None = Field(None, description="why the frame failed")
    links: dict[str, str]

    @staticmethod
    def fields(r: FrameRecord) -> dict[str, Any]:
        """These fields of a stored frame."""
        return {
            "frame_id": r.frame_id,
            "camera_id": r.camera_id,
            "truck_id": r.truck_id,
            "captured_at": r.captured_at,
            "status": r.status,
            "error": r.error,
            "links": frame_links(r.frame_id),
        }


class FrameStatus(FrameInfo):
    """A frame's state and, once done, its result."""

    result: FrameResult | Summary | None = Field(
        None,
        description="once done: the model, image size, bed used, verdict, scores per class, "
        "instances, thresholds, tiles and per-stage timings (only verdict, scores and each "
        "instance's class, score and area once the result retention has passed)",
    )

    @classmethod
    def of(cls, r: FrameRecord) -> FrameStatus:
        """The status of a stored frame."""
        return cls(**cls.fields(r), result=r.result)


FRAME_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "camera_id"],
                    "additionalProperties": False,
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "JPEG or PNG frame",
                        },
                        "camera_id": {
                            "type": "string",
                            "pattern": ID_PATTERN,
                            "example": "crane-2-north",
                        },
                        "truck_id": {
                            "type": "string",
                            "pattern": f"^$|{ID_PATTERN}",
                            "example": "TRK-20261124-0031",
                            "description": "empty is the same as absent",
                        },
                        "captured_at": {
                            "anyOf": [
                                {"type": "string", "format": "date-time"},
                                {"type": "string", "maxLength": 0},
                            ],
                            "example": "2026-11-24T06:31:07Z",
                            "description": "when the camera took the frame (RFC 3339); "
                            "empty is the same as absent",
                        },
                    },
                },
                "encoding": {"image": {"contentType": "image/jpeg, image/png"}},
            }
        },
    },
}


@dataclass(frozen=True, slots=True)
class Upload:
    """A frame form, checked."""

    image: bytes
    camera_id: str
    truck_id: str | None
    captured_at: str | None


@router.post(
    "/v1/frames",
    status_code=202,
    response_model=FrameAccepted,
    responses={
        200: {"model": FrameStatus, "description": "with ?wait=true"},
        **responses(*LIST, Conflict, TooLarge, UnsupportedMedia, Busy),
    },
    openapi_extra=FRAME_FORM,
    summary="Submit a crane-camera frame",
    dependencies=[require("submit")],
)
async def post_frame(
    request: Request,
    svc: ServiceDep,
    wait: bool = Query(False, description="answer 200 with the result when it is ready"),
    idempotency_key: Annotated[
        str | None,
        Header(
            description="a retry with the same key and bytes gets the first frame back",
            json_schema_extra={"pattern": IDEMPOTENCY_KEY.pattern},
        ),
    ] = None,
) -> Response:
    """Store a JPEG or PNG frame and queue it.

    `Idempotency-Key`: a retry with the same key and bytes gets the first frame_id back;
    the same key with other bytes is a 409. With `?wait=true` the answer is 200 with the
    result once the frame is done (202 as usual if it takes longer than the wait limit).
    """
    s = svc.settings
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMedia("unsupported_media_type", "send multipart/form-data")
    backlog = await asyncio.to_thread(svc.store.backlog)
    if backlog >= s.queue.max_backlog:  # before reading the body: no work it cannot do
        svc.metrics.throttled.inc()
        raise Busy(
            "queue_full",
            f"{backlog} frames are waiting to be processed (the limit is "
            f"{s.queue.max_backlog}); retry later",
            s.queue.retry_after_s,
        )
    key = idempotency_key
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise InvalidInput("invalid_idempotency_key", "1 to 128 printable ASCII characters")
    upload = await read_form(request)
    header = read_header(upload.image, s.max_pixels)
    new = NewFrame(
        uuid.uuid4().hex,
        upload.camera_id,
        upload.truck_id,
        upload.captured_at,
        upload.image,
        ".jpg" if FORMATS[header.format] == "image/jpeg" else ".png",
        key,
    )
    frame_id, created = await asyncio.to_thread(svc.store.add, new)
    if created:
        svc.accept(frame_id, upload.camera_id, wait)
    if wait and (record := await svc.wait_for(frame_id)) is not None:
        return JSONResponse(FrameStatus.of(record).model_dump(mode="json"), 200)
    accepted = FrameAccepted(frame_id=frame_id, status="queued", links=frame_links(frame_id))
    return JSONResponse(accepted.model_dump(), 202, headers={"Location": f"/v1/frames/{frame_id}"})


async def read_form(request: Request) -> Upload:
    """The frame form's fields, checked; InvalidInput names the first bad one."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except BodyTooLarge:
        raise
    except Exception as err:
        raise InvalidInput("invalid_form", f"the multipart body cannot be read: {err}") from None
    unknown = sorted(set(form.keys()) - {"image", "camera_id", "truck_id", "captured_at"})
    if unknown:
        raise InvalidInput("invalid_field", f"unknown form fields: {', '.join(unknown)}")
    fields: dict[str, str | None] = {}
    for name, required in (("camera_id", True), ("truck_id", False), ("captured_at", False)):
        value = form.get(name)
        if value is None or value == "":
            if required:
                raise InvalidInput("missing_field", f"the form field {name!r} is required")
            value = None
        elif not isinstance(value, str):
            raise InvalidInput("invalid_field", f"{name} must be a text field, not a file")
        elif name != "captured_at" and not ID.match(value):
            raise InvalidInput(
                "invalid_field", f"{name} must match {ID_PATTERN} (letters, digits, . _ -)"
            )
        fields[name] = value
    if fields["captured_at"] is not None:
        parse_time(fields["captured_at"], "captured_at")
    image = form.get("image")
    if image is None:
        raise InvalidInput("missing_field", "the form field 'image' (a file) is required")
    if isinstance(image, str):
        raise InvalidInput("invalid_field", "image must be a file part")
    camera_id = fields["camera_id"]
    assert camera_id is not None
    return Upload(await image.read(), camera_id, fields["truck_id"], fields["captured_at"])


FrameId = Annotated[
    str,
    Path(description="32 lowercase hex digits", json_schema_extra={"pattern": FRAME_ID_PATTERN}),
]


def checked_id(frame_id: str) -> str:
    """The id if it is one the service could have given out; InvalidInput if not."""
    if not re.match(FRAME_ID_PATTERN, frame_id):
        raise InvalidInput("invalid_frame_id", "a frame id is 32 lowercase hex digits")
    return frame_id


@router.get(
    "/v1/frames/{frame_id}",
    response_model=FrameStatus,
    responses=responses(*ONE),
    dependencies=[require("frames")],
)
async def get_frame(svc: ServiceDep, frame_id: FrameId) -> FrameStatus:
    """A frame's status (queued, processing, done, failed with the reason) and result."""
    return FrameStatus.of(await svc.record(checked_id(frame_id)))


async def result_file(svc: Service, frame_id: str, name: str) -> bytes:
    """A done frame's mask or overlay; NotFound while it is not done or once it expired."""
    record = await svc.record(checked_id(frame_id))
    data = await asyncio.to_thread(svc.store.file_bytes, frame_id, name)
    if record.status != "done" or data is None:
        raise NotFound("result_not_ready", f"frame {frame_id} is {record.status}")
    return data


def _frame_file(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The route of one of a done frame's files: GET /v1/frames/{frame_id}/NAME."""
    media = "image/jpeg" if name.endswith(".jpg") else "image/png"
    return router.get(
        f"/v1/frames/{{frame_id}}/{name}",
        response_class=Response,
        responses=responses(*ONE, content={media: {}}),
        dependencies=[require("frames")],
    )


@_frame_file("mask.png")
async def get_mask(svc: ServiceDep, frame_id: FrameId) -> Response:
    """Class index per pixel at full frame size (0 normal, 1 motor, 2 cable, 3 spray_can)."""
    return Response(await result_file(svc, frame_id, "mask.png"), media_type="image/png")


@_frame_file("overlay.jpg")
async def get_overlay(
    svc: ServiceDep,
    frame_id: FrameId,
    width: Annotated[
        int | None,
        Query(ge=16, le=4096, description="scaled down to this width (a list's thumbnail)"),
    ] = None,
) -> Response:
    """The frame with instances outlined and labelled with class and score."""
    data = await result_file(svc, frame_id, "overlay.jpg")
    if width is not None:
        data = await asyncio.to_thread(thumbnail, data, width)
    return Response(data, media_type="image/jpeg")


@_frame_file("heatmap.png")
async def get_heatmap(
    svc: ServiceDep,
    frame_id: FrameId,
    class_name: Annotated[
        str,
        Query(
            alias="class",
            description="anomaly (the default) or an anomaly class",
            json_schema_extra={"enum": ["anomaly", *ANOMALY_CLASSES]},
        ),
    ] = "anomaly",
) -> Response:
    """The anomaly probability map (or one class's) over the greyed overlay, with a legend.

    Where the model saw something, below the thresholds too (turbo colour map, 0 to 1).
    """
    maps = await result_file(svc, frame_id, MAPS)
    overlay = await result_file(svc, frame_id, "overlay.jpg")

    def draw() -> bytes:
        level = decode_map(maps, CLASS_NAMES, class_name)
        picture = render_heatmap(level, overlay, class_name.replace("_", " "))
        ok, data = cv2.imencode(".png", picture, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        if not ok:
            raise RuntimeError("could not encode the heat map")
        return bytes(data.tobytes())

    return Response(await asyncio.to_thread(draw), media_type="image/png")


@router.post(
    "/v1/frames/{frame_id}/describe",
    response_model=Description,
    responses=responses(*CHANGE, Unavailable),
    dependencies=[require("feedback")],
)
async def describe(svc: ServiceDep, frame_id: FrameId, given: DescribeIn) -> Description:
    """What the bundle's region encoder says of a region a person points at.

    A `polygon` ([[x, y], ...], at least 3 corners) or a `box` ([x0, y0, x1, y1]) in frame
    pixels of a done frame whose upload is kept: its nearest descriptions with their
    similarity, the class of the best, and its verification score (best contaminant
    description's similarity minus the best plain one's). 400 invalid_region outside the
    frame; 409 frame_not_done, no_region_encoder (the bundle has none) or upload_gone;
    scaled out a worker answers, and 503 describe_timeout when none does in time.
    """
    return await svc.describe(checked_id(frame_id), given)
