"""The same routes with the Redis store behind them (a real redis-server)."""

import httpx
import pytest

from training.synth import render_frame

from .test_api import assert_error, jpeg, post

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frame():
    return render_frame(31, 1, 1280, 720)


def test_frames_feed_and_reports_with_the_redis_store(redis_server, frame):
    srv = redis_server
    first = post(srv, jpeg(frame.image), {"truck_id": "TRK-R1"}, wait=True).json()
    assert first["status"] == "done" and first["result"]["image"]["width"] == 1280
    again = post(srv, jpeg(frame.image), {"truck_id": "TRK-R1"}, headers={"Idempotency-Key": "r-1"})
    retry = post(srv, jpeg(frame.image), {"truck_id": "TRK-R1"}, headers={"Idempotency-Key": "r-1"})
    assert again.json()["frame_id"] == retry.json()["frame_id"]
    mask = httpx.get(f"{srv.url}{first['links']['mask']}")
    assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
    seen, cursor = [], ""
    for _ in range(100):
        page = httpx.get(
            f"{srv.url}/v1/results", params={"after": cursor, "limit": 1, "wait": 2}
        ).json()
        seen += [i["frame_id"] for i in page["items"]]
        cursor = page["next"]
        if len(seen) == 2:
            break
    assert seen == [first["frame_id"], again.json()["frame_id"]]
    report = httpx.get(f"{srv.url}/v1/trucks/TRK-R1/report").json()
    assert report["frames"] == 2
    status = httpx.get(f"{srv.url}/v1/status").json()  # the ends counted per ten seconds
    assert status["frames_per_minute"] == 0.4 and status["failed_last_hour"] == 0
    assert status["model"]["name"] == "demo" and status["last_ended"] > 0
    assert_error(httpx.get(f"{srv.url}/v1/results", params={"after": "zz"}), 400, "invalid_cursor")
    assert httpx.get(f"{srv.url}/v1/config").json()["store"] == "redis"
