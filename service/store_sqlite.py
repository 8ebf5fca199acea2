"""The embedded store: SQLite and files in the data folder (survives a restart).

DATA_DIR/scrapscan.db                       frames: metadata, status, result (packed) and
                                            the summary it keeps after result_ttl
DATA_DIR/files/<ab>/<frame_id>.image.jpg    the upload as received (.png for PNG)
DATA_DIR/files/<ab>/<frame_id>.mask.png     class index per pixel, full frame size
DATA_DIR/files/<ab>/<frame_id>.overlay.jpg
DATA_DIR/files/<ab>/<frame_id>.maps.png     the probability maps (service/heatmap.py)

<ab> is the frame id's first two characters: 256 folders however many frames, one file
per stored image. (A data folder from before keeps its frames/<frame_id>/ folders; they
are read and purged where they are.)

Retention (purge(), run by the service): an upload the keep policy (settings.keep_uploads:
frames flagged, a share of clean ones) does not keep goes upload_ttl after its frame
ends; result_ttl after, the frame's files go and its result keeps what truck reports
need; report_ttl after, the frame is forgotten. A frame with operators' feedback (the
feedback table) is kept whole. The purge works in
batches of PURGE_BATCH frames, one transaction each, and lets other callers in between.
It does no Python work per frame beyond deleting files: the summary a frame keeps is
packed when the frame ends, because a thread busy in Python in the service's process
holds up every other thread's SQLite reads (each row gives up the GIL and waits to get
it back; BENCHMARKS.md measured a feed page at 5 ms alone and up to 250 ms beside it).

A frame that ends gets the next number of the feed in the same transaction as its end.
Each truck's report (service/reports.py) is kept in the trucks table and brought up to
date in the same transaction as each of its frames' arrival and end, so the truck
listing and a report read one row per truck, never the truck's frames.

Every query a route makes has an index (tests/service/test_store.py reads the plans). No
commit under the store's lock copies the WAL into the database unless it has grown to
WAL_PAGES: a thread of its own does, about once a second (_Checkpointer).

The module is longer than the project's 400 lines because its one job is the whole store
contract (service/store.py) over one database: split, each part would reach into the
same tables and the same lock.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.feedback import FEEDBACK, FrameFeedback, TruckDecision
from service.live import LiveSettings, SettingsChange, next_change
from service.reports import (
    TruckReport,
    count_arrival,
    count_end,
    new_report,
    summary_of,
    truck_report,
)
from service.result import FrameResult, ModelRef, load_result, pack_result
from service.settings import Settings, UploadKeeping
from service.shadow import ShadowFrame
from service.store import (
    CURSOR,
    FEED_SCAN,
    SHADOW_KEEP,
    FeedPage,
    FrameRecord,
    IdempotencyConflict,
    NewFrame,
    Status,
    Target,
    TruckPage,
    TruckQuery,
    read_truck_cursor,
    truck_cursor,
)

log = logging.getLogger("scrapscan.store")

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
    sha256 TEXT NOT NULL,
    upload_until REAL,
    slim BLOB
);
CREATE INDEX IF NOT EXISTS frames_status ON frames (status);
CREATE INDEX IF NOT EXISTS frames_truck ON frames (truck_id);
CREATE INDEX IF NOT EXISTS frames_ended ON frames (completed_at, status);
CREATE INDEX IF NOT EXISTS frames_with_files ON frames (completed_at) WHERE image_name != '';
CREATE INDEX IF NOT EXISTS frames_upload_due ON frames (upload_until)
    WHERE upload_until IS NOT NULL;
CREATE TABLE IF NOT EXISTS trucks (
    truck_id TEXT PRIMARY KEY,
    last_at REAL NOT NULL,
    verdict TEXT NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trucks_latest ON trucks (last_at, truck_id);
CREATE INDEX IF NOT EXISTS trucks_by_verdict ON trucks (verdict, last_at, truck_id);
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
CREATE TABLE IF NOT EXISTS live_settings (
    version INTEGER PRIMARY KEY,
    change TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    candidate TEXT NOT NULL,
    frame TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_candidate ON shadow (candidate, seq);
"""

_NOT_HELD = "frame_id NOT IN (SELECT target FROM feedback WHERE kind = 'frame')"
"""Frames with feedback are out of the retention's reach."""

_COLUMNS = (
    "frame_id, camera_id, truck_id, captured_at, received_at, status, error, result, completed_at"
)
RESULT_FILES = ("mask.png", "overlay.jpg", "maps.png")
"""The files a frame's end brings (service/pipeline.py), removed with its upload."""
PURGE_BATCH = 250
"""Frames per purge transaction; other callers get the store between batches. At a million
frames, when commits still copied the WAL themselves, the longest hold of the lock was
22-25 ms with batches of 1,000, 10-12 ms with 250, in the same total time (BENCHMARKS.md,
"The purge beside the service"); with the checkpointer, 16 ms right after a million-frame
fill ("The WAL copied outside the store's lock")."""
CHECKPOINT_EVERY_S = 1.0
"""How often the checkpointer looks for new commits to copy from the WAL (_Checkpointer)."""
WAL_PAGES = 10_000
"""WAL pages (4 KiB) at which a commit checkpoints itself, under the store's lock: only
when the checkpointer has not caught up (SQLite's default is 1,000)."""
KEEP = UploadKeeping()
"""The default upload policy (settings.keep_uploads)."""
UPLOAD_TTL_S = 3600.0
"""How long an upload the policy does not keep stays by default (settings.upload_ttl_s)."""


class SQLiteStore:
    """Frames and their results in SQLite, files beside it."""

    def __init__(
        self,
        data_dir: Path,
        keep: UploadKeeping = KEEP,
        upload_ttl: float = UPLOAD_TTL_S,
        checkpoint_every: float = CHECKPOINT_EVERY_S,
    ) -> None:
        self.root = data_dir
        self.keep = keep
        """Which uploads stay as long as their frame's result (settings.keep_uploads)."""
        self.upload_ttl = upload_ttl
        """How long after its frame ends an upload `keep` does not keep stays."""
        (data_dir / "files").mkdir(parents=True, exist_ok=True)
        self._legacy = (data_dir / "frames").is_dir()
        self._db = sqlite3.connect(data_dir / "scrapscan.db", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # _Checkpointer copies the WAL into the database; a commit does only when it has
        # fallen far behind (writes without a pause for its whole pass)
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        self._lock = threading.Lock()
        with self._lock, self._db:
            upgrade = self._has("frames") and not self._has("trucks")
            if self._has("frames") and not self._has_column("frames", "upload_until"):
                # a store from before the upload policy: its uploads stay with their results
                self._db.execute("ALTER TABLE frames ADD COLUMN upload_until REAL")
            if self._has("frames") and not self._has_column("frames", "slim"):
                # a store from before: its frames' summaries are made when they are purged
                self._db.execute("ALTER TABLE frames ADD COLUMN slim BLOB")
            self._db.executescript(_SCHEMA)
            if upgrade:  # a store from before the trucks table: count its trucks once
                for (truck_id,) in self._db.execute(
                    "SELECT DISTINCT truck_id FROM frames WHERE truck_id IS NOT NULL"
                ).fetchall():
                    self._recount(truck_id)
        self._checkpointer = _Checkpointer(data_dir / "scrapscan.db", checkpoint_every)
        # a store dropped without close() does not leave its thread running
        weakref.finalize(self, self._checkpointer.stop, False)

    @classmethod
    def from_settings(cls, s: Settings) -> SQLiteStore:
        """The store in s.data_dir with the settings' upload policy."""
        return cls(s.data_dir, s.keep_uploads, s.upload_ttl_s)

    def _has(self, table: str) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            is not None
        )

    def _has_column(self, table: str, column: str) -> bool:
        return any(r[1] == column for r in self._db.execute(f"PRAGMA table_info({table})"))

    def close(self) -> None:
        """Close the database."""
        self._checkpointer.stop()
        with self._lock:
            self._db.close()

    def path(self, frame_id: str, name: str) -> Path:
        """Where a file of the frame is kept (image.jpg, mask.png, ...)."""
        new = self.root / "files" / frame_id[:2] / f"{frame_id}.{name}"
        if self._legacy and not new.exists():
            old = self.root / "frames" / frame_id / name
            if old.exists():
                return old
        return new

    def _remove_files(self, frame_id: str, image_name: str | None) -> None:
        for name in (image_name, *RESULT_FILES):
            if name:
                self.path(frame_id, name).unlink(missing_ok=True)
        if self._legacy:
            shutil.rmtree(self.root / "frames" / frame_id, ignore_errors=True)

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
            name = f"image{frame.image_ext}"
            _write_atomic(self.path(frame.frame_id, name), frame.image)
            received = time.time()
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
                        received,
                        name,
                        key,
                        sha256,
                    ),
                )
                if frame.truck_id is not None:
                    arrived = FrameRecord(
                        frame.frame_id,
                        frame.camera_id,
                        frame.truck_id,
                        frame.captured_at,
                        received,
                        "queued",
                        None,
                        None,
                        None,
                    )
                    self._count(frame.truck_id, lambda r: count_arrival(r, arrived), received)
        return frame.frame_id, True

    def image(self, frame_id: str) -> bytes:
        """The upload's bytes."""
        with self._lock:
            row = self._db.execute(
                "SELECT image_name FROM frames WHERE frame_id = ?", (frame_id,)
            ).fetchone()
        if row is None:
            raise KeyError(frame_id)
        return self.path(frame_id, str(row[0])).read_bytes()

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
        start = int(after.partition("-")[0] or 0)  # A-B lies between A and A + 1: after A
        cols = ", ".join(f"frames.{c.strip()}" for c in _COLUMNS.split(","))
        query = f"SELECT feed.seq, {cols} FROM feed JOIN frames USING (frame_id) WHERE feed.seq > ?"
        with self._lock:
            if camera_id is None:
                rows = self._db.execute(
                    f"{query} ORDER BY feed.seq LIMIT ?", (start, limit)
                ).fetchall()
                end = None
            else:  # look at FEED_SCAN entries at most, and move the cursor over them
                rows = self._db.execute(
                    f"{query} AND feed.seq <= ? AND frames.camera_id = ? ORDER BY feed.seq LIMIT ?",
                    (start, start + FEED_SCAN, camera_id, limit),
                ).fetchall()
                (last,) = self._db.execute("SELECT MAX(seq) FROM feed").fetchone()
                end = min(start + FEED_SCAN, last or 0)
        items = [(str(r[0]), _record(r[1:])) for r in rows]
        if len(items) == limit or end is None:
            return FeedPage(items, items[-1][0] if items else after)
        return FeedPage(items, str(end) if end > start else after)

    def tail_cursor(self, back: int) -> str:
        """The cursor after which the feed holds its last `back` frames ("" for all)."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM feed ORDER BY seq DESC LIMIT 1 OFFSET ?", (back,)
            ).fetchone()
        return "" if row is None else str(row[0])

    def pace(self, since: float) -> tuple[int, int]:
        """(frames ended, of them failed) since `since`: a range of the frames_ended index."""
        with self._lock:
            ended, failed = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(status = 'failed'), 0) FROM frames"
                " WHERE completed_at >= ?",
                (since,),
            ).fetchone()
        return int(ended), int(failed)

    def truck_report(self, truck_id: str) -> TruckReport | None:
        """The truck's report as kept, or None for a truck without frames."""
        with self._lock:
            row = self._db.execute(
                "SELECT report FROM trucks WHERE truck_id = ?", (truck_id,)
            ).fetchone()
        return None if row is None else TruckReport.model_validate_json(row[0])

    def trucks(self, query: TruckQuery) -> TruckPage:
        """Trucks whose latest frame was received in [since, until), latest first, a page."""
        where = "last_at >= ? AND last_at < ?"
        params: list[Any] = [query.since, query.until]
        limit = query.limit
        if query.verdict is not None:
            where += " AND verdict = ?"
            params.append(query.verdict)
        if query.after:
            last_at, truck_id = read_truck_cursor(query.after)
            where += " AND (last_at < ? OR (last_at = ? AND truck_id < ?))"
            params += [last_at, last_at, truck_id]
        with self._lock:
            rows = self._db.execute(
                f"SELECT report, last_at, truck_id FROM trucks WHERE {where}"
                " ORDER BY last_at DESC, truck_id DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        items = [summary_of(TruckReport.model_validate_json(r[0])) for r in rows[:limit]]
        more = len(rows) > limit
        return TruckPage(
            items, truck_cursor(rows[limit - 1][1], rows[limit - 1][2]) if more else None
        )

    def _count(
        self, truck_id: str, change: Callable[[TruckReport], None], at: float | None = None
    ) -> None:
        """Bring a truck's report up to date (inside the caller's transaction and lock)."""
        row = self._db.execute(
            "SELECT report, last_at FROM trucks WHERE truck_id = ?", (truck_id,)
        ).fetchone()
        report = new_report(truck_id) if row is None else TruckReport.model_validate_json(row[0])
        change(report)
        self._keep(report, max(at or 0.0, row[1] if row is not None else 0.0))

    def _recount(self, truck_id: str) -> None:
        """A truck's report from its frames (after the purge forgot some; at upgrade)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM frames WHERE truck_id = ? ORDER BY received_at",
            (truck_id,),
        ).fetchall()
        if not rows:
            self._db.execute("DELETE FROM trucks WHERE truck_id = ?", (truck_id,))
            return
        frames = [_record(r) for r in rows]
        self._keep(truck_report(truck_id, frames), max(f.received_at for f in frames))

    def _keep(self, report: TruckReport, last_at: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO trucks (truck_id, last_at, verdict, report)"
            " VALUES (?, ?, ?, ?)",
            (report.truck_id, last_at, report.verdict, report.model_dump_json()),
        )

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
        for name, data in files.items():
            _write_atomic(self.path(frame_id, name), data)
        return self._set(frame_id, "done", result=result)

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
        path = self.path(frame_id, name)
        return path.read_bytes() if path.is_file() else None

    def purge(
        self,
        result_ttl: float,
        report_ttl: float,
        now: float | None = None,
        batch: int = PURGE_BATCH,
    ) -> int:
        """Apply the retention; returns how many frames were changed.

        Uploads the keep policy does not keep go once upload_ttl has passed since their
        frame ended (a frame with feedback keeps it). Frames ended result_ttl ago lose
        their files (upload, mask, overlay) and keep only
        what reports need of their result; frames ended report_ttl ago are forgotten, and
        their trucks' reports counted again from the frames left. Frames not ended are
        kept. `batch` frames per transaction; the store is free between batches.
        """
        now = time.time() if now is None else now
        changed = 0
        while done := self._drop_uploads(now, batch):
            changed += done
        while done := self._slim(now - result_ttl, batch):
            changed += done
        while done := self._forget(now - report_ttl, batch):
            changed += done
        return changed

    def _drop_uploads(self, now: float, batch: int) -> int:
        """Up to `batch` uploads due before `now` are deleted; how many were."""
        with self._lock:
            due = self._db.execute(
                "SELECT frame_id, image_name FROM frames INDEXED BY frames_upload_due"
                f" WHERE upload_until < ? AND {_NOT_HELD} LIMIT ?",
                (now, batch),
            ).fetchall()
        if not due:
            return 0
        for frame_id, image_name in due:  # outside the lock
            if image_name:
                self.path(frame_id, image_name).unlink(missing_ok=True)
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE frames SET upload_until = NULL WHERE frame_id = ?", [(f,) for f, _ in due]
            )
        return len(due)

    def _slim(self, cutoff: float, batch: int) -> int:
        """Up to `batch` frames ended before `cutoff` lose their files; how many did."""
        with self._lock:
            stale = self._ended_before(
                cutoff,
                batch,
                "frame_id, image_name, CASE WHEN slim IS NULL THEN result END",
                "frames_with_files",
                "image_name != ''",
            )
        if not stale:
            return 0
        slim = []
        for frame_id, image_name, result in stale:  # outside the lock
            self._remove_files(frame_id, image_name)
            # the summary was packed when the frame ended; a frame from before has none yet
            small = load_result(result).summary() if result else None
            slim.append((pack_result(small) if small is not None else None, frame_id))
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE frames SET image_name = '', result = COALESCE(?, slim), slim = NULL"
                " WHERE frame_id = ?",
                slim,
            )
        return len(stale)

    def _ended_before(
        self, cutoff: float, batch: int, columns: str, index: str, also: str = "1"
    ) -> list[Any]:
        """Up to `batch` rows of frames ended before `cutoff`, not held by feedback."""
        return self._db.execute(
            f"SELECT {columns} FROM frames INDEXED BY {index}"
            f" WHERE completed_at < ? AND {also} AND {_NOT_HELD} LIMIT ?",
            (cutoff, batch),
        ).fetchall()

    def _forget(self, cutoff: float, batch: int) -> int:
        """Up to `batch` frames ended before `cutoff` are forgotten; how many were."""
        with self._lock, self._db:
            old = self._ended_before(
                cutoff, batch, "frame_id, truck_id, image_name", "frames_ended"
            )
            if not old:
                return 0
            ids = [(r[0],) for r in old]
            self._db.executemany("DELETE FROM feed WHERE frame_id = ?", ids)
            self._db.executemany("DELETE FROM frames WHERE frame_id = ?", ids)
            for truck_id in {r[1] for r in old if r[1] is not None}:
                self._recount(truck_id)
        for frame_id, _, image_name in old:
            self._remove_files(frame_id, image_name)
        return len(old)

    def add_feedback(self, item: FrameFeedback | TruckDecision) -> None:
        """Keep an operator's feedback (a frame with feedback is held from purge() whole)."""
        target = item.frame_id if isinstance(item, FrameFeedback) else item.truck_id
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO feedback (kind, target, at, item) VALUES (?, ?, ?, ?)",
                (item.kind, target, item.at, item.model_dump_json()),
            )
            if isinstance(item, FrameFeedback):
                self._db.execute(
                    "UPDATE frames SET upload_until = NULL WHERE frame_id = ?", (target,)
                )

    def save_settings(self, settings: LiveSettings, by: str) -> SettingsChange:
        """Keep a new version of the live settings (the next number); returns it."""
        with self._lock, self._db:
            last = self._settings(1)
            change = next_change(last[-1] if last else None, settings, by)
            self._db.execute(
                "INSERT INTO live_settings (version, change) VALUES (?, ?)",
                (change.version, change.model_dump_json()),
            )
        return change

    def live_settings(self) -> SettingsChange | None:
        """The latest version of the live settings; None before the first."""
        with self._lock:
            last = self._settings(1)
        return last[-1] if last else None

    def settings_log(self, limit: int = 100) -> list[SettingsChange]:
        """The last `limit` versions, oldest first (each with what it replaced)."""
        with self._lock:
            return self._settings(limit)

    def _settings(self, limit: int) -> list[SettingsChange]:
        rows = self._db.execute(
            "SELECT change FROM live_settings ORDER BY version DESC LIMIT ?", (limit,)
        ).fetchall()
        return [SettingsChange.model_validate_json(r[0]) for r in reversed(rows)]

    def add_shadow(self, frame: ShadowFrame) -> None:
        """Keep a frame as a candidate in shadow answered it (the last SHADOW_KEEP of each)."""
        key = _candidate(frame.candidate_model)
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO shadow (candidate, frame) VALUES (?, ?)",
                (key, frame.model_dump_json(by_alias=True)),
            )
            self._db.execute(
                "DELETE FROM shadow WHERE candidate = ? AND seq <= (SELECT seq FROM shadow "
                "WHERE candidate = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (key, key, SHADOW_KEEP),
            )

    def shadow_frames(self, candidate: ModelRef, limit: int = SHADOW_KEEP) -> list[ShadowFrame]:
        """The candidate's last `limit` shadow frames, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT frame FROM shadow WHERE candidate = ? ORDER BY seq DESC LIMIT ?",
                (_candidate(candidate), limit),
            ).fetchall()
        return [ShadowFrame.model_validate_json(r[0]) for r in reversed(rows)]

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
        self,
        frame_id: str,
        status: Status,
        result: FrameResult | None = None,
        error: str | None = None,
    ) -> bool:
        done = time.time() if status in ("done", "failed") else None
        packed = None if result is None else pack_result(result)
        # what the frame keeps after result_ttl, packed now: the purge then only moves it
        slim = None if result is None else pack_result(result.summary())
        verdict = None if result is None else result.verdict
        goes = None  # the upload stays with the result (or the frame has not ended)
        if done is not None and not self.keep.keeps(frame_id, verdict):
            goes = done + self.upload_ttl
        with self._lock, self._db:
            changed = self._db.execute(
                "UPDATE frames SET status = ?, result = COALESCE(?, result),"
                " slim = COALESCE(?, slim), error = COALESCE(?, error), completed_at = ?,"
                " upload_until = ? WHERE frame_id = ? AND status NOT IN ('done', 'failed')",
                (status, packed, slim, error, done, goes, frame_id),
            ).rowcount
            if done is not None and changed:  # a frame ends once and is in the feed once
                self._db.execute("INSERT INTO feed (frame_id) VALUES (?)", (frame_id,))
                row = self._db.execute(
                    "SELECT camera_id, truck_id, captured_at, received_at FROM frames"
                    " WHERE frame_id = ?",
                    (frame_id,),
                ).fetchone()
                camera_id, truck_id, captured_at, received_at = row
                if truck_id is not None:
                    ended = FrameRecord(
                        frame_id,
                        camera_id,
                        truck_id,
                        captured_at,
                        received_at,
                        status,
                        error,
                        result,
                        done,
                    )
                    self._count(truck_id, lambda r: count_end(r, ended))
        return bool(changed)


class _Checkpointer:
    """Copies the WAL's commits into the database, in a thread and connection of its own.

    SQLite's own auto-checkpoint runs in the commit that passes 1,000 WAL pages, so inside
    the store's lock, and it writes and syncs the database file there: at a million frames,
    on a disk still busy with the fill's writes, such commits of the purge held the lock
    83 to 141 ms (37 ms with the checkpoint off; BENCHMARKS.md, "The purge beside the
    service"). Here every `every` seconds this thread asks whether another connection has
    committed (PRAGMA data_version) and, if so, runs a PASSIVE checkpoint, which waits for
    no reader or writer: the service's calls go on meanwhile. The WAL begins again from its
    start at the first write after a checkpoint that copied all of it; a writer that never
    pauses for a whole pass would grow it for good, so the store's own commits still
    checkpoint at WAL_PAGES, copying only what this thread has not.
    """

    def __init__(self, db: Path, every: float) -> None:
        self._stop = threading.Event()
        self._path = db
        conn = sqlite3.connect(db, check_same_thread=False)
        self._thread = threading.Thread(
            target=self._run, args=(conn, every), name="sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self, conn: sqlite3.Connection, every: float) -> None:
        seen = None
        try:
            while not self._stop.wait(every):
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if version != seen:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        seen = version
                except sqlite3.Error as err:  # tried again in a second; the WAL waits
                    log.warning("WAL checkpoint of %s failed: %s", self._path, err)
        finally:
            conn.close()

    def stop(self, wait: bool = True) -> None:
        """The thread ends and closes its connection (the store's close then checkpoints)."""
        self._stop.set()
        if wait:
            self._thread.join()


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _candidate(model: ModelRef) -> str:
    return f"{model.name}/{model.version}"
