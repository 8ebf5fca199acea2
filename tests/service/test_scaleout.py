"""The scaled-out shape as deployed: scrapscan-serve (store redis) and scrapscan-worker
processes sharing a real redis-server (deploy/redis.conf), killed and restarted for real."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from service.queue import ATTEMPTS, DEAD, FRAMES, GROUP, RedisQueue
from training.synth import render_frame

from ..conftest import RedisServer
from .conftest import Server, Worker
from .test_api import assert_error, jpeg, post

pytestmark = pytest.mark.slow

FAST = {
    "SCRAPSCAN_STORE": "redis",
    "SCRAPSCAN_THREADS": "1",
    "SCRAPSCAN_WORKERS": "3",
    "SCRAPSCAN_QUEUE__CLAIM_IDLE_S": "2",
    "SCRAPSCAN_QUEUE__BLOCK_MS": "200",
}


class Stack:
    """An API process and workers against one Redis; close() kills what is left."""

    def __init__(self, folder: Path, redis_server: RedisServer) -> None:
        self.folder = folder
        self.redis = redis_server
        self.procs: list[Server] = []

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**FAST, "SCRAPSCAN_REDIS_URL": self.redis.url, **extra}

    def api(self, **extra: str) -> Server:
        srv = Server(self.folder / "api" / "data", self.env(extra))
        srv.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.procs.append(srv)
        srv.start()
        return srv

    def worker(self, name: str, **extra: str) -> Worker:
        w = Worker(self.folder, self.env(extra), name)
        w.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.procs.append(w)
        w.start()
        return w

    def close(self) -> None:
        for p in self.procs:
            p.kill()


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: the tests kill and restart it."""
    server = RedisServer(tmp_path_factory.mktemp("redis-scaleout"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stack(own_redis: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    if own_redis.proc is None:  # a test before this one failed with Redis down
        own_redis.start()
    redis.Redis.from_url(own_redis.url).flushall()
    s = Stack(tmp_path, own_redis)
    yield s
    s.close()


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    """Five small crane frames (two tiles each), cycled through by the tests."""
    return [jpeg(render_frame(41, i, 640, 360).image) for i in range(5)]


def post_many(api: Server, frames: list[bytes], n: int, truck: str, threads: int = 4) -> list[str]:
    """Post n frames from several threads; every one must be accepted (202)."""

    def one(i: int) -> str:
        r = post(api, frames[i % len(frames)], {"truck_id": truck})
        assert r.status_code == 202, r.text
        return str(r.json()["frame_id"])

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def feed(api: Server, n: int, timeout: float = 180, limit: int = 100) -> list[dict]:
    """Page the feed from the start until n items came (or the time is up)."""
    items: list[dict] = []
    cursor = ""
    deadline = time.monotonic() + timeout
    while len(items) < n and time.monotonic() < deadline:
        page = httpx.get(
            f"{api.url}/v1/results", params={"after": cursor, "limit": limit, "wait": 2}, timeout=10
        ).json()
        items += page["items"]
        cursor = page["next"]
    return items


def metric(worker: Worker, name: str) -> float:
    text = httpx.get(f"{worker.url}/metrics").text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_worker_killed_mid_batch_loses_nothing_and_repeats_nothing(stack, frames):
    api = stack.api()
    a = stack.worker("worker-a")
    b = stack.worker("worker-b")
    r = redis.Redis.from_url(stack.redis.url)
    with ThreadPoolExecutor(1) as pool:
        posting = pool.submit(post_many, api, frames, 50, "TRK-KILL")
        deadline = time.monotonic() + 120
        held_frames: list[str] = []
        while not held_frames:  # kill worker-a while it holds frames and others are done
            assert time.monotonic() < deadline, "worker-a never held frames"
            time.sleep(0.02)
            if r.xlen("scrapscan:results") < 3:
                continue
            held = r.xpending_range(FRAMES, GROUP, "-", "+", 100, consumername="worker-a")
            entries = [r.xrange(FRAMES, e["message_id"], e["message_id"]) for e in held]
            held_frames = [e[0][1][b"frame_id"].decode() for e in entries if e]
        a.kill()
        ids = posting.result()

    items = feed(api, 50)
    seen = [i["frame_id"] for i in items]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == 50  # all, each once
    assert all(i["status"] == "done" for i in items), [i["error"] for i in items]
    assert held_frames and set(held_frames) <= set(seen)
    report = httpx.get(f"{api.url}/v1/trucks/TRK-KILL/report").json()
    assert report["frames"] == 50
    assert metric(b, "scrapscan_worker_claimed_frames_total") >= 1  # b took a's frames
    assert r.xpending(FRAMES, GROUP)["pending"] == 0 and r.xlen(FRAMES) == 0
    time.sleep(3)  # nothing more turns up later (no second result for a taken-over frame)
    assert r.xlen("scrapscan:results") == 50
    assert (
        httpx.get(f"{api.url}/v1/results", params={"after": items[-1]["cursor"]}).json()["items"]
        == []
    )


def test_every_frame_accepted_before_a_redis_crash_is_processed(stack, frames):
    api = stack.api()
    ids = post_many(api, frames, 8, "TRK-CRASH")
    stack.redis.kill()  # SIGKILL: only what the AOF has on disk survives

    down = post(api, frames[0], {"truck_id": "TRK-CRASH"})
    assert_error(down, 503, "store_unavailable")
    assert down.headers["retry-after"] == "5"
    assert_error(httpx.get(f"{api.url}/v1/frames/{ids[0]}"), 503, "store_unavailable")
    assert_error(httpx.get(f"{api.url}/readyz"), 503, "store_unavailable")

    stack.redis.start()
    deadline = time.monotonic() + 20
    while httpx.get(f"{api.url}/readyz").status_code != 200:  # the API recovers by itself
        assert time.monotonic() < deadline, "the API did not recover"
        time.sleep(0.2)
    ids += post_many(api, frames, 1, "TRK-CRASH")
    stack.worker("worker-r")
    items = feed(api, 9)
    assert sorted(i["frame_id"] for i in items) == sorted(ids)
    assert all(i["status"] == "done" for i in items)


def test_a_full_queue_answers_429_until_the_workers_catch_up(stack, frames):
    api = stack.api(SCRAPSCAN_QUEUE__MAX_BACKLOG="4")
    ids = post_many(api, frames, 4, "TRK-FULL", threads=1)
    full = post(api, frames[0])
    assert_error(full, 429, "queue_full")
    assert full.headers["retry-after"] == "5"
    assert "scrapscan_queue_backlog_frames 4.0" in httpx.get(f"{api.url}/metrics").text
    stack.worker("worker-q")
    assert sorted(i["frame_id"] for i in feed(api, 4)) == sorted(ids)
    assert post(api, frames[0]).status_code == 202  # recovered
    assert "scrapscan_frames_throttled_total 1.0" in httpx.get(f"{api.url}/metrics").text


def test_the_feed_pages_every_frame_once_while_frames_keep_arriving(stack, frames):
    api = stack.api()
    stack.worker("worker-f")
    posted: list[str] = []

    def keep_posting() -> None:
        for _ in range(4):
            posted.extend(post_many(api, frames, 6, "TRK-FEED", threads=3))
            time.sleep(0.3)

    poster = threading.Thread(target=keep_posting)
    poster.start()
    items = feed(api, 24, limit=5)
    poster.join()
    seen = [i["frame_id"] for i in items]
    assert len(seen) == 24 and sorted(seen) == sorted(posted)
    cursors = [i["cursor"] for i in items]
    assert cursors == sorted(cursors, key=lambda c: tuple(map(int, c.split("-"))))


def test_frames_that_keep_failing_go_to_the_dead_letter_stream(stack, frames):
    api = stack.api()
    r = redis.Redis.from_url(stack.redis.url)
    crashy, lost = post_many(api, frames, 2, "TRK-DEAD", threads=1)
    # crashy: read by a worker that died, after two earlier workers died on it as well
    RedisQueue(r, "ghost").ensure_group()
    r.xreadgroup(GROUP, "ghost", {FRAMES: ">"}, count=1)  # the oldest: crashy
    r.hset(ATTEMPTS, crashy, 3)
    # lost: its stored upload is gone, so every attempt fails
    r.delete(f"scrapscan:frame:{lost}:image")
    worker = stack.worker("worker-d", SCRAPSCAN_QUEUE__MAX_ATTEMPTS="3")

    items = {i["frame_id"]: i for i in feed(api, 2, timeout=60)}
    assert items[lost]["status"] == "failed"
    assert "gave up after 3 attempts" in items[lost]["error"]
    assert "stored upload is missing" in items[lost]["error"]
    assert items[crashy]["status"] == "failed"
    assert "stopped each time" in items[crashy]["error"]
    dead = {
        f[b"frame_id"].decode(): {k.decode(): v.decode() for k, v in f.items()}
        for _, f in r.xrange(DEAD)
    }
    assert set(dead) == {lost, crashy}
    assert dead[lost]["attempts"] == "3" and dead[crashy]["attempts"] == "3"
    assert r.xlen(FRAMES) == 0 and r.xpending(FRAMES, GROUP)["pending"] == 0
    assert metric(worker, "scrapscan_worker_dead_letters_total") == 2
    assert metric(worker, "scrapscan_worker_retries_total") == 2
    assert r.xlen(DEAD) == 2


def test_a_worker_is_not_ready_until_its_engine_is_loaded(own_redis):
    import asyncio

    from fastapi.testclient import TestClient

    from service.settings import Settings
    from service.worker import StreamWorker, create_worker_app

    settings = Settings(store="redis", redis_url=own_redis.url)
    app = create_worker_app(settings, "probe")
    client = TestClient(app)  # no lifespan: the engine is not loading
    app.state.worker = StreamWorker(settings, "probe")
    assert_error(client.get("/readyz"), 503, "not_ready")
    assert client.get("/healthz").status_code == 200

    async def loaded() -> httpx.Response:
        await app.state.worker.runner.start()
        try:
            return client.get("/readyz")
        finally:
            await app.state.worker.runner.stop()

    ready = asyncio.run(loaded()).json()
    assert (ready["status"], ready["consumer"], ready["model"]["name"]) == (
        "ready",
        "probe",
        "demo",
    )


def test_a_hung_worker_stops_renewing_and_fails_its_health_check(own_redis):
    from fastapi.testclient import TestClient

    from service.settings import QueueSettings, Settings
    from service.worker import StreamWorker, create_worker_app

    settings = Settings(store="redis", redis_url=own_redis.url, queue=QueueSettings(max_frame_s=60))
    app = create_worker_app(settings, "hung")
    worker = app.state.worker = StreamWorker(settings, "hung")
    client = TestClient(app)
    worker.runner.started = {"1-0": time.monotonic() - 5, "2-0": time.monotonic() - 61}
    assert worker.stuck() == ["2-0"]
    assert_error(client.get("/healthz"), 503, "stuck")
    worker.runner.started.pop("2-0")
    assert client.get("/healthz").status_code == 200


def test_the_worker_refuses_to_start_without_redis(tmp_path, capsys):
    from service.worker import main

    assert main(["--name", "x"]) == 1
    assert "SCRAPSCAN_STORE=redis" in capsys.readouterr().err


def test_several_api_processes_add_up_their_metrics(stack):
    class TwoProcesses(Server):
        def args(self) -> list[str]:
            return [*super().args(), "--processes", "2"]

    api = TwoProcesses(stack.folder / "multi" / "data", stack.env({}))
    api.data_dir.parent.mkdir(parents=True)
    stack.procs.append(api)
    api.start()
    for _ in range(40):  # a new connection each: the kernel spreads them over both
        assert httpx.get(f"{api.url}/healthz").status_code == 200
    text = httpx.get(f"{api.url}/metrics").text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("scrapscan_http_requests_total{") and 'route="/healthz"' in x
    )
    assert float(line.split()[-1]) == 40
