"""The same routes with the Redis store behind them (a real redis-server)."""

import json

import httpx
import pytest
import redis

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
    # the bytes are in the bucket; Redis keeps the records
    fid = first["frame_id"]
    kept = srv.bucket.listed()
    assert f"uploads/{fid[:2]}/{fid}.jpg" in kept
    assert any(k.startswith(f"results/{fid[:2]}/{fid}/") and k.endswith("/mask.png") for k in kept)
    r = redis.Redis.from_url(srv.env["SCRAPSCAN_REDIS_URL"])
    assert r.keys(f"scrapscan:frame:{fid}:*") == []  # no image, mask or overlay in Redis
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


def test_a_bucket_that_cannot_be_used_is_a_503_and_keeps_nothing(redis_server, frame):
    srv = redis_server
    s3 = srv.bucket.s3
    for key in srv.bucket.listed():
        s3.delete_object(Bucket=srv.bucket.bucket, Key=srv.bucket.prefix + key)
    s3.delete_bucket(Bucket=srv.bucket.bucket)  # the bucket is gone under the service
    r = redis.Redis.from_url(srv.env["SCRAPSCAN_REDIS_URL"])
    before = r.scard("scrapscan:open")
    refused = post(srv, jpeg(frame.image), {"truck_id": "TRK-R2"})
    assert_error(refused, 503, "object_store_unavailable")
    assert refused.headers["Retry-After"]
    assert r.scard("scrapscan:open") == before and r.exists("scrapscan:truck:TRK-R2") == 0


def test_serve_and_worker_name_a_bucket_that_is_not_there(monkeypatch, redis_url, s3_url, capsys):
    from service.cli import main as serve
    from service.worker import main as work

    objects = {"bucket": "not-there", "endpoint_url": s3_url, "region": "us-east-1"}
    monkeypatch.setenv("SCRAPSCAN_STORE", "redis")
    monkeypatch.setenv("SCRAPSCAN_REDIS_URL", redis_url)
    monkeypatch.setenv("SCRAPSCAN_OBJECTS", json.dumps(objects))
    assert serve([]) == 1 and work([]) == 1
    err = capsys.readouterr().err
    assert (
        "scrapscan-serve: bucket not-there:" in err and "scrapscan-worker: bucket not-there:" in err
    )
    monkeypatch.setenv("SCRAPSCAN_STORE", "sqlite")
    assert serve([]) == 1
    assert "objects (a bucket) needs store redis" in capsys.readouterr().err
