import asyncio
import time

import numpy as np
import pytest

from service.batcher import Batcher
from service.engine import EngineOutput


class FakeEngine:
    """Stands in for the model: each tile's output is its own first value, after a delay."""

    name = "fake"

    def __init__(self, seconds=0.01, max_batch=64, fail_on=None):
        self.seconds = seconds
        self.max_batch = max_batch
        self.fail_on = fail_on
        self.calls = 0
        self.texts = []

    def infer(self, images, text=None):
        self.calls += 1
        self.texts.append(text)
        time.sleep(self.seconds)
        if self.fail_on is not None and np.any(images[:, 0, 0, 0] == self.fail_on):
            raise RuntimeError("engine broke")
        v = images[:, 0, 0, 0]
        n = len(images)
        return EngineOutput(
            np.broadcast_to(v[:, None, None, None], (n, 2, 2, 2)).astype(np.float32),
            np.broadcast_to(v[:, None, None], (n, 2, 2)).astype(np.float32),
            np.broadcast_to(v[:, None], (n, 2)).astype(np.float32),
            np.zeros((n, 0, 2, 2), np.float32),
        )


def tiles(values):
    x = np.zeros((len(values), 3, 4, 4), np.float32)
    x[:, 0, 0, 0] = values
    return x


def run(coro):
    return asyncio.run(coro)


async def with_batcher(engine, max_batch, max_wait, body):
    records = []
    b = Batcher(engine, max_batch, max_wait, on_batch=records.append)
    b.start()
    try:
        return await body(b), records
    finally:
        await b.stop()


def test_each_request_gets_its_own_outputs_in_order():
    async def body(b):
        reqs = [
            np.arange(k * 100, k * 100 + n, dtype=np.float32) for k, n in enumerate([3, 9, 1, 14])
        ]
        outs = await asyncio.gather(*(b.infer(tiles(v)) for v in reqs))
        for v, out in zip(reqs, outs, strict=True):
            np.testing.assert_array_equal(out.scores[:, 0], v)
            assert out.class_probs.shape == (len(v), 2, 2, 2)

    run(with_batcher(FakeEngine(), 4, 0.005, body))


def test_a_batch_holds_only_frames_scored_with_the_same_text_classes():
    """Frames started under different text classes (a class added between them) never share
    a batch: each batch runs with the text of the frames in it."""
    first = np.ones((4, 2, 8), np.float32)
    second = np.full((4, 2, 8), 2.0, np.float32)
    engine = FakeEngine()

    async def body(b):
        texts = [None, first, second, first, None, second]
        await asyncio.gather(
            *(b.infer(tiles(np.full(3, k, np.float32)), t) for k, t in enumerate(texts))
        )

    _, records = run(with_batcher(engine, 16, 0.05, body))
    assert len(records) == 3 and sorted(r.size for r in records) == [6, 6, 6]
    owners = [set(r.owners) for r in records]
    assert all(len(o) == 2 for o in owners)  # the two frames of each text, and only they
    assert [t is None for t in engine.texts].count(True) == 1
    assert sum(t is first for t in engine.texts) == sum(t is second for t in engine.texts) == 1


def test_tiles_of_concurrent_frames_share_batches_and_batches_stay_bounded():
    async def body(b):
        await asyncio.gather(*(b.infer(tiles(np.full(6, k, np.float32))) for k in range(5)))

    _, records = run(with_batcher(FakeEngine(0.02), 8, 0.05, body))
    assert max(r.size for r in records) <= 8
    assert sum(r.size for r in records) == 30
    assert len(set(records[0].owners)) >= 2  # the first batch mixes frames
    assert len(records) == 4  # 30 tiles in full batches of 8 (the last one holds 6)


def test_round_robin_lets_a_small_frame_pass_a_large_one():
    async def body(b):
        big = asyncio.create_task(b.infer(tiles(np.zeros(40, np.float32))))
        await asyncio.sleep(0)
        small = asyncio.create_task(b.infer(tiles(np.ones(4, np.float32))))
        done, _ = await asyncio.wait([big, small], return_when=asyncio.FIRST_COMPLETED)
        assert small in done and big not in done
        await big

    _, records = run(with_batcher(FakeEngine(0.01), 8, 0.01, body))
    assert len(records) == 6


def test_no_tile_waits_longer_than_max_wait_plus_one_batch():
    """On a fake clock (looptime: the loop's time moves only as its timers fire), so the
    bound holds exactly, whatever else the machine is doing."""
    import looptime

    max_wait = 0.03

    async def body(b):
        async def camera(k):
            for i in range(5):
                await b.infer(tiles(np.full(1 + (k + i) % 4, k, np.float32)))
                await asyncio.sleep(0.005 * k)

        await asyncio.gather(*(camera(k) for k in range(4)))

    loop = looptime.new_event_loop(start=0, idle_step=0.001)
    try:
        _, records = loop.run_until_complete(with_batcher(FakeEngine(seconds=0), 8, max_wait, body))
    finally:
        loop.close()
    longest = max(w for r in records for w in r.waited)
    batch = max(r.seconds for r in records)
    assert longest <= max_wait + batch + 1e-9, (longest, batch)
    assert longest >= max_wait - 1e-9  # a lone small request did wait for company
    assert max(r.size for r in records) <= 8


def test_an_engine_error_fails_that_batch_and_the_batcher_goes_on():
    async def body(b):
        with pytest.raises(RuntimeError, match="engine broke"):
            await b.infer(tiles([7.0, 7.0]))
        out = await b.infer(tiles([1.0, 2.0]))
        np.testing.assert_array_equal(out.scores[:, 0], [1.0, 2.0])

    run(with_batcher(FakeEngine(fail_on=7.0), 4, 0.001, body))


def test_max_batch_is_capped_by_the_engine():
    b = Batcher(FakeEngine(max_batch=4), 32, 0.01)
    assert b.max_batch == 4
