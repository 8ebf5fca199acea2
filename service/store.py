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
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from service.errors import Conflict
from service.feedback import FrameFeedback, TruckDecision
from service.live import LiveSettings, SettingsChange
from service.result import FrameResult, ModelRef, Summary, Verdict
from service.shadow import ShadowFrame

if TYPE_CHECKING:  # service.reports reads FrameRecord from here
    from service.reports import TruckReport, TruckSummary

Status = Literal["queued", "processing", "done", "failed"]
Target = Literal["frame", "truck"]

CURSOR = re.compile(r"^([0-9]{1,18}(-[0-9]{1,18})?)?$")
"""A feed cursor as both stores read it: this store gives out sequence numbers; Redis
stream ids (milliseconds-sequence)."""


SHADOW_KEEP = 10_000
"""Shadow frames kept per candidate version (the oldest go first)."""

FEED_SCAN = 5000
"""SQLite: at most this many feed entries are looked at for one camera-filtered page; the
next poll goes on from where it stopped, so an idle camera's poll stays cheap. (Redis
keeps a feed stream per camera.)"""


class FeedPage(NamedTuple):
    """Ended frames after a cursor, each with its own cursor, and where the next page starts.

    `next` can be past the last item: a page filtered by camera moves over the frames of
    other cameras it looked at, so the next poll does not look at them again.
    """

    items: list[tuple[str, FrameRecord]]
    next: str


@dataclass(frozen=True, slots=True)
class TruckQuery:
    """A page of the truck listing: trucks whose latest frame was received in [since, until).

    Latest first, at most `limit` of them after the cursor `after` ("" for the first).
    """

    since: float = 0.0
    until: float = 1e18
    verdict: Verdict | None = None
    after: str = ""
    limit: int = 100


class TruckPage(NamedTuple):
    """A page of the truck listing, latest first, and the cursor of the next (None: the end)."""

    items: list[TruckSummary]
    next: str | None


TRUCK_CURSOR = re.compile(r"^([0-9]{1,12}(\.[0-9]{1,17})?)~([A-Za-z0-9][A-Za-z0-9._-]{0,63})$")
"""A truck listing's cursor: the last truck's latest arrival (epoch seconds) and its id."""


def truck_cursor(last_at: float, truck_id: str) -> str:
    """The cursor after a truck whose latest frame came at `last_at`."""
    return f"{last_at!r}~{truck_id}"  # repr: the float's exact round trip


def read_truck_cursor(cursor: str) -> tuple[float, str]:
    """(latest arrival, truck id) of a cursor; ValueError for one no store gave out."""
    m = TRUCK_CURSOR.match(cursor)
    if m is None:
        raise ValueError("not a truck cursor")
    return float(m[1]), m[3]


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

    def pace(self, since: float) -> tuple[int, int]:
        """(frames ended, of them failed) since `since` (epoch seconds, an hour back at most)."""
        ...

    def truck_report(self, truck_id: str) -> TruckReport | None:
        """The truck's frames aggregated (service/reports.py), or None for no frame kept."""
        ...

    def trucks(self, query: TruckQuery) -> TruckPage:
        """A page of the truck listing; ValueError for a cursor no store gave out."""
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

    def save_settings(self, settings: LiveSettings, by: str) -> SettingsChange:
        """Keep a new version of the live settings (the next number); returns it."""
        ...

    def live_settings(self) -> SettingsChange | None:
        """The latest version of the live settings; None before the first."""
        ...

    def settings_log(self, limit: int = 100) -> list[SettingsChange]:
        """The last `limit` versions, oldest first (each with what it replaced)."""
        ...

    def add_shadow(self, frame: ShadowFrame) -> None:
        """Keep a frame as a candidate in shadow answered it (the last SHADOW_KEEP of each)."""
        ...

    def shadow_frames(self, candidate: ModelRef, limit: int = SHADOW_KEEP) -> list[ShadowFrame]:
        """The candidate's last `limit` shadow frames, oldest first."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
