"""The frame runner over its two queues: retries, giving up, renewing and takeover."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import redis

from service.metrics import Metrics
from service.pipeline import Processed
from service.queue import ATTEMPTS, DEAD, FRAMES, LocalQueue, RedisQueue
from service.runner import FrameRunner, settled_heap
from service.settings import QueueSettings, Settings
from service.store import NewFrame
from service.store_sqlite import SQLiteStore

from .conftest import frame_result


class FlakyPipeline:
    """Fails the first `failures` frames it is given, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def process(self, data: bytes, camera_id: str) -> Processed:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("engine lost")
        return Processed(frame_result([{"class": "cable", "score": 0.9, "area": 50}]), {})


def embedded(tmp_path, failures: int) -> tuple[FrameRunner, LocalQueue, SQLiteStore]:
    store = SQLiteStore(tmp_path)
    queue = LocalQueue()
    settings = Settings(data_dir=tmp_path, queue=QueueSettings(max_attempts=3))
    runner = FrameRunner(settings, store, queue, Metrics())
    runner.models.pipeline = FlakyPipeline(failures)  # type: ignore[assignment]
    store.add(NewFrame("a" * 32, "cam", None, None, b"jpeg", ".jpg"))
    queue.put("a" * 32)
    return runner, queue, store


async def deliver_all(runner: FrameRunner, queue: LocalQueue) -> list[str]:
    """Deliver until the queue is empty; the frame's status after each delivery."""
    seen = []
    while not queue._queue.empty():
        (d,) = await queue.take(1)
        await runner._deliver(d)
        seen.append(runner.store.get(d.frame_id).status)
    return seen


def test_a_failed_attempt_is_retried_and_the_frame_waits_queued(tmp_path):
    runner, queue, store = embedded(tmp_path, failures=2)
    assert asyncio.run(deliver_all(runner, queue)) == ["queued", "queued", "done"]
    assert store.get("a" * 32).result.instances[0].class_name == "cable"
    store.close()


def test_a_frame_is_given_up_on_after_max_attempts_with_the_reason(tmp_path):
    runner, queue, store = embedded(tmp_path, failures=5)
    assert asyncio.run(deliver_all(runner, queue)) == ["queued", "queued", "failed"]
    error = store.get("a" * 32).error
    assert error.startswith("gave up after 3 attempts: internal_error: RuntimeError")
    assert runner.models.pipeline.calls == 3
    store.close()


def test_a_hung_worker_stops_renewing_and_another_takes_its_frame(redis_url):
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    settings = Settings(queue=QueueSettings(claim_idle_s=1.0, max_frame_s=1.5))
    mine = RedisQueue(r, "hung", block_ms=10, claim_idle_s=1.0)
    other = RedisQueue(r, "other", block_ms=10, claim_idle_s=1.0)
    mine.ensure_group()
    r.xadd(FRAMES, {"frame_id": "f" * 32})

    async def scenario() -> tuple[list, list]:
        (d,) = await mine.take(1)
        runner = FrameRunner(settings, None, mine, Metrics())  # type: ignore[arg-type]
        runner.held[d.handle] = d
        runner.started[d.handle] = time.monotonic()
        renewing = asyncio.create_task(runner._renew())  # every 1/3 s while not hung
        await asyncio.sleep(1.2)
        early = await other.take(1)  # renewed 0.2 s ago: not to be taken over
        await asyncio.sleep(1.5)  # hung since 1.5 s: no renewal after about 1.33 s
        late = await other.take(1)
        renewing.cancel()
        return early, late

    early, late = asyncio.run(scenario())
    assert early == []
    (taken,) = late
    assert taken.frame_id == "f" * 32 and taken.taken_over and taken.attempt == 2
    assert int(r.hget(ATTEMPTS, "f" * 32)) == 2


def test_a_dead_letter_records_the_reason_and_leaves_the_queue(redis_url):
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    q = RedisQueue(r, "w", block_ms=10)
    q.ensure_group()
    r.xadd(FRAMES, {"frame_id": "e" * 32})

    async def scenario() -> None:
        (d,) = await q.take(1)
        await q.retry(d, "engine lost")
        (again,) = await q.take(1)
        assert again.attempt == 2 and await q.last_error(again) == "engine lost"
        await q.dead(again, "gave up")

    asyncio.run(scenario())
    ((_, dead),) = r.xrange(DEAD)
    assert dead == {b"frame_id": b"e" * 32, b"reason": b"gave up", b"attempts": b"2"}
    assert r.xlen(FRAMES) == 0 and r.hlen(ATTEMPTS) == 0


def test_a_settled_heap_is_collected_then_frozen_until_the_block_ends():
    class Node:
        pass

    alive = [[k] for k in range(1000)]  # containers: objects the collector walks
    cycle = Node()
    cycle.me = cycle
    gone = weakref.ref(cycle)
    del cycle  # garbage only the collector can free
    gc.unfreeze()
    with settled_heap():
        assert gone() is None  # collected first: no garbage frozen
        assert gc.get_freeze_count() >= len(alive)  # then out of the collector's walks
    assert gc.get_freeze_count() == 0  # back to the collector once the block ends
    with settled_heap(on=False):
        assert gc.get_freeze_count() == 0
