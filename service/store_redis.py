"""The Redis store (service/store.py's contract), for API and workers on several hosts.

Keys (prefix `scrapscan:`):
  frame:<id>            hash: camera_id, truck_id, captured_at, received_at, status, error,
                        result (zlib-packed JSON), completed_at, image_ext, files (the
                        token of the result files in the bucket)
  frame:<id>:image      the upload's bytes: kept result_ttl after the frame has ended when
                        keep_uploads says so (flagged, a share of clean), else upload_ttl
  frame:<id>:<file>     mask.png, overlay.jpg, maps.png
  objects               with a bucket (service/objects.py) the upload and files are objects
                        there instead of the two keys above, and this sorted set says when
                        they are due for deletion (purge_objects): "<frame_id> <ext>" for
                        the upload, "<frame_id>/<token>" for the result files
  idem:<key>            "<frame_id> <sha256>" of the frame an Idempotency-Key was first used for
  open                  set of frames accepted and not ended (its size is the backlog)
  frames                stream: one entry per accepted frame, the queue that the workers
                        read (service/queue.py: RedisQueue, with its attempts and dead letters)
  results               stream: one entry per ended frame (the dashboard feed; the entry
                        id is the cursor), trimmed to the frames' retention
  results:<camera_id>   the same entries of one camera, under the same ids
  pace:<t // 10>        hash: frames ended (done, failed) in those ten seconds, an hour
  truck:<id>:report     the truck's report (service/reports.py), counted as its frames
                        arrive and end by the same scripts that add and end them
  truck:<id>, frame:<id>:report   a truck's frame ids and each frame's end as its report
                        needs it, written before reports were kept: a truck without a
                        report key is counted from them (no longer written)
  trucks                sorted set: truck ids by their latest frame (trimmed to report_ttl)
  feedback              stream: every feedback item (JSON), kept with no end
  feedback:frame:<id>   list: the feedback about a frame (likewise feedback:truck:<id>)

Retention: a frame's hash and files expire `result_ttl` seconds after it ends; its truck's
report, which has counted it, `report_ttl` after the truck's latest frame. So reports
outlive results and masks, and a frame costs no memory once its result has gone.
Feedback on a frame takes the expiry off its hash, upload and files (and its objects off
the deletion list): a judged frame is kept whole.
A frame ends once: ending it again (a second worker after a takeover) changes nothing
and adds nothing to the feed.

Accepting a frame (its bytes, hash, idempotency key, truck lists and queue entry) is one
script, so a frame is either fully accepted or not at all. With appendonly and appendfsync
always (deploy/redis.conf, used by the compose file, the k8s manifests and the tests) a
202 means the frame is on disk.

The module is longer than the project's 400 lines because its one job is the whole store
contract (service/store.py) over Redis, with the scripts that make each change atomic:
the scripts and the keys they touch are read together.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from service.feedback import FEEDBACK, FrameFeedback, TruckDecision
from service.live import LiveSettings, SettingsChange, next_change
from service.objects import DELETE_BATCH, ObjectStore, ObjectStoreError, result_key, upload_key
from service.queue import FRAMES, P
from service.reports import (
    TruckReport,
    TruckSummary,
    count_arrival,
    count_end,
    new_report,
    summary_of,
    truck_report,
)
from service.result import FrameResult, ModelRef, Summary, load_result, pack_result
from service.settings import Settings, UploadKeeping
from service.shadow import ShadowFrame
from service.store import (
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

_ADD = """
-- KEYS: frame hash, image or '' (in the bucket), open set, frames stream, idempotency
--       key or '', trucks, the truck's report or ''
-- ARGV: frame_id, image bytes, now, report ttl, idempotency value, truck_id, the report
--       as read, the report with this frame, hash fields...
if KEYS[5] ~= '' then
  local first = redis.call('GET', KEYS[5])
  if first then return first end
end
-- the truck's report changed since it was read: the caller counts again
if KEYS[7] ~= '' and (redis.call('GET', KEYS[7]) or '') ~= ARGV[7] then return 'retry' end
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[4]) end
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'frame_id', ARGV[1])
if KEYS[7] ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[3], ARGV[6])
  redis.call('SET', KEYS[7], ARGV[8], 'EX', ARGV[4])
  -- trucks whose reports have expired leave the list of trucks
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. (tonumber(ARGV[3]) - tonumber(ARGV[4])))
end
return false
"""
_END = """
-- KEYS: frame hash, open set, results stream, image, file prefix, the truck's report or '',
--       the pace bucket of this moment, the objects due for deletion
-- ARGV: status, now, result, error, frame_id, result ttl, oldest feed id, report ttl,
--       upload ttl, the truck's report as read and with this frame's end, the token of
--       the files in the bucket or '', the frame's entries of the objects set as JSON
--       [[due time, entry], ...], files kept in Redis (name, bytes)...
local status = redis.call('HGET', KEYS[1], 'status')
if status == false or status == 'done' or status == 'failed' then return 0 end
if KEYS[6] ~= '' and (redis.call('GET', KEYS[6]) or '') ~= ARGV[10] then return -1 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'completed_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('SREM', KEYS[2], ARGV[5])
-- the feed keeps what is still retained: entries older than the result ttl go
local camera = redis.call('HGET', KEYS[1], 'camera_id')
local entry = redis.call('XADD', KEYS[3], 'MINID', ARGV[7], '*', 'frame_id', ARGV[5],
                         'camera_id', camera)
-- and in the camera's own feed under the same entry id, for filtered pages
redis.call('XADD', KEYS[3] .. ':' .. camera, 'MINID', ARGV[7], entry, 'frame_id', ARGV[5],
           'camera_id', camera)
if tonumber(ARGV[9]) > 0 then
  redis.call('EXPIRE', KEYS[4], ARGV[9])
else
  redis.call('DEL', KEYS[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
if KEYS[6] ~= '' then redis.call('SET', KEYS[6], ARGV[11], 'EX', ARGV[8]) end
redis.call('HINCRBY', KEYS[7], ARGV[1], 1)
redis.call('EXPIRE', KEYS[7], PACE_KEEP)
if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'files', ARGV[12]) end
for _, due in ipairs(cjson.decode(ARGV[13])) do redis.call('ZADD', KEYS[8], due[1], due[2]) end
for i = 14, #ARGV, 2 do
  redis.call('SET', KEYS[5] .. ARGV[i], ARGV[i + 1], 'EX', ARGV[6])
end
return 1
"""


_DUE = """
-- KEYS: the objects set. ARGV: now, most. Takes the objects due (off the set) and
-- returns their keys: two purges never delete the same ones.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""
OBJECTS = f"{P}objects"
SETTINGS = f"{P}settings"
"""The live settings' versions, oldest first (kept for good: one short entry a change)."""
RESULT_FILES = ("mask.png", "overlay.jpg", "maps.png")
"""The files the pipeline stores for a done frame."""
KEEP = UploadKeeping()
"""The default upload policy (settings.keep_uploads)."""


PACE_S = 10
"""Frame ends are counted per this many seconds (pace:<bucket> hashes) for /v1/status."""
PACE_KEEP = 3700
"""How long a pace bucket is kept: an hour and a little."""
_END = _END.replace("PACE_KEEP", str(PACE_KEEP))


def _pace_key(bucket: int) -> str:
    return f"{P}pace:{bucket}"


_FILES = ("image", *RESULT_FILES, "report")
"""A frame's keys besides its hash (frame:<id>:<name>)."""


class RedisStore:
    """Frames, results, the feed and truck lists in Redis."""

    def __init__(
        self,
        url: str,
        result_ttl: int = 7 * 86400,
        report_ttl: int = 90 * 86400,
        upload_ttl: int = 3600,
        objects: ObjectStore | None = None,
        keep: UploadKeeping = KEEP,
    ) -> None:
        # timeouts so that a request fails fast (503) while Redis is away; blocking reads
        # wait at most 4 s (settings.queue.block_ms), under the socket timeout
        self.r: Any = redis.Redis.from_url(  # redis-py types sync and async replies as one
            url,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self.result_ttl = result_ttl
        self.report_ttl = report_ttl
        self.upload_ttl = upload_ttl
        self.objects = objects
        self.keep = keep
        self._add = self.r.register_script(_ADD)
        self._end = self.r.register_script(_END)
        self._due = self.r.register_script(_DUE)

    @classmethod
    def from_settings(cls, s: Settings) -> RedisStore:
        """The store the settings describe (Redis URL, retention, the bucket if any)."""
        return cls(
            s.redis_url.get_secret_value(),
            s.result_ttl_s,
            s.report_ttl_s,
            s.upload_ttl_s,
            None if s.objects is None else ObjectStore.of(s.objects),
            s.keep_uploads,
        )

    def ping(self) -> None:
        """Raise redis.ConnectionError when Redis cannot be reached."""
        self.r.ping()

    def close(self) -> None:
        """Close the connections."""
        self.r.close()

    def add(self, frame: NewFrame) -> tuple[str, bool]:
        """Store an accepted frame as queued and put it on the workers' stream (one script).

        See SQLiteStore.add for the idempotency key.
        """
        now = repr(time.time())
        key, sha256, truck_id = frame.idempotency_key, frame.sha256, frame.truck_id
        fields = {
            "camera_id": frame.camera_id,
            "truck_id": truck_id or "",
            "captured_at": frame.captured_at or "",
            "received_at": now,
            "status": "queued",
            "image_ext": frame.image_ext,
        }
        hash_key = f"{P}frame:{frame.frame_id}"
        keys = [
            hash_key,
            f"{hash_key}:image",
            f"{P}open",
            FRAMES,
            f"{P}idem:{key}" if key is not None else "",
            f"{P}trucks",
        ]
        report_key = f"{P}truck:{truck_id}:report" if truck_id else ""
        arrived = FrameRecord(
            frame.frame_id,
            frame.camera_id,
            truck_id,
            frame.captured_at,
            float(now),
            "queued",
            None,
            None,
            None,
        )
        image = frame.image
        if self.objects is not None:  # the bytes first: a record never names a missing upload
            self.objects.put(upload_key(frame.frame_id, frame.image_ext), image)
            keys[1], image = "", b""
        try:
            while True:
                read, counted = self._counted(
                    report_key, truck_id, lambda r: count_arrival(r, arrived)
                )
                args: list[Any] = [frame.frame_id, image, now, self.report_ttl]
                args += [f"{frame.frame_id} {sha256}", truck_id or "", read, counted]
                for name, value in fields.items():
                    args += [name, value]
                first = self._add(keys=[*keys, report_key], args=args)
                if first != b"retry":  # another frame of the truck came between: count again
                    break
        except redis.RedisError:
            self._forget(upload_key(frame.frame_id, frame.image_ext))
            raise
        if first is None:
            return frame.frame_id, True
        self._forget(upload_key(frame.frame_id, frame.image_ext))  # a retry's own upload
        first_id, _, first_sha = first.decode().partition(" ")
        if first_sha != sha256:
            raise IdempotencyConflict(key)
        return first_id, False

    def image(self, frame_id: str) -> bytes:
        """The upload's bytes; KeyError when gone."""
        if self.objects is None:
            data = self.r.get(f"{P}frame:{frame_id}:image")
        else:
            ext = self.r.hget(f"{P}frame:{frame_id}", "image_ext")
            data = None if ext is None else self.objects.get(upload_key(frame_id, ext.decode()))
        if data is None:
            raise KeyError(frame_id)
        return bytes(data)

    def _forget(self, key: str) -> None:
        """Delete an object of the bucket that nothing will name.

        Best effort: a stray object costs storage, not correctness.
        """
        if self.objects is not None:
            try:
                self.objects.delete([key])
            except ObjectStoreError as err:
                log.warning("stray object %s left: %s", key, err)

    def get(self, frame_id: str) -> FrameRecord | None:
        """The frame, or None (unknown or expired)."""
        return _record(frame_id, self.r.hgetall(f"{P}frame:{frame_id}"))

    def set_processing(self, frame_id: str) -> None:
        """Mark a frame as being processed (only a queued or processing frame)."""
        key = f"{P}frame:{frame_id}"
        if self.r.hget(key, "status") in (b"queued", b"processing"):
            self.r.hset(key, "status", "processing")

    def complete(self, frame_id: str, result: FrameResult, files: dict[str, bytes]) -> bool:
        """Store the result and files and end the frame; False if it had ended already."""
        return self._finish(frame_id, "done", result, "", files)

    def fail(self, frame_id: str, reason: str) -> bool:
        """End a frame as failed with the reason; False if it had ended already."""
        return self._finish(frame_id, "failed", None, reason)

    def backlog(self) -> int:
        """Frames accepted and not ended."""
        return int(self.r.scard(f"{P}open"))

    def _finish(
        self,
        frame_id: str,
        status: Status,
        result: FrameResult | None,
        error: str,
        files: dict[str, bytes] | None = None,
    ) -> bool:
        """End the frame, its result and files in one script; False if it had ended."""
        record = self.get(frame_id)
        if record is None or record.status in ("done", "failed"):
            return False
        frame = f"{P}frame:{frame_id}"
        keys = [frame, f"{P}open", f"{P}results", f"{frame}:image", f"{frame}:"]
        now = time.time()
        oldest = f"{int((now - self.result_ttl) * 1000)}-0"  # feed entries worth keeping
        packed = pack_result(result) if result is not None else b""
        truck_id = record.truck_id
        report_key = f"{P}truck:{truck_id}:report" if truck_id else ""
        ended = replace(record, status=status, result=result, error=error, completed_at=now)
        kept = self.keep.keeps(frame_id, result.verdict if result is not None else None)
        upload_ttl = self.result_ttl if kept else self.upload_ttl
        files_put = list(files or {})
        token, due, files = self._store_files(frame_id, now, upload_ttl, files or {})
        while True:
            read, counted = self._counted(report_key, truck_id, lambda r: count_end(r, ended))
            args: list[Any] = [status, repr(now), packed, error, frame_id, self.result_ttl]
            args.append(oldest)
            args += [self.report_ttl, upload_ttl, read, counted, token, due]
            for name, data in files.items():
                args += [name, data]
            end_keys = [*keys, report_key, _pace_key(int(now // PACE_S)), OBJECTS]
            done = self._end(keys=end_keys, args=args)
            if done != -1:  # -1: another frame of the truck ended between; count again
                break
        if not done and token and self.objects is not None:  # another attempt ended it first
            self.objects.delete(result_key(frame_id, token, name) for name in files_put)
        return bool(done)

    def _store_files(
        self, frame_id: str, now: float, upload_ttl: float, files: dict[str, bytes]
    ) -> tuple[str, str, dict[str, bytes]]:
        """With a bucket: put the files there under a token of this attempt.

        Returns the token, the frame's entries of the objects set with their due times as
        the end script takes them, and the files left for Redis to keep (all of them
        without a bucket).
        """
        if self.objects is None:
            return "", "[]", files
        token = secrets.token_hex(4)
        for name, data in files.items():
            self.objects.put(result_key(frame_id, token, name), data)
        ext = (self.r.hget(f"{P}frame:{frame_id}", "image_ext") or b"").decode()
        due = [[now + upload_ttl, f"{frame_id} {ext}"]]
        if files:
            due.append([now + self.result_ttl, f"{frame_id}/{token}"])
        return token, json.dumps(due), {}

    def _counted(
        self, key: str, truck_id: str | None, change: Callable[[TruckReport], None]
    ) -> tuple[str, str]:
        """The truck's report as read now ("" for none) and with the change counted.

        The scripts write the second only while the key still holds the first.
        """
        if not truck_id:
            return "", ""
        raw = self.r.get(key)
        read = raw.decode() if raw is not None else ""
        report = TruckReport.model_validate_json(read) if read else new_report(truck_id)
        change(report)
        return read, report.model_dump_json()

    def unfinished(self) -> list[str]:
        """Frames accepted and not ended, oldest first."""
        ids = [m.decode() for m in self.r.smembers(f"{P}open")]
        times = {i: float(t or 0) for i, t in zip(ids, self._many(ids, "received_at"), strict=True)}
        return sorted(ids, key=lambda i: times[i])

    def file_bytes(self, frame_id: str, name: str) -> bytes | None:
        """A result file of a done frame, or None."""
        if self.objects is not None:
            token = self.r.hget(f"{P}frame:{frame_id}", "files")
            return (
                None
                if token is None
                else self.objects.get(result_key(frame_id, token.decode(), name))
            )
        data = self.r.get(f"{P}frame:{frame_id}:{name}")
        return None if data is None else bytes(data)

    def purge_objects(self, now: float | None = None, batch: int = DELETE_BATCH) -> int:
        """Delete the bucket's objects that are due; returns how many.

        A batch taken off the list whose deletion fails goes back on it (due now). A
        frame's result files are deleted by name (RESULT_FILES), whether or not each one
        was written: S3 deletes a missing key without complaint.
        """
        if self.objects is None:
            return 0
        now = time.time() if now is None else now
        gone = 0
        while True:
            due = [k.decode() for k in self._due(keys=[OBJECTS], args=[repr(now), batch])]
            keys = [key for entry in due for key in _bucket_keys(entry)]
            try:
                self.objects.delete(keys)
            except ObjectStoreError:
                self.r.zadd(OBJECTS, dict.fromkeys(due, now))
                raise
            gone += len(keys)
            if len(due) < batch:
                return gone

    def feed(self, after: str, limit: int, camera_id: str | None = None) -> FeedPage:
        """Ended frames after the cursor (a stream entry id, "" for the start), in order.

        `next` is the last entry looked at (an expired frame's too). A camera's page reads
        that camera's own feed stream, whose entries have the same ids, so cursors work
        for both.
        """
        start = f"({after}" if after else "-"
        stream = f"{P}results:{camera_id}" if camera_id else f"{P}results"
        out: list[tuple[str, FrameRecord]] = []
        last = after
        while len(out) < limit:
            try:
                entries = self.r.xrange(stream, start, "+", count=max(limit, 100))
            except redis.ResponseError:
                raise ValueError("not a cursor of this store") from None
            if not entries:
                break
            pipe = self.r.pipeline(transaction=False)  # the page's frames in one round trip
            for _, fields in entries:
                pipe.hgetall(f"{P}frame:{fields[b'frame_id'].decode()}")
            for (entry_id, fields), frame in zip(entries, pipe.execute(), strict=True):
                last = entry_id.decode()
                start = f"({last}"
                record = _record(fields[b"frame_id"].decode(), frame)
                if record is not None:  # expired frames leave the feed
                    out.append((last, record))
                if len(out) == limit:
                    break
        return FeedPage(out, last)

    def tail_cursor(self, back: int) -> str:
        """The cursor after which the feed holds its last `back` entries ("" for all)."""
        entries = self.r.xrevrange(f"{P}results", "+", "-", count=back + 1)
        return entries[back][0].decode() if len(entries) > back else ""

    def pace(self, since: float) -> tuple[int, int]:
        """(frames ended, of them failed) since `since`, from the ends counted per PACE_S.

        Counted by the bucket: the oldest bucket counts whole, so the figure may include
        up to PACE_S seconds before `since`.
        """
        first, last = int(since // PACE_S), int(time.time() // PACE_S)
        pipe = self.r.pipeline(transaction=False)
        for bucket in range(first, last + 1):
            pipe.hmget(_pace_key(bucket), "done", "failed")
        counts = [(int(d or 0), int(f or 0)) for d, f in pipe.execute()]
        failed = sum(f for _, f in counts)
        return sum(d for d, _ in counts) + failed, failed

    def truck_report(self, truck_id: str) -> TruckReport | None:
        """The truck's frames still kept, aggregated; None for none.

        A frame whose result has expired (result_ttl) counts with what its report needs
        (status, times, instances' class, score and area) until report_ttl.
        """
        return self._reports([truck_id])[truck_id]

    def _reports(self, truck_ids: list[str]) -> dict[str, TruckReport | None]:
        """The kept reports of these trucks, in one round trip.

        A truck whose frames came before the reports were kept is counted from its frames.
        """
        pipe = self.r.pipeline(transaction=False)
        for t in truck_ids:
            pipe.get(f"{P}truck:{t}:report")
        kept = dict(zip(truck_ids, pipe.execute(), strict=True))
        older = [t for t, raw in kept.items() if raw is None]
        frames = self._trucks_frames(older) if older else {}
        return {
            t: TruckReport.model_validate_json(raw)
            if raw is not None
            else (truck_report(t, frames[t]) if frames[t] else None)
            for t, raw in kept.items()
        }

    def _trucks_frames(self, truck_ids: list[str]) -> dict[str, list[FrameRecord]]:
        """Every frame of each truck, oldest first, in two round trips."""
        pipe = self.r.pipeline(transaction=False)
        for t in truck_ids:
            pipe.zrange(f"{P}truck:{t}", 0, -1)
        ids = {
            t: [m.decode() for m in members]
            for t, members in zip(truck_ids, pipe.execute(), strict=True)
        }
        pipe = self.r.pipeline(transaction=False)
        for frames in ids.values():
            for i in frames:
                pipe.hgetall(f"{P}frame:{i}")
                pipe.get(f"{P}frame:{i}:report")
        replies = iter(pipe.execute())
        out: dict[str, list[FrameRecord]] = {}
        for t, frames in ids.items():
            out[t] = []
            for i in frames:
                full, summary = next(replies), next(replies)
                record = _record(i, full)
                if record is None and summary is not None:  # the result has expired
                    kept = json.loads(summary)
                    if kept["result"] is not None:
                        kept["result"] = Summary.model_validate(kept["result"])
                    record = FrameRecord(frame_id=i, **kept)
                if record is not None:
                    out[t].append(record)
        return out

    def trucks(self, query: TruckQuery) -> TruckPage:
        """Trucks whose latest frame was received in [since, until), latest first, a page.

        Each listed truck's kept report is read, `limit` trucks per round trip; with a
        verdict, rounds go on until the page is full or the range is done.
        """
        high: float | str = f"({query.until}"
        skip_to: str | None = None
        limit, verdict = query.limit, query.verdict
        if query.after:
            last_at, skip_to = read_truck_cursor(query.after)
            high = last_at
        items: list[TruckSummary] = []
        keys: list[tuple[float, str]] = []
        offset = 0
        while True:
            got = self.r.zrevrangebyscore(
                f"{P}trucks", high, query.since, start=offset, num=limit + 1, withscores=True
            )
            offset += len(got)
            members = [(m.decode(), score) for m, score in got]
            if skip_to is not None:  # ties with the cursor's time come in reverse id order
                members = [(m, t) for m, t in members if t < last_at or m < skip_to]
            reports = self._reports([m for m, _ in members])
            for m, t in members:
                report = reports[m]
                if report is None:  # its frames have expired
                    continue
                if verdict is None or report.verdict == verdict:
                    items.append(summary_of(report))
                    keys.append((t, m))
                    if len(items) > limit:
                        return TruckPage(items[:limit], truck_cursor(*keys[limit - 1]))
            if len(got) < limit + 1:
                return TruckPage(items, None)

    def requeue(self, frame_id: str) -> None:
        """An attempt failed: the frame is queued again (unless it has ended)."""
        key = f"{P}frame:{frame_id}"
        if self.r.hget(key, "status") in (b"queued", b"processing"):
            self.r.hset(key, "status", "queued")

    def results_tail(self) -> str:
        """The id of the newest feed entry ("0-0" for none): where follow() starts."""
        newest = self.r.xrevrange(f"{P}results", count=1)
        return str(newest[0][0].decode()) if newest else "0-0"

    def follow(self, last: str, block_ms: int) -> tuple[str, list[str]]:
        """Frames ended after feed entry `last`, waiting up to block_ms for one.

        Returns the newest entry id seen and the frame ids.
        """
        reply = self.r.xread({f"{P}results": last}, count=500, block=block_ms)
        ids = [_entry(e) for _, entries in reply or [] for e in entries]
        return (ids[-1][0] if ids else last), [frame_id for _, frame_id in ids]

    def add_feedback(self, item: FrameFeedback | TruckDecision) -> None:
        """Keep an operator's feedback; a judged frame's keys lose their expiry."""
        target = item.frame_id if isinstance(item, FrameFeedback) else item.truck_id
        text = item.model_dump_json()
        objects = self._objects_of(target) if isinstance(item, FrameFeedback) else []
        pipe = self.r.pipeline(transaction=True)
        if objects:
            pipe.zrem(OBJECTS, *objects)
        pipe.rpush(f"{P}feedback:{item.kind}:{target}", text)
        pipe.xadd(f"{P}feedback", {"item": text})
        if isinstance(item, FrameFeedback):
            frame = f"{P}frame:{target}"
            for key in (frame, *(f"{frame}:{name}" for name in _FILES)):
                pipe.persist(key)
        pipe.execute()

    def _objects_of(self, frame_id: str) -> list[str]:
        """A frame's entries in the objects set (none without a bucket)."""
        if self.objects is None:
            return []
        ext, token = self.r.hmget(f"{P}frame:{frame_id}", "image_ext", "files")
        entries = [f"{frame_id} {ext.decode()}"] if ext else []
        return entries + ([f"{frame_id}/{token.decode()}"] if token else [])

    def save_settings(self, settings: LiveSettings, by: str) -> SettingsChange:
        """Keep a new version of the live settings (the next number); returns it.

        Two API processes saving at once: the one whose list changed under it tries again.
        """
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(SETTINGS)
                    last = pipe.lindex(SETTINGS, -1)
                    previous = SettingsChange.model_validate_json(last) if last else None
                    change = next_change(previous, settings, by)
                    pipe.multi()
                    pipe.rpush(SETTINGS, change.model_dump_json())
                    pipe.execute()
                    return change
                except redis.WatchError:
                    continue

    def live_settings(self) -> SettingsChange | None:
        """The latest version of the live settings; None before the first."""
        last = self.r.lindex(SETTINGS, -1)
        return SettingsChange.model_validate_json(last) if last else None

    def settings_log(self, limit: int = 100) -> list[SettingsChange]:
        """The last `limit` versions, oldest first (each with what it replaced)."""
        return [SettingsChange.model_validate_json(t) for t in self.r.lrange(SETTINGS, -limit, -1)]

    def add_shadow(self, frame: ShadowFrame) -> None:
        """Keep a frame as a candidate in shadow answered it (the last SHADOW_KEEP of each)."""
        key = _shadow_key(frame.candidate_model)
        with self.r.pipeline() as pipe:
            pipe.rpush(key, frame.model_dump_json(by_alias=True))
            pipe.ltrim(key, -SHADOW_KEEP, -1)
            pipe.execute()

    def shadow_frames(self, candidate: ModelRef, limit: int = SHADOW_KEEP) -> list[ShadowFrame]:
        """The candidate's last `limit` shadow frames, oldest first."""
        items = self.r.lrange(_shadow_key(candidate), -limit, -1)
        return [ShadowFrame.model_validate_json(t) for t in items]

    def feedback(self, kind: Target, target: str) -> list[FrameFeedback | TruckDecision]:
        """The feedback about a frame or a truck, in the order given."""
        return [
            FEEDBACK.validate_json(t) for t in self.r.lrange(f"{P}feedback:{kind}:{target}", 0, -1)
        ]

    def feedback_between(
        self, since: float | None = None, until: float | None = None
    ) -> list[FrameFeedback | TruckDecision]:
        """All feedback given in [since, until), in the order given.

        The stream is read from a minute before `since` (its ids are Redis's clock, the
        items' times the API's) and the items are chosen by their own time.
        """
        low = since if since is not None else 0.0
        high = until if until is not None else float("inf")
        start = f"{max(0, int((low - 60) * 1000))}-0"
        out: list[FrameFeedback | TruckDecision] = []
        for _, fields in self.r.xrange(f"{P}feedback", start, "+"):
            item = FEEDBACK.validate_json(fields[b"item"])
            if low <= item.at < high:
                out.append(item)
        return out

    def _many(self, ids: list[str], field: str) -> list[bytes | None]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hget(f"{P}frame:{i}", field)
        return list(pipe.execute())


def _bucket_keys(entry: str) -> list[str]:
    """The bucket's keys that an entry of the objects set stands for."""
    frame_id, _, token = entry.partition("/")
    if token:
        return [result_key(frame_id, token, name) for name in RESULT_FILES]
    frame_id, _, ext = entry.partition(" ")
    return [upload_key(frame_id, ext)]


def _entry(entry: tuple[bytes, dict[bytes, bytes]]) -> tuple[str, str]:
    return entry[0].decode(), entry[1][b"frame_id"].decode()


def _record(frame_id: str, h: dict[bytes, bytes]) -> FrameRecord | None:
    if not h:
        return None

    def text(name: str) -> str | None:
        value = h.get(name.encode(), b"").decode()
        return value or None

    completed = text("completed_at")
    result = h.get(b"result")  # packed bytes (service.result.pack_result)
    return FrameRecord(
        frame_id=frame_id,
        camera_id=text("camera_id") or "",
        truck_id=text("truck_id"),
        captured_at=text("captured_at"),
        received_at=float(text("received_at") or 0),
        status=text("status"),  # type: ignore[arg-type]
        error=text("error"),
        result=load_result(result) if result else None,
        completed_at=float(completed) if completed else None,
    )


def _shadow_key(model: ModelRef) -> str:
    """The list of a candidate's shadow frames, oldest first."""
    return f"{P}shadow:{model.name}/{model.version}"
