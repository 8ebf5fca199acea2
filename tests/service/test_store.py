"""One contract, two stores: SQLite (embedded) and Redis (a real redis-server)."""

import time

import pytest

from service.feedback import (
    FrameFeedbackIn,
    TruckDecisionIn,
    frame_feedback,
    latest_labels,
    truck_decision,
)
from service.reports import truck_report
from service.store import IdempotencyConflict, NewFrame
from service.store_redis import RedisStore
from service.store_sqlite import SQLiteStore

from .conftest import frame_result


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "data")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, result_ttl=3600, report_ttl=7200)
        s.r.flushdb()
    yield s
    s.close()


def add(store, frame_id, data=b"jpeg-bytes", camera="cam", truck=None, key=None):
    return store.add(NewFrame(frame_id, camera, truck, None, data, ".jpg", key))


def done(store, frame_id, score=0.5, cls="motor"):
    store.set_processing(frame_id)
    inst = {"class": cls, "score": score, "area": 100}
    store.complete(frame_id, frame_result([inst]), {"mask.png": b"png"})


def test_a_frame_goes_from_queued_to_done(store):
    assert add(store, "f" * 32) == ("f" * 32, True)
    r = store.get("f" * 32)
    assert (r.status, r.camera_id, r.truck_id, r.result) == ("queued", "cam", None, None)
    assert store.image("f" * 32) == b"jpeg-bytes"
    assert store.unfinished() == ["f" * 32]
    store.set_processing("f" * 32)
    assert store.get("f" * 32).status == "processing"
    done(store, "f" * 32)
    r = store.get("f" * 32)
    assert r.status == "done" and r.result.verdict == "inspect" and r.completed_at
    assert store.file_bytes("f" * 32, "mask.png") == b"png"
    assert store.file_bytes("f" * 32, "overlay.jpg") is None
    assert store.unfinished() == [] and store.get("0" * 32) is None


def test_failures_keep_their_reason(store):
    add(store, "a" * 32)
    store.fail("a" * 32, "corrupt_image: truncated")
    r = store.get("a" * 32)
    assert r.status == "failed" and r.error == "corrupt_image: truncated"


def test_idempotency_keys(store):
    assert add(store, "1" * 32, b"one", key="k1") == ("1" * 32, True)
    assert add(store, "2" * 32, b"one", key="k1") == ("1" * 32, False)
    with pytest.raises(IdempotencyConflict):
        add(store, "3" * 32, b"two", key="k1")
    assert store.get("3" * 32) is None


def test_a_frame_ended_twice_is_stored_and_fed_once(store):
    add(store, "b" * 32)
    done(store, "b" * 32, score=0.4)
    done(store, "b" * 32, score=0.9)  # a second worker after a takeover
    store.fail("b" * 32, "late failure")
    r = store.get("b" * 32)
    assert r.status == "done" and r.result.instances[0].score == 0.4
    assert [f.frame_id for _, f in store.feed("", 100).items] == ["b" * 32]


def test_the_feed_pages_in_completion_order_exactly_once(store):
    ids = [f"{i:032x}" for i in range(7)]
    for i, fid in enumerate(ids):
        add(store, fid, camera="even" if i % 2 == 0 else "odd")
    order = [ids[3], ids[0], ids[6], ids[1], ids[5], ids[2], ids[4]]
    seen, cursor = [], ""
    for k, fid in enumerate(order):
        done(store, fid) if k % 3 else store.fail(fid, "x")
        if k % 2:  # page while frames keep ending
            page = store.feed(cursor, 2)
            seen += [f.frame_id for _, f in page.items]
            cursor = page.next
    while (page := store.feed(cursor, 2)).items:
        seen += [f.frame_id for _, f in page.items]
        cursor = page.next
    assert seen == order
    odd = store.feed("", 10, camera_id="odd")
    assert [f.frame_id for _, f in odd.items] == [ids[3], ids[1], ids[5]]
    assert store.feed(cursor, 10).items == [] and store.feed(cursor, 10).next == cursor
    # paging one camera moves over the other camera's frames for good
    first = store.feed("", 1, camera_id="even")
    assert [f.frame_id for _, f in first.items] == [ids[0]]
    assert store.feed(odd.next, 10, camera_id="odd").items == []
    with pytest.raises(ValueError, match="not a cursor"):
        store.feed("not-a-cursor", 10)
    # the last few, for a dashboard that opens on a long day
    assert [f.frame_id for _, f in store.feed(store.tail_cursor(3), 10).items] == order[-3:]
    assert [f.frame_id for _, f in store.feed(store.tail_cursor(7), 10).items] == order
    assert store.tail_cursor(99) == "" and store.tail_cursor(0) == cursor


def test_trucks_frames_in_one_go_equal_one_by_one(store):
    add(store, "d" * 32, truck="T-A")
    add(store, "e" * 32, truck="T-B")
    add(store, "f" * 32, truck="T-A")
    every = store.trucks_frames(["T-A", "T-B", "T-none"])
    for t in ("T-A", "T-B", "T-none"):
        assert [r.frame_id for r in every[t]] == [r.frame_id for r in store.truck(t)]
    assert [r.frame_id for r in every["T-A"]] == ["d" * 32, "f" * 32]
    assert store.trucks_frames([]) == {}


def test_trucks_and_their_frames(store):
    add(store, "c" * 32, truck="T-1")
    time.sleep(0.01)
    add(store, "d" * 32, truck="T-1")
    done(store, "c" * 32)
    time.sleep(0.01)
    add(store, "e" * 32, truck="T-2")
    assert [f.frame_id for f in store.truck("T-1")] == ["c" * 32, "d" * 32]
    assert store.truck("T-3") == []
    assert store.trucks() == ["T-2", "T-1"]
    now = time.time()
    assert store.trucks(since=now + 10) == [] and store.trucks(until=now + 10) == ["T-2", "T-1"]


def test_redis_results_expire_and_reports_outlive_them(redis_url):
    s = RedisStore(redis_url, result_ttl=1, report_ttl=60, upload_ttl=0)
    s.r.flushdb()
    add(s, "9" * 32, truck="T-9")
    done(s, "9" * 32)
    assert 0 < s.r.ttl("scrapscan:frame:" + "9" * 32) <= 1
    assert s.r.ttl("scrapscan:truck:T-9") > 1
    assert s.r.exists("scrapscan:frame:" + "9" * 32 + ":image") == 0  # the upload is gone
    time.sleep(1.1)
    assert s.get("9" * 32) is None  # the result has expired; the report has not
    (kept,) = s.truck("T-9")
    assert kept.frame_id == "9" * 32 and kept.status == "done"
    assert kept.result.model_dump()["instances"][0].keys() == {"class", "score", "area"}
    assert truck_report("T-9", s.truck("T-9")).frames == 1
    add(s, "8" * 32)
    done(s, "8" * 32)  # the feed drops entries older than the retention as it grows
    assert [f[b"frame_id"] for _, f in s.r.xrange("scrapscan:results")] == [b"8" * 32]
    s.close()
    short = RedisStore(redis_url, result_ttl=1, report_ttl=1)
    add(short, "7" * 32, truck="T-7")
    time.sleep(1.1)
    add(short, "6" * 32, truck="T-6")  # T-7's list has expired: it leaves the truck list
    assert short.trucks() == ["T-6"]
    short.close()


def test_sqlite_retention_keeps_reports_longer_than_files(tmp_path):
    s = SQLiteStore(tmp_path)
    add(s, "5" * 32, truck="T-5")
    done(s, "5" * 32)
    add(s, "4" * 32, truck="T-5")  # not ended: never purged
    folder = s.folder("5" * 32)
    assert (folder / "mask.png").exists()
    ended = s.get("5" * 32).completed_at
    assert s.purge(60, 600, now=ended + 30) == 0  # too early for either
    assert s.purge(60, 600, now=ended + 61) == 1
    assert not folder.exists() and s.file_bytes("5" * 32, "mask.png") is None
    kept = s.get("5" * 32)
    assert kept.status == "done" and kept.result.model_dump()["instances"][0].keys() == {
        "class",
        "score",
        "area",
    }
    assert truck_report("T-5", s.truck("T-5")).frames == 1
    assert s.purge(60, 600, now=ended + 61) == 0  # done once
    assert s.purge(60, 600, now=ended + 601) == 1
    assert s.get("5" * 32) is None and s.feed("", 10).items == []
    assert s.get("4" * 32).status == "queued" and s.folder("4" * 32).exists()
    s.close()


def judge(store, frame_id, label, instance=None, **given):
    result = store.get(frame_id).result
    item = frame_feedback(
        FrameFeedbackIn(label=label, instance=instance, **given),
        frame_id,
        result,
        ("motor", "cable", "spray_can"),
        "operator",
    )
    store.add_feedback(item)
    return item


def test_feedback_is_kept_per_frame_and_truck_and_listed_by_time(store):
    add(store, "a" * 32, truck="T-F")
    add(store, "b" * 32, truck="T-F")
    done(store, "a" * 32)
    done(store, "b" * 32)
    start = time.time()
    first = judge(store, "a" * 32, "false_alarm", 0)
    missed = judge(store, "b" * 32, "missed", box=(1, 2, 10, 10), class_name="cable")
    time.sleep(0.01)
    changed = judge(store, "a" * 32, "other_class", 0, class_name="cable")
    decision = truck_decision(TruckDecisionIn(decision="rejected", comment="motor"), "T-F", "admin")
    store.add_feedback(decision)
    assert store.feedback("frame", "a" * 32) == [first, changed]
    assert store.feedback("frame", "b" * 32) == [missed]
    assert store.feedback("truck", "T-F") == [decision]
    assert store.feedback("frame", "c" * 32) == [] and store.feedback("truck", "T-G") == []
    assert latest_labels([changed, first]) == {0: changed}  # the latest judgement counts
    assert store.feedback_between() == [first, missed, changed, decision]
    assert store.feedback_between(since=changed.at) == [changed, decision]
    assert store.feedback_between(since=start - 1, until=missed.at) == [first]
    assert store.feedback_between(since=time.time() + 1) == []


def test_sqlite_retention_holds_a_judged_frame_whole(tmp_path):
    s = SQLiteStore(tmp_path)
    add(s, "5" * 32)
    add(s, "6" * 32)
    done(s, "5" * 32)
    done(s, "6" * 32)
    judge(s, "5" * 32, "confirmed", 0)
    ended = s.get("6" * 32).completed_at
    assert s.purge(60, 600, now=ended + 61) == 1  # only the frame without feedback
    assert s.image("5" * 32) == b"jpeg-bytes" and s.file_bytes("5" * 32, "mask.png") == b"png"
    assert s.purge(60, 600, now=ended + 601) == 1
    assert s.get("6" * 32) is None and s.get("5" * 32).result.instances[0].bbox == (0, 0, 8, 8)
    s.close()


def test_redis_keeps_uploads_a_while_and_a_judged_frame_for_good(redis_url):
    s = RedisStore(redis_url, result_ttl=60, report_ttl=120, upload_ttl=30)
    s.r.flushdb()
    for fid in ("5" * 32, "6" * 32):
        add(s, fid)
        done(s, fid)
    assert 0 < s.r.ttl("scrapscan:frame:" + "6" * 32 + ":image") <= 30
    judge(s, "5" * 32, "missed", box=(0, 0, 4, 4))
    frame = "scrapscan:frame:" + "5" * 32
    for key in (frame, f"{frame}:image", f"{frame}:mask.png", f"{frame}:report"):
        assert s.r.ttl(key) == -1, key  # exists, with no expiry
    assert s.r.ttl("scrapscan:frame:" + "6" * 32) > 0
    s.close()
