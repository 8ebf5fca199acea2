"""The frame store's contract: what the service keeps of each frame, and how it reads it.

Status goes queued -> processing -> done | failed. A frame that ends (done or failed) is
in the feed once, in completion order, so the dashboard pages every finished frame
exactly once. Frames found queued or processing at start were accepted and not finished:
the service queues them again (nothing accepted is lost). Operators' feedback
(service/feedback.py) is kept with no end and holds its frame (upload, result, files) from
the retention. Two stores keep this contract:
SQLiteStore (service/store_sqlite.py, the embedded service: SQLite and files in the data
folder) and RedisStore (service/store_redis.py, the scaled-out shape).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from service.errors import Conflict
from service.feedback import FrameFeedback, TruckDecision
from service.result import FrameResult, Summary

Status = Literal["queued", "processing", "done", "failed"]
Target = Literal["frame", "truck"]

CURSOR = re.compile(r"^([0-9]{1,18}(-[0-9]{1,18})?)?$")
"""A feed cursor as both stores read it: this store gives out sequence numbers; Redis
stream ids (milliseconds-sequence)."""


class FeedPage(NamedTuple):
    """Ended frames after a cursor, each with its own cursor, and where the next page starts.

    `next` can be past the last item: a page filtered by camera moves over the frames of
    other cameras it looked at, so the next poll does not look at them again.
    """

    items: list[tuple[str, FrameRecord]]
    next: str


@dataclass(frozen=True, slots=True)
class NewFrame:
    """An upload the API accepted, to be stored as queued."""

    frame_id: str
    camera_id: str
    truck_id: str | None
    captured_at: str | None
    image: bytes
    image_ext: str
    """.jpg or .png"""
    idempotency_key: str | None = None

    @property
    def sha256(self) -> str:
        """The upload's digest (an Idempotency-Key's retry must bring the same bytes)."""
        return hashlib.sha256(self.image).hexdigest()


class IdempotencyConflict(Conflict):
    """The key was used before with other bytes."""

    def __init__(self, key: str | None) -> None:
        super().__init__("idempotency_conflict", "this Idempotency-Key was used with other bytes")
        self.key = key


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """A frame as stored."""

    frame_id: str
    camera_id: str
    truck_id: str | None
    captured_at: str | None
    received_at: float
    status: Status
    error: str | None
    result: FrameResult | Summary | None
    """The full result of a done frame; only its Summary once result_ttl has passed."""
    completed_at: float | None


class Store(Protocol):
    """What the service needs of a store (SQLiteStore, RedisStore)."""

    def add(self, frame: NewFrame) -> tuple[str, bool]:
        """Store an accepted frame as queued; (frame_id, created)."""
        ...

    def image(self, frame_id: str) -> bytes:
        """The upload's bytes."""
        ...

    def get(self, frame_id: str) -> FrameRecord | None:
        """The frame, or None."""
        ...

    def set_processing(self, frame_id: str) -> None:
        """Mark a frame as being processed."""
        ...

    def complete(self, frame_id: str, result: FrameResult, files: dict[str, bytes]) -> bool:
        """Store the result and files; the frame is done. False if it had ended already."""
        ...

    def fail(self, frame_id: str, reason: str) -> bool:
        """The frame failed, with the reason. False if it had ended already."""
        ...

    def requeue(self, frame_id: str) -> None:
        """An attempt failed: the frame is queued again (unless it has ended)."""
        ...

    def unfinished(self) -> list[str]:
        """Frames accepted and not ended, oldest first."""
        ...

    def backlog(self) -> int:
        """How many frames are accepted and not ended (for backpressure)."""
        ...

    def file_bytes(self, frame_id: str, name: str) -> bytes | None:
        """A result file of a done frame, or None."""
        ...

    def feed(self, after: str, limit: int, camera_id: str | None = None) -> FeedPage:
        """Ended frames after a cursor, in completion order."""
        ...

    def tail_cursor(self, back: int) -> str:
        """The cursor after which the feed holds its last `back` ended frames ("" for all)."""
        ...

    def truck(self, truck_id: str) -> list[FrameRecord]:
        """Every frame of a truck, oldest first."""
        ...

    def trucks_frames(self, truck_ids: list[str]) -> dict[str, list[FrameRecord]]:
        """Every frame of each truck, oldest first, in one go (the truck listing)."""
        ...

    def trucks(self, since: float | None = None, until: float | None = None) -> list[str]:
        """Trucks whose latest frame was received in [since, until)."""
        ...

    def add_feedback(self, item: FrameFeedback | TruckDecision) -> None:
        """Keep an operator's feedback; a frame with feedback is held from the retention."""
        ...

    def feedback(self, kind: Target, target: str) -> list[FrameFeedback | TruckDecision]:
        """The feedback about a frame or a truck, in the order given."""
        ...

    def feedback_between(
        self, since: float | None = None, until: float | None = None
    ) -> list[FrameFeedback | TruckDecision]:
        """All feedback given in [since, until), in the order given."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
