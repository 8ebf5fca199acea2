"""The frame queue the runner takes frames from: in-process, or a Redis stream.

A queue hands out deliveries: a frame id, the queue's handle for it and which attempt at
the frame this is. The runner (service/runner.py) ends each delivery one way:
`done` (the frame ended, or had), `retry` (the attempt failed; queue it again) or `dead`
(given up on). A queue counts attempts and keeps the last attempt's error.

- LocalQueue: an asyncio queue in the API process (the embedded service). Frames are put
  on it when accepted, and at start for the frames the store holds unfinished.
- RedisQueue: the stream `scrapscan:frames` read through the consumer group "workers",
  one consumer per scrapscan-worker. Frames are put on it by the store's acceptance script
  (service/store_redis.py), so a 202 means the frame is queued. A delivery held by a
  consumer that stopped renewing it for claim_idle_s is taken over by another consumer
  (XAUTOCLAIM); its attempt count carries on. Given-up frames go to the stream
  `scrapscan:dead` with the reason and the attempts. A change of the model repository
  (an activation, a rollback, a candidate in shadow or out of it) is announced on the
  channel `scrapscan:models`; `news` waits for one. A region an operator asks about is
  put on the list `scrapscan:describe` for the workers (`asked`), and a worker's reply on
  the request's own list (`answer`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis

P = "scrapscan:"
FRAMES = f"{P}frames"
GROUP = "workers"
DEAD = f"{P}dead"
DEAD_MAXLEN = 100_000
ATTEMPTS = f"{P}attempts"
ERRORS = f"{P}attempt_errors"
DESCRIBE = f"{P}describe"
"""Describe requests the API puts for the workers (POST /v1/frames/{id}/describe)."""
REPLY_TTL_S = 60
MODELS = f"{P}models"
"""The channel an API process announces a change of the model repository on."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A frame handed to the runner."""

    frame_id: str
    handle: str
    """The queue's own name for this delivery (a stream entry id; the frame id in process)."""
    attempt: int
    """Which attempt at the frame this is, 1 for the first."""
    taken_over: bool = False
    """Taken from a consumer that stopped (its attempts are counted)."""


class FrameQueue(Protocol):
    """What the runner needs of a queue."""

    async def take(self, count: int) -> list[Delivery]:
        """Up to `count` deliveries; waits a while for the first (may return none)."""
        ...

    async def done(self, d: Delivery) -> None:
        """The frame is finished with: off the queue."""
        ...

    async def retry(self, d: Delivery, reason: str) -> None:
        """The attempt failed with `reason`: the frame waits for another."""
        ...

    async def dead(self, d: Delivery, reason: str) -> None:
        """Given up on after d.attempt attempts: off the queue, recorded with the reason."""
        ...

    async def renew(self, held: list[Delivery]) -> None:
        """These deliveries are still being worked on (not to be taken over)."""
        ...

    async def asked(self, seconds: float) -> dict[str, Any] | None:
        """A describe request for this process's region encoder, waiting up to `seconds`."""
        ...

    async def answer(self, request: dict[str, Any], body: dict[str, Any]) -> None:
        """Reply to a describe request."""
        ...

    async def news(self, seconds: float) -> bool:
        """Wait up to `seconds` for the model repository to be announced changed.

        True when it was (then look at it now), False after `seconds`.
        """
        ...

    async def last_error(self, d: Delivery) -> str | None:
        """Why the frame's last failed attempt failed, if one did."""
        ...


NEWS_STEP_S = 0.5
"""RedisQueue.news listens in steps this long (a stopping worker waits for one at most)."""


class LocalQueue:
    """Frames of this process, in the order they were put."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._attempts: dict[str, int] = {}
        self._errors: dict[str, str] = {}

    def put(self, frame_id: str) -> None:
        """Queue a frame."""
        self._queue.put_nowait(frame_id)

    async def take(self, count: int) -> list[Delivery]:
        """Up to `count` frames; waits for the first."""
        ids = [await self._queue.get()]
        while len(ids) < count and not self._queue.empty():
            ids.append(self._queue.get_nowait())
        out = []
        for frame_id in ids:
            self._attempts[frame_id] = self._attempts.get(frame_id, 0) + 1
            out.append(Delivery(frame_id, frame_id, self._attempts[frame_id]))
        return out

    async def done(self, d: Delivery) -> None:
        """Forget the frame's attempts."""
        self._forget(d.frame_id)

    async def retry(self, d: Delivery, reason: str) -> None:
        """Queue the frame again at the end."""
        self._errors[d.frame_id] = reason
        self.put(d.frame_id)

    async def dead(self, d: Delivery, reason: str) -> None:
        """Forget the frame (the store holds it as failed, with the reason)."""
        self._forget(d.frame_id)

    async def renew(self, held: list[Delivery]) -> None:
        """Nothing to renew: no other process takes frames from this queue."""

    async def last_error(self, d: Delivery) -> str | None:
        """The reason of the frame's last retry."""
        return self._errors.get(d.frame_id)

    async def news(self, seconds: float) -> bool:
        """Embedded, the API changes the model itself: nothing to hear of."""
        await asyncio.sleep(seconds)
        return False

    async def asked(self, seconds: float) -> dict[str, Any] | None:
        """Embedded, the API describes regions itself: nobody asks."""
        await asyncio.sleep(seconds)
        return None

    async def answer(self, request: dict[str, Any], body: dict[str, Any]) -> None:
        """Nobody to answer."""

    def _forget(self, frame_id: str) -> None:
        self._attempts.pop(frame_id, None)
        self._errors.pop(frame_id, None)


_RETRY = """
-- KEYS: frames stream, errors hash; ARGV: frame_id, entry id, group, reason
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('XADD', KEYS[1], '*', 'frame_id', ARGV[1])
redis.call('XACK', KEYS[1], ARGV[3], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 0
"""


class RedisQueue:
    """The frame stream, read as consumer `consumer` of the group "workers".

    Redis errors propagate (redis.RedisError): the runner waits and goes on.
    """

    def __init__(
        self, client: Any, consumer: str, block_ms: int = 1000, claim_idle_s: float = 60
    ) -> None:
        self.r = client
        self.consumer = consumer
        self.block_ms = block_ms
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self._group_ready = False
        self._retry = self.r.register_script(_RETRY)
        self._models: Any = None
        """The subscription to MODELS, made on the first `news`."""

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless they exist."""
        try:
            self.r.xgroup_create(FRAMES, GROUP, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._group_ready = True

    async def take(self, count: int) -> list[Delivery]:
        """Frames of stopped consumers first (taken over), else new ones (waits block_ms)."""
        return await asyncio.to_thread(self._take, count)

    def _take(self, count: int) -> list[Delivery]:
        if not self._group_ready:
            self.ensure_group()
        try:
            _, claimed, *_ = self.r.xautoclaim(
                FRAMES, GROUP, self.consumer, self.claim_idle_ms, "0-0", count
            )
            entries = [_entry(e) for e in claimed if e[1]]
            taken_over = bool(entries)
            if not entries:
                reply = self.r.xreadgroup(
                    GROUP, self.consumer, {FRAMES: ">"}, count=count, block=self.block_ms
                )
                entries = [_entry(e) for _, found in reply or [] for e in found]
        except redis.RedisError:
            self._group_ready = False  # Redis may come back empty (no AOF): make it again
            raise
        pipe = self.r.pipeline(transaction=False)
        for _, frame_id in entries:
            pipe.hincrby(ATTEMPTS, frame_id, 1)
        attempts = pipe.execute() if entries else []
        return [
            Delivery(frame_id, entry_id, int(n), taken_over)
            for (entry_id, frame_id), n in zip(entries, attempts, strict=True)
        ]

    async def done(self, d: Delivery) -> None:
        """Acknowledge and delete the entry; forget the frame's attempts."""
        await asyncio.to_thread(self._done, d)

    def _done(self, d: Delivery) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(FRAMES, GROUP, d.handle)
        pipe.xdel(FRAMES, d.handle)
        pipe.hdel(ATTEMPTS, d.frame_id)
        pipe.hdel(ERRORS, d.frame_id)
        pipe.execute()

    async def retry(self, d: Delivery, reason: str) -> None:
        """A new entry for the frame at the end of the stream; the old one acknowledged."""
        await asyncio.to_thread(
            self._retry, keys=[FRAMES, ERRORS], args=[d.frame_id, d.handle, GROUP, reason]
        )

    async def dead(self, d: Delivery, reason: str) -> None:
        """On the dead-letter stream with the reason and the attempts; off the queue."""
        fields = {"frame_id": d.frame_id, "reason": reason, "attempts": d.attempt}

        def add() -> None:
            self.r.xadd(DEAD, fields, maxlen=DEAD_MAXLEN, approximate=True)
            self._done(d)

        await asyncio.to_thread(add)

    async def renew(self, held: list[Delivery]) -> None:
        """Reset the idle time of these entries (XCLAIM to this consumer)."""
        if held:
            ids = [d.handle for d in held]
            await asyncio.to_thread(
                self.r.xclaim, FRAMES, GROUP, self.consumer, 0, ids, justid=True
            )

    async def last_error(self, d: Delivery) -> str | None:
        """Why the frame's last failed attempt failed, if one did."""
        value = await asyncio.to_thread(self.r.hget, ERRORS, d.frame_id)
        return value.decode() if value else None

    async def news(self, seconds: float) -> bool:
        """Wait up to `seconds` for an announcement on MODELS (announce_models).

        Redis errors propagate, and the subscription is made again on the next call.
        """
        try:
            if self._models is None:
                self._models = self.r.pubsub(ignore_subscribe_messages=True)
                await asyncio.to_thread(self._models.subscribe, MODELS)
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                step = min(NEWS_STEP_S, left)
                if await asyncio.to_thread(self._models.get_message, timeout=step):
                    return True
            return False
        except redis.RedisError:
            models, self._models = self._models, None
            if models is not None:
                models.close()
            raise

    async def asked(self, seconds: float) -> dict[str, Any] | None:
        """The next describe request an API process put on DESCRIBE, or None after `seconds`."""
        got = await asyncio.to_thread(self.r.brpop, [DESCRIBE], max(1, round(seconds)))
        return None if got is None else dict(json.loads(got[1]))

    async def answer(self, request: dict[str, Any], body: dict[str, Any]) -> None:
        """The reply to the request's own list, which the asking API process waits on."""
        key = f"{DESCRIBE}:reply:{request['id']}"

        def push() -> None:
            with self.r.pipeline() as pipe:
                pipe.rpush(key, json.dumps(body))
                pipe.expire(key, REPLY_TTL_S)
                pipe.execute()

        await asyncio.to_thread(push)


def ask_describe(client: Any, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """Put a describe request for the workers and wait for a reply (None after timeout_s)."""
    request = {**request, "id": secrets.token_hex(8)}
    key = f"{DESCRIBE}:reply:{request['id']}"
    client.lpush(DESCRIBE, json.dumps(request))
    got = client.blpop([key], max(1, round(timeout_s)))
    if got is None:  # nobody answered: take the request back if it is still there
        client.lrem(DESCRIBE, 1, json.dumps(request))
        return None
    return dict(json.loads(got[1]))


def announce_models(client: Any) -> None:
    """Tell every worker that the model repository changed (they look at it at once)."""
    client.publish(MODELS, "changed")


def group_info(client: Any) -> dict[str, Any]:
    """The workers' group as XINFO GROUPS has it (lag, pending, consumers); {} if none."""
    try:
        groups = client.xinfo_groups(FRAMES)
    except redis.ResponseError:  # no stream yet: nothing was ever queued
        return {}
    for g in groups:
        if g["name"] in (GROUP, GROUP.encode()):
            return dict(g)
    return {}


def _entry(entry: tuple[bytes, dict[bytes, bytes]]) -> tuple[str, str]:
    return entry[0].decode(), entry[1][b"frame_id"].decode()
