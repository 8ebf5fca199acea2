"""Images, masks and overlays in an S3 bucket beside Redis (moto's S3 server stands in
for MinIO: both speak the S3 protocol over HTTP; no MinIO binary can be installed here)."""

import uuid

import pytest

from service.objects import ObjectStore, ObjectStoreError
from service.settings import UploadKeeping
from service.store import NewFrame
from service.store_redis import KEEP, RedisStore

from .conftest import frame_result
from .test_store import judge


def store(redis_url, bucket, keep=KEEP, result_ttl=3600, upload_ttl=3600):
    s = RedisStore(redis_url, result_ttl, 7200, upload_ttl, objects=bucket, keep=keep)
    s.r.flushdb()
    return s


def add(s, frame_id, data=b"jpeg-bytes", key=None):
    return s.add(NewFrame(frame_id, "cam", "T-1", None, data, ".jpg", key))


def end(s, frame_id, verdict="inspect", files=None):
    result = frame_result([{"class": "motor", "score": 0.9, "area": 100}], verdict)
    files = files or {"mask.png": b"png", "overlay.jpg": b"jpg", "maps.png": b"maps"}
    return s.complete(frame_id, result, files)


def test_with_a_bucket_redis_keeps_records_and_the_bucket_the_bytes(redis_url, bucket):
    s = store(redis_url, bucket)
    fid = "ab" + "1" * 30
    assert add(s, fid, b"\xff" * 50_000) == (fid, True)
    assert bucket.listed() == [f"uploads/ab/{fid}.jpg"]
    assert s.image(fid) == b"\xff" * 50_000
    assert end(s, fid)
    assert s.file_bytes(fid, "mask.png") == b"png" and s.file_bytes(fid, "overlay.jpg") == b"jpg"
    assert s.file_bytes(fid, "maps.png") == b"maps" and s.file_bytes(fid, "x.png") is None
    (token,) = {k.split("/")[3] for k in bucket.listed("results/")}
    assert sorted(bucket.listed("results/")) == [
        f"results/ab/{fid}/{token}/{n}" for n in ("maps.png", "mask.png", "overlay.jpg")
    ]
    byte_keys = [k for k in s.r.keys("scrapscan:frame:*") if k.endswith((b":image", b".png"))]
    assert byte_keys == []
    assert s.r.memory_usage(f"scrapscan:frame:{fid}") < 2048  # the record, not the 50 kB
    s.close()


def test_a_retried_upload_and_a_second_end_leave_no_stray_object(redis_url, bucket):
    s = store(redis_url, bucket)
    first, again = "1" * 32, "2" * 32
    assert add(s, first, key="k-1") == (first, True)
    assert add(s, again, key="k-1") == (first, False)  # the retry's own upload is deleted
    assert bucket.listed("uploads/") == [f"uploads/11/{first}.jpg"]
    assert end(s, first, files={"mask.png": b"first"})
    # a worker that took the frame over ends it too: its files go, the first's stay
    assert not end(s, first, files={"mask.png": b"second"})
    assert s.file_bytes(first, "mask.png") == b"first"
    assert len(bucket.listed("results/")) == 1
    s.close()


def test_the_purge_follows_the_retention_and_the_upload_policy(redis_url, bucket):
    keep = UploadKeeping(flagged=True, clean_share=0.0)
    s = store(redis_url, bucket, keep=keep, result_ttl=60, upload_ttl=10)
    clean, flagged, judged = "c" * 32, "f" * 32, "d" * 32
    for fid, verdict in ((clean, "clean"), (flagged, "reject"), (judged, "clean")):
        add(s, fid)
        end(s, fid, verdict)
    judge(s, judged, "missed", box=(0, 0, 4, 4))  # a judged frame is kept whole, for good
    now = s.get(clean).completed_at
    assert s.purge_objects(now=now + 5) == 0
    assert s.purge_objects(now=now + 11) == 1  # the clean frame's upload, after upload_ttl
    assert s.image(flagged) == b"jpeg-bytes"
    with pytest.raises(KeyError):
        s.image(clean)
    assert s.file_bytes(clean, "mask.png") == b"png"  # results stay result_ttl
    assert s.purge_objects(now=now + 61) == 7  # the flagged upload, both frames' 3 files
    assert sorted(k.split("/")[-1] for k in bucket.listed()) == [
        f"{judged}.jpg",
        "maps.png",
        "mask.png",
        "overlay.jpg",
    ]
    assert s.purge_objects(now=now + 10**6) == 0
    s.close()


def test_a_share_of_clean_frames_keeps_its_upload_chosen_by_frame_id(redis_url, bucket):
    s = store(redis_url, bucket, keep=UploadKeeping(clean_share=0.5), upload_ttl=10)
    ids = [uuid.UUID(int=i * 2**124 + 7).hex for i in range(16)]  # first digit 0 .. f
    for fid in ids:
        add(s, fid)
        end(s, fid, "clean")
    s.purge_objects(now=s.get(ids[-1]).completed_at + 11)
    kept = {k.split("/")[-1][:32] for k in bucket.listed("uploads/")}
    assert kept == set(ids[:8])  # ids below 8000...: half of the hex range
    s.close()


def test_a_bucket_that_is_not_there_is_named(s3_url):
    with pytest.raises(ObjectStoreError, match="bucket no-such-bucket"):
        ObjectStore("no-such-bucket", endpoint_url=s3_url, region="us-east-1").check()


def test_an_unreachable_object_store_fails_the_upload_and_keeps_no_record(redis_url):
    away = ObjectStore("b", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    s = store(redis_url, away)
    with pytest.raises(ObjectStoreError, match="bucket b"):
        add(s, "3" * 32)
    assert s.get("3" * 32) is None and s.backlog() == 0
    s.close()
