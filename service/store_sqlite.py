"""The embedded store: SQLite and files in the data folder (survives a restart).

DATA_DIR/scrapscan.db                 frames: metadata, status, result JSON
DATA_DIR/frames/<frame_id>/image.jpg  the upload as received (.png for PNG)
DATA_DIR/frames/<frame_id>/mask.png   class index per pixel, full frame size
DATA_DIR/frames/<frame_id>/overlay.jpg
DATA_DIR/frames/<frame_id>/maps.png     the probability maps (service/heatmap.py)

Retention (purge(), run by the service): result_ttl after a frame ends its files go and
its result keeps what truck reports need; report_ttl after, the frame is forgotten. A
frame with operators' feedback (the feedback table) is kept whole.

A frame that ends gets the next number of the feed in the same transaction as its end.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from service.feedback import FEEDBACK, FrameFeedback, TruckDecision
from service.result import FrameResult, load_result
from service.store import (
    CURSOR,
    FeedPage,
    FrameRecord,
    IdempotencyConflict,
    NewFrame,
    Status,
    Target,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    frame_id TEXT PRIMARY KEY,
    camera_id TEXT NOT NULL,
    truck_id TEXT,
    captured_at TEXT,
    received_at REAL NOT NULL,
    image_name TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    result TEXT,
    completed_at REAL,
    idempotency_key TEXT UNIQUE,
    sha256 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_status ON frames (status);
CREATE INDEX IF NOT EXISTS frames_truck ON frames (truck_id);
CREATE TABLE IF NOT EXISTS feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    at REAL NOT NULL,
    item TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_target ON feedback (kind, target);
CREATE INDEX IF NOT EXISTS feedback_at ON feedback (at);
"""

_NOT_HELD = "frame_id NOT IN (SELECT target FROM feedback WHERE kind = 'frame')"
"""Frames with feedback are out of the retention's reach."""

_COLUMNS = (
    "frame_id, camera_id, truck_id, captured_at, received_at, status, error, result, completed_at"
)


class SQLiteStore:
    """Frames and their results in SQLite, files beside it."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir
        (data_dir / "frames").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "scrapscan.db", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def folder(self, frame_id: str) -> Path:
        """The frame's file folder."""
        return self.root / "frames" / frame_id

    def add(self, frame: NewFrame) -> tuple[str, bool]:
        """Store an accepted frame as queued; returns (frame_id, created).

        With an idempotency key seen before and the same bytes, returns the first frame's
        id and created=False; with other bytes raises IdempotencyConflict.
        """
        key, sha256 = frame.idempotency_key, frame.sha256
        with self._lock:
            if key is not None:
                row = self._db.execute(
                    "SELECT frame_id, sha256 FROM frames WHERE idempotency_key = ?", (key,)
                ).fetchone()
                if row is not None:
                    if row[1] != sha256:
                        raise IdempotencyConflict(key)
                    return str(row[0]), False
            folder = self.folder(frame.frame_id)
            folder.mkdir(parents=True, exist_ok=False)
            name = f"image{frame.image_ext}"
            _write_atomic(folder / name, frame.image)
            with self._db:
                self._db.execute(
                    "INSERT INTO frames (frame_id, camera_id, truck_id, captured_at, received_at,"
                    " image_name, status, idempotency_key, sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (
                        frame.frame_id,
                        frame.camera_id,
                        frame.truck_id,
                        frame.captured_at,
                        time.time(),
                        name,
                        key,
                        sha256,
                    ),
                )
        return frame.frame_id, True

    def image(self, frame_id: str) -> bytes:
        """The upload's bytes."""
        with self._lock:
            row = self._db.execute(
                "SELECT image_name FROM frames WHERE frame_id = ?", (frame_id,)
            ).fetchone()
        if row is None:
            raise KeyError(frame_id)
        return (self.folder(frame_id) / str(row[0])).read_bytes()

    def get(self, frame_id: str) -> FrameRecord | None:
        """The frame, or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM frames WHERE frame_id = ?", (frame_id,)
            ).fetchone()
        return None if row is None else _record(row)

    def feed(self, after: str, limit: int, camera_id: str | None = None) -> FeedPage:
        """Finished frames after the cursor `after` ("" for the start), in completion order.

        ValueError for a cursor this store did not give out.
        """
        if after and not CURSOR.match(after):
            raise ValueError("not a cursor of this store")
        after = after.partition("-")[0]  # A-B lies between A and A + 1: after A
        where = "feed.seq > ?" + (" AND frames.camera_id = ?" if camera_id else "")
        params: tuple[Any, ...] = (0, camera_id, limit) if camera_id else (0, limit)
        cols = ", ".join(f"frames.{c.strip()}" for c in _COLUMNS.split(","))
        with self._lock:
            rows = self._db.execute(
                f"SELECT feed.seq, {cols} FROM feed JOIN frames USING (frame_id)"
                f" WHERE {where} ORDER BY feed.seq LIMIT ?",
                (int(after or 0), *params[1:]),
            ).fetchall()
        items = [(str(r[0]), _record(r[1:])) for r in rows]
        return FeedPage(items, items[-1][0] if items else after)

    def tail_cursor(self, back: int) -> str:
        """The cursor after which the feed holds its last `back` frames ("" for all)."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM feed ORDER BY seq DESC LIMIT 1 OFFSET ?", (back,)
            ).fetchone()
        return "" if row is None else str(row[0])

    def truck(self, truck_id: str) -> list[FrameRecord]:
        """Every frame of a truck, oldest first."""
        return self.trucks_frames([truck_id])[truck_id]

    def trucks_frames(self, truck_ids: list[str]) -> dict[str, list[FrameRecord]]:
        """Every frame of each truck, oldest first, in one query."""
        out: dict[str, list[FrameRecord]] = {t: [] for t in truck_ids}
        if not truck_ids:
            return out
        marks = ", ".join("?" * len(truck_ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM frames WHERE truck_id IN ({marks}) ORDER BY received_at",
                truck_ids,
            ).fetchall()
        for r in rows:
            record = _record(r)
            out[str(record.truck_id)].append(record)
        return out

    def trucks(self, since: float | None = None, until: float | None = None) -> list[str]:
        """Trucks whose latest frame was received in [since, until), most recent first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT truck_id FROM frames WHERE truck_id IS NOT NULL GROUP BY truck_id"
                " HAVING MAX(received_at) >= ? AND MAX(received_at) < ?"
                " ORDER BY MAX(received_at) DESC",
                (since if since is not None else 0.0, until if until is not None else 1e18),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def set_processing(self, frame_id: str) -> None:
        """Mark a frame as being processed."""
        self._set(frame_id, "processing")

    def complete(self, frame_id: str, result: FrameResult, files: dict[str, bytes]) -> bool:
        """Store the result and its files (mask.png, overlay.jpg) and mark the frame done.

        A frame that has ended already keeps its first result and files (returns False).
        """
        record = self.get(frame_id)
        if record is None or record.status in ("done", "failed"):
            return False
        folder = self.folder(frame_id)
        for name, data in files.items():
            _write_atomic(folder / name, data)
        return self._set(frame_id, "done", result=result.model_dump_json())

    def fail(self, frame_id: str, reason: str) -> bool:
        """Mark a frame failed with the reason; False if it had ended already."""
        return self._set(frame_id, "failed", error=reason)

    def requeue(self, frame_id: str) -> None:
        """An attempt failed: the frame is queued again (unless it has ended)."""
        self._set(frame_id, "queued")

    def backlog(self) -> int:
        """Frames queued or processing."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM frames WHERE status IN ('queued', 'processing')"
            ).fetchone()
        return int(row[0])

    def unfinished(self) -> list[str]:
        """Frames accepted and not done or failed, oldest first (to queue again at start)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT frame_id FROM frames WHERE status IN ('queued', 'processing')"
                " ORDER BY received_at"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def file_bytes(self, frame_id: str, name: str) -> bytes | None:
        """A result file (mask.png, overlay.jpg) of a done frame, or None."""
        path = self.folder(frame_id) / name
        return path.read_bytes() if path.is_file() else None

    def purge(self, result_ttl: float, report_ttl: float, now: float | None = None) -> int:
        """Apply the retention; returns how many frames were changed.

        Frames ended result_ttl ago lose their files (upload, mask, overlay) and keep only
        what reports need of their result; frames ended report_ttl ago are forgotten.
        Frames not ended are kept.
        """
        now = time.time() if now is None else now
        with self._lock:
            stale = self._db.execute(
                "SELECT frame_id, result FROM frames WHERE completed_at < ? AND image_name != ''"
                f" AND {_NOT_HELD}",
                (now - result_ttl,),
            ).fetchall()
        for frame_id, result in stale:
            shutil.rmtree(self.folder(frame_id), ignore_errors=True)
            small = load_result(result).summary() if result else None
            with self._lock, self._db:
                self._db.execute(
                    "UPDATE frames SET image_name = '', result = ? WHERE frame_id = ?",
                    (small.model_dump_json() if small is not None else None, frame_id),
                )
        with self._lock, self._db:
            old = [
                r[0]
                for r in self._db.execute(
                    f"SELECT frame_id FROM frames WHERE completed_at < ? AND {_NOT_HELD}",
                    (now - report_ttl,),
                ).fetchall()
            ]
            for frame_id in old:
                self._db.execute("DELETE FROM feed WHERE frame_id = ?", (frame_id,))
                self._db.execute("DELETE FROM frames WHERE frame_id = ?", (frame_id,))
        for frame_id in old:
            shutil.rmtree(self.folder(frame_id), ignore_errors=True)
        return len(stale) + len(old)

    def add_feedback(self, item: FrameFeedback | TruckDecision) -> None:
        """Keep an operator's feedback (a frame with feedback is held from purge())."""
        target = item.frame_id if isinstance(item, FrameFeedback) else item.truck_id
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO feedback (kind, target, at, item) VALUES (?, ?, ?, ?)",
                (item.kind, target, item.at, item.model_dump_json()),
            )

    def feedback(self, kind: Target, target: str) -> list[FrameFeedback | TruckDecision]:
        """The feedback about a frame or a truck, in the order given."""
        with self._lock:
            rows = self._db.execute(
                "SELECT item FROM feedback WHERE kind = ? AND target = ? ORDER BY seq",
                (kind, target),
            ).fetchall()
        return [FEEDBACK.validate_json(r[0]) for r in rows]

    def feedback_between(
        self, since: float | None = None, until: float | None = None
    ) -> list[FrameFeedback | TruckDecision]:
        """All feedback given in [since, until), in the order given."""
        with self._lock:
            rows = self._db.execute(
                "SELECT item FROM feedback WHERE at >= ? AND at < ? ORDER BY seq",
                (since if since is not None else 0.0, until if until is not None else 1e18),
            ).fetchall()
        return [FEEDBACK.validate_json(r[0]) for r in rows]

    def _set(
        self, frame_id: str, status: Status, result: str | None = None, error: str | None = None
    ) -> bool:
        done = time.time() if status in ("done", "failed") else None
        with self._lock, self._db:
            changed = self._db.execute(
                "UPDATE frames SET status = ?, result = COALESCE(?, result),"
                " error = COALESCE(?, error), completed_at = ?"
                " WHERE frame_id = ? AND status NOT IN ('done', 'failed')",
                (status, result, error, done, frame_id),
            ).rowcount
            if done is not None and changed:  # a frame ends once and is in the feed once
                self._db.execute("INSERT INTO feed (frame_id) VALUES (?)", (frame_id,))
        return bool(changed)


def _record(row: tuple[Any, ...]) -> FrameRecord:
    return FrameRecord(
        frame_id=row[0],
        camera_id=row[1],
        truck_id=row[2],
        captured_at=row[3],
        received_at=row[4],
        status=row[5],
        error=row[6],
        result=load_result(row[7]) if row[7] else None,
        completed_at=row[8],
    )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
