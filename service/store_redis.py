"""The Redis store: the same methods as SQLiteStore, for API and workers on several hosts.

Keys (prefix `scrapscan:`):
  frame:<id>            hash: camera_id, truck_id, captured_at, received_at, status, error,
                        result (JSON), completed_at, sha256, image_ext
  frame:<id>:image      the upload's bytes (deleted once the frame has ended)
  frame:<id>:<file>     mask.png, overlay.jpg
  idem:<key>            the frame_id an Idempotency-Key was first used for
  open                  set of frames accepted and not ended
  results               stream: one entry per ended frame (the dashboard feed; the entry
                        id is the cursor)
  truck:<id>            sorted set: the truck's frame ids by time received
  trucks                sorted set: truck ids by their latest frame

Retention: a frame's hash and files expire `result_ttl` seconds after it ends; a truck's
frame list expires `report_ttl` seconds after its latest frame (reports outlive masks).
A frame ends once: ending it again (a second worker after a takeover) changes nothing
and adds nothing to the feed.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from service.store import FrameRecord, IdempotencyConflict

P = "scrapscan:"
_END = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == false or status == 'done' or status == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'completed_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('SREM', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[3], '*', 'frame_id', ARGV[5], 'camera_id',
           redis.call('HGET', KEYS[1], 'camera_id'))
redis.call('DEL', KEYS[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
for i = 7, #ARGV, 2 do
  redis.call('SET', KEYS[5] .. ARGV[i], ARGV[i + 1], 'EX', ARGV[6])
end
return 1
"""


class RedisStore:
    """Frames, results, the feed and truck lists in Redis."""

    def __init__(self, url: str, result_ttl: int = 7 * 86400, report_ttl: int = 90 * 86400) -> None:
        self.r: Any = redis.Redis.from_url(url)  # redis-py types sync and async replies as one
        self.result_ttl = result_ttl
        self.report_ttl = report_ttl
        self._end = self.r.register_script(_END)

    def close(self) -> None:
        """Close the connections."""
        self.r.close()

    def add(
        self,
        frame_id: str,
        camera_id: str,
        truck_id: str | None,
        captured_at: str | None,
        image: bytes,
        image_ext: str,
        sha256: str,
        idempotency_key: str | None = None,
    ) -> tuple[str, bool]:
        """Store an accepted frame as queued; see SQLiteStore.add."""
        if idempotency_key is not None:
            key = f"{P}idem:{idempotency_key}"
            if not self.r.set(key, frame_id, nx=True, ex=self.report_ttl):
                first = self.r.get(key)
                first_id = first.decode() if first else ""
                if self.r.hget(f"{P}frame:{first_id}", "sha256") != sha256.encode():
                    raise IdempotencyConflict(idempotency_key)
                return first_id, False
        now = time.time()
        fields = {
            "camera_id": camera_id,
            "truck_id": truck_id or "",
            "captured_at": captured_at or "",
            "received_at": repr(now),
            "status": "queued",
            "sha256": sha256,
            "image_ext": image_ext,
        }
        pipe = self.r.pipeline(transaction=True)
        pipe.set(f"{P}frame:{frame_id}:image", image)
        pipe.hset(f"{P}frame:{frame_id}", mapping=fields)
        pipe.sadd(f"{P}open", frame_id)
        if truck_id:
            pipe.zadd(f"{P}truck:{truck_id}", {frame_id: now})
            pipe.expire(f"{P}truck:{truck_id}", self.report_ttl)
            pipe.zadd(f"{P}trucks", {truck_id: now})
        pipe.execute()
        return frame_id, True

    def image(self, frame_id: str) -> bytes:
        """The upload's bytes; KeyError when gone."""
        data = self.r.get(f"{P}frame:{frame_id}:image")
        if data is None:
            raise KeyError(frame_id)
        return bytes(data)

    def get(self, frame_id: str) -> FrameRecord | None:
        """The frame, or None (unknown or expired)."""
        return _record(frame_id, self.r.hgetall(f"{P}frame:{frame_id}"))

    def set_processing(self, frame_id: str) -> None:
        """Mark a frame as being processed (only a queued or processing frame)."""
        key = f"{P}frame:{frame_id}"
        if self.r.hget(key, "status") in (b"queued", b"processing"):
            self.r.hset(key, "status", "processing")

    def complete(self, frame_id: str, result: dict[str, Any], files: dict[str, bytes]) -> None:
        """Store the result and files and end the frame (once: a second time changes nothing)."""
        self._finish(frame_id, "done", json.dumps(result), "", files)

    def fail(self, frame_id: str, reason: str) -> None:
        """End a frame as failed with the reason (once)."""
        self._finish(frame_id, "failed", "", reason)

    def _finish(
        self,
        frame_id: str,
        status: str,
        result: str,
        error: str,
        files: dict[str, bytes] | None = None,
    ) -> bool:
        """End the frame, its result and files in one script; False if it had ended."""
        frame = f"{P}frame:{frame_id}"
        keys = [frame, f"{P}open", f"{P}results", f"{frame}:image", f"{frame}:"]
        args: list[Any] = [status, repr(time.time()), result, error, frame_id, self.result_ttl]
        for name, data in (files or {}).items():
            args += [name, data]
        return bool(self._end(keys=keys, args=args))

    def unfinished(self) -> list[str]:
        """Frames accepted and not ended, oldest first."""
        ids = [m.decode() for m in self.r.smembers(f"{P}open")]
        times = {i: float(t or 0) for i, t in zip(ids, self._many(ids, "received_at"), strict=True)}
        return sorted(ids, key=lambda i: times[i])

    def file_bytes(self, frame_id: str, name: str) -> bytes | None:
        """A result file of a done frame, or None."""
        data = self.r.get(f"{P}frame:{frame_id}:{name}")
        return None if data is None else bytes(data)

    def feed(
        self, after: str, limit: int, camera_id: str | None = None
    ) -> list[tuple[str, FrameRecord]]:
        """Ended frames after the cursor (a stream entry id, "" for the start), in order."""
        start = f"({after}" if after else "-"
        out: list[tuple[str, FrameRecord]] = []
        while len(out) < limit:
            try:
                entries = self.r.xrange(f"{P}results", start, "+", count=max(limit, 100))
            except redis.ResponseError:
                raise ValueError("not a cursor of this store") from None
            if not entries:
                break
            for entry_id, fields in entries:
                start = f"({entry_id.decode()}"
                if camera_id and fields.get(b"camera_id", b"").decode() != camera_id:
                    continue
                record = self.get(fields[b"frame_id"].decode())
                if record is not None:  # expired frames leave the feed
                    out.append((entry_id.decode(), record))
                if len(out) == limit:
                    break
        return out

    def truck(self, truck_id: str) -> list[FrameRecord]:
        """Every frame of a truck still kept, oldest first."""
        ids = [m.decode() for m in self.r.zrange(f"{P}truck:{truck_id}", 0, -1)]
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(f"{P}frame:{i}")
        records = [_record(i, h) for i, h in zip(ids, pipe.execute(), strict=True)]
        return [r for r in records if r is not None]

    def trucks(self, since: float | None = None, until: float | None = None) -> list[str]:
        """Trucks whose latest frame was received in [since, until), most recent first."""
        low = since if since is not None else "-inf"
        high = f"({until}" if until is not None else "+inf"
        return [m.decode() for m in self.r.zrevrangebyscore(f"{P}trucks", high, low)]

    def _many(self, ids: list[str], field: str) -> list[bytes | None]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hget(f"{P}frame:{i}", field)
        return list(pipe.execute())


def _record(frame_id: str, h: dict[bytes, bytes]) -> FrameRecord | None:
    if not h:
        return None

    def text(name: str) -> str | None:
        value = h.get(name.encode(), b"").decode()
        return value or None

    completed = text("completed_at")
    result = text("result")
    return FrameRecord(
        frame_id=frame_id,
        camera_id=text("camera_id") or "",
        truck_id=text("truck_id"),
        captured_at=text("captured_at"),
        received_at=float(text("received_at") or 0),
        status=text("status"),  # type: ignore[arg-type]
        error=text("error"),
        result=json.loads(result) if result else None,
        completed_at=float(completed) if completed else None,
    )
