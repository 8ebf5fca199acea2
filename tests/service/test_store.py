"""One contract, two stores: SQLite (embedded) and Redis (a real redis-server)."""

import dataclasses
import json
import sqlite3
import threading
import time

import pytest

from service.feedback import (
    FrameFeedbackIn,
    TruckDecisionIn,
    frame_feedback,
    latest_labels,
    truck_decision,
)
from service.live import LiveSettings
from service.reports import truck_report
from service.result import ModelRef, load_result, pack_result
from service.settings import CameraBed, UploadKeeping
from service.shadow import ShadowFrame
from service.store import IdempotencyConflict, NewFrame, TruckQuery
from service.store_redis import RedisStore
from service.store_sqlite import SQLiteStore

from .conftest import frame_result


@pytest.fixture(params=["sqlite", "redis", "redis+s3"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "data")
    else:
        url = request.getfixturevalue("redis_url")
        bucket = request.getfixturevalue("bucket") if request.param == "redis+s3" else None
        s = RedisStore(url, result_ttl=3600, report_ttl=7200, objects=bucket)
        s.r.flushdb()
    yield s
    s.close()


def add(store, frame_id, data=b"jpeg-bytes", camera="cam", truck=None, key=None):
    return store.add(NewFrame(frame_id, camera, truck, None, data, ".jpg", key))


def done(store, frame_id, score=0.5, cls="motor", verdict="inspect"):
    store.set_processing(frame_id)
    inst = {"class": cls, "score": score, "area": 100}
    store.complete(frame_id, frame_result([inst], verdict), {"mask.png": b"png"})


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


def test_a_camera_filtered_feed_page_looks_at_a_bounded_stretch(tmp_path, monkeypatch):
    store = SQLiteStore(tmp_path)  # Redis keeps a stream per camera: nothing to look over
    monkeypatch.setattr("service.store_sqlite.FEED_SCAN", 4)
    ids = [f"{k:032x}" for k in range(10)]
    for k, i in enumerate(ids):
        add(store, i, camera="cam-last" if k == 9 else "cam-busy")
        done(store, i)
    # the idle camera's poll looks at 4 entries, then goes on from there
    cursor, polls, found = "", 0, []
    while not found:
        page = store.feed(cursor, 10, camera_id="cam-last")
        found, cursor, polls = page.items, page.next, polls + 1
        assert page.next
    assert polls == 3 and [f.frame_id for _, f in found] == [ids[9]]
    assert store.feed(cursor, 10, camera_id="cam-last").items == []


def test_the_pace_counts_frames_ended_and_failed(store):
    start = time.time()
    for k in range(5):
        add(store, f"{k:032x}")
    for k in range(3):
        done(store, f"{k:032x}")
    fail(store, f"{3:032x}")  # and one still queued
    assert store.pace(start - 1) == (4, 1)
    assert store.pace(time.time() + 60) == (0, 0)


def fail(store, frame_id):
    store.set_processing(frame_id)
    store.fail(frame_id, "broken")


def test_a_kept_truck_report_equals_one_counted_from_its_frames(store):
    ids = [f"{k:032x}" for k in range(6)]
    for k, i in enumerate(ids):
        add(store, i, truck="T-A" if k % 3 else "T-B")
        time.sleep(0.002)
    done(store, ids[1], score=0.9, cls="cable")
    done(store, ids[2], score=0.4)
    fail(store, ids[4])
    done(store, ids[0], score=0.7, cls="spray_can")  # T-B
    for truck, mine in (("T-A", [1, 2, 4, 5]), ("T-B", [0, 3])):
        kept = store.truck_report(truck)
        counted = truck_report(truck, [store.get(ids[k]) for k in mine])
        assert kept == counted
    a = store.truck_report("T-A")
    assert (a.frames, a.frames_failed, a.frames_pending) == (2, 1, 1)
    assert [e.frame_id for e in a.evidence] == [ids[1], ids[2]]  # strongest first
    assert a.classes["cable"].highest_score == 0.9 and a.classes["motor"].frames == 1
    assert store.truck_report("T-none") is None


def test_a_truck_report_counts_every_frame_when_they_come_at_once(store):
    # four cameras at once on one truck: every arrival and end is counted exactly once
    def camera(c):
        for k in range(10):
            frame_id = f"{c:016x}{k:016x}"
            add(store, frame_id, camera=f"cam-{c}", truck="T-RUSH")
            if k % 4 == 3:
                fail(store, frame_id)
            else:
                done(store, frame_id, score=0.5 + 0.01 * k + 0.001 * c)  # no ties

    threads = [threading.Thread(target=camera, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [f"{c:016x}{k:016x}" for c in range(4) for k in range(10)]
    kept = store.truck_report("T-RUSH")
    assert (kept.frames, kept.frames_failed, kept.frames_pending) == (32, 8, 0)
    frames = sorted((store.get(i) for i in ids), key=lambda f: f.received_at)
    assert kept == truck_report("T-RUSH", frames)


def test_the_truck_listing_pages_latest_first(store):
    for k in range(7):
        add(store, f"{k:032x}", truck=f"T-{k}")
        time.sleep(0.002)
    done(store, f"{2:032x}", score=0.99, verdict="reject")
    done(store, f"{5:032x}")  # inspect
    every = store.trucks(TruckQuery())
    assert [t.truck_id for t in every.items] == [f"T-{k}" for k in range(6, -1, -1)]
    assert every.next is None
    seen, cursor = [], ""
    while True:
        page = store.trucks(TruckQuery(after=cursor, limit=3))
        assert len(page.items) <= 3
        seen += [t.truck_id for t in page.items]
        if page.next is None:
            break
        cursor = page.next
    assert seen == [t.truck_id for t in every.items]
    flagged = store.trucks(TruckQuery(verdict="inspect"))
    assert [t.truck_id for t in flagged.items] == ["T-5"]
    one = store.trucks(TruckQuery(verdict="clean", limit=1))
    assert [t.truck_id for t in one.items] == ["T-6"] and one.next is not None
    rest = store.trucks(TruckQuery(verdict="clean", after=one.next))
    assert [t.truck_id for t in rest.items] == ["T-4", "T-3", "T-1", "T-0"]
    now = time.time()
    assert store.trucks(TruckQuery(since=now + 10)).items == []
    assert len(store.trucks(TruckQuery(until=now + 10)).items) == 7
    for bad in ("nope", "1.5~", "~T-1", "1.5~T 1"):
        with pytest.raises(ValueError, match="cursor"):
            store.trucks(TruckQuery(after=bad))


def test_redis_results_expire_and_reports_outlive_them(redis_url):
    s = RedisStore(redis_url, result_ttl=1, report_ttl=60, upload_ttl=0)
    s.r.flushdb()
    add(s, "9" * 32, truck="T-9")
    done(s, "9" * 32, verdict="clean")  # not flagged, not in the sampled share: upload_ttl
    assert 0 < s.r.ttl("scrapscan:frame:" + "9" * 32) <= 1
    assert s.r.ttl("scrapscan:truck:T-9:report") > 1
    assert s.r.exists("scrapscan:frame:" + "9" * 32 + ":image") == 0  # the upload is gone
    ended = s.get("9" * 32)
    time.sleep(1.1)
    assert s.get("9" * 32) is None  # the result has expired; the report has not
    assert s.r.keys("scrapscan:frame:*") == []  # nothing of the frame is left
    kept = s.truck_report("T-9")
    assert kept.frames == 1 and kept.classes["motor"].highest_score == 0.5
    # a truck from before reports were kept is counted from what its frames left then
    s.r.delete("scrapscan:truck:T-9:report")
    s.r.zadd("scrapscan:truck:T-9", {"9" * 32: ended.received_at})
    old = {f.name: getattr(ended, f.name) for f in dataclasses.fields(ended)}
    old["result"] = ended.result.summary().model_dump()
    del old["frame_id"]
    s.r.set("scrapscan:frame:" + "9" * 32 + ":report", json.dumps(old))
    assert s.truck_report("T-9") == kept
    add(s, "8" * 32)
    done(s, "8" * 32)  # the feed drops entries older than the retention as it grows
    assert [f[b"frame_id"] for _, f in s.r.xrange("scrapscan:results")] == [b"8" * 32]
    s.close()
    short = RedisStore(redis_url, result_ttl=1, report_ttl=1)
    add(short, "7" * 32, truck="T-7")
    time.sleep(1.1)
    add(short, "6" * 32, truck="T-6")  # T-7's report has expired: it leaves the truck list
    assert [t.truck_id for t in short.trucks(TruckQuery()).items] == ["T-6"]
    short.close()


def test_sqlite_retention_keeps_reports_longer_than_files(tmp_path):
    s = SQLiteStore(tmp_path)
    add(s, "5" * 32, truck="T-5")
    done(s, "5" * 32)
    add(s, "4" * 32, truck="T-5")  # not ended: never purged
    mask = s.path("5" * 32, "mask.png")
    assert mask.exists() and s.path("5" * 32, "image.jpg").exists()
    # one file per image, 256 folders at most, whatever the number of frames
    assert mask.parent == tmp_path / "files" / "55" and mask.name == "5" * 32 + ".mask.png"
    ended = s.get("5" * 32).completed_at
    assert s.purge(60, 600, now=ended + 30) == 0  # too early for either
    assert s.purge(60, 600, now=ended + 61) == 1
    assert not mask.exists() and s.file_bytes("5" * 32, "mask.png") is None
    assert not s.path("5" * 32, "image.jpg").exists()
    kept = s.get("5" * 32)
    assert kept.status == "done" and kept.result.model_dump()["instances"][0].keys() == {
        "class",
        "score",
        "area",
        "zero_shot",
    }
    assert s.truck_report("T-5").frames == 1
    assert s.purge(60, 600, now=ended + 61) == 0  # done once
    assert s.purge(60, 600, now=ended + 601) == 1
    assert s.get("5" * 32) is None and s.feed("", 10).items == []
    assert s.get("4" * 32).status == "queued" and s.image("4" * 32) == b"jpeg-bytes"
    # the truck's report is counted again from the frame left
    left = s.truck_report("T-5")
    assert (left.frames, left.frames_pending) == (0, 1)
    s.close()


def test_sqlite_purges_in_batches_and_lets_others_in_between(tmp_path):
    s = SQLiteStore(tmp_path)
    ids = [f"{k:032x}" for k in range(25)]
    for i in ids:
        add(s, i, truck="T-P")
        done(s, i)
    held = ids[3]
    judge(s, held, "confirmed", instance=0)
    statements = []
    s._db.set_trace_callback(statements.append)
    ended = max(s.get(i).completed_at for i in ids)
    assert s.purge(60, 600, now=ended + 61, batch=10) == 24
    commits = [q for q in statements if q.startswith("COMMIT")]
    assert len(commits) == 3  # 24 frames' files in batches of 10, a transaction each
    assert [i for i in ids if s.file_bytes(i, "mask.png")] == [held]
    assert s.purge(60, 600, now=ended + 601, batch=10) == 24
    assert [f.frame_id for _, f in s.feed("", 100).items] == [held]
    kept = s.truck_report("T-P")
    assert kept.frames == 1 and kept.evidence[0].frame_id == held
    s.close()


def test_a_frames_summary_is_packed_when_it_ends_and_the_purge_only_moves_it(tmp_path, monkeypatch):
    s = SQLiteStore(tmp_path)
    add(s, "1" * 32, truck="T-S")
    done(s, "1" * 32)
    with s._db:  # the frames table as it was: no summary packed at the end
        s._db.execute("ALTER TABLE frames DROP COLUMN slim")
    s.close()
    s = SQLiteStore(tmp_path)
    add(s, "2" * 32, truck="T-S")
    done(s, "2" * 32)
    full = {f: s.get(f).result for f in ("1" * 32, "2" * 32)}
    assert s._db.execute("SELECT slim FROM frames ORDER BY frame_id").fetchall() == [
        (None,),
        (pack_result(full["2" * 32].summary()),),
    ]
    ended = s.get("2" * 32).completed_at
    loaded = []  # the purge's Python work per frame: only the frame from before has any
    monkeypatch.setattr(
        "service.store_sqlite.load_result", lambda r: loaded.append(r) or load_result(r)
    )
    assert s.purge(60, 600, now=ended + 61) == 2
    assert len(loaded) == 1
    for frame_id, result in full.items():
        assert s.get(frame_id).result == result.summary()
    assert s._db.execute("SELECT COUNT(*) FROM frames WHERE slim IS NOT NULL").fetchone() == (0,)
    s.close()


def test_no_commit_copies_the_wal_under_the_lock_a_thread_of_its_own_does(tmp_path):
    def fill(s, rounds, pause, first=0):
        for r in range(first, first + rounds):
            for k in range(100):
                add(s, f"{r}{k:031x}", truck="T-W")
                done(s, f"{r}{k:031x}")
            time.sleep(pause)

    def wal_pages(folder):
        return (folder / "scrapscan.db-wal").stat().st_size // 4096

    idle = SQLiteStore(tmp_path / "idle", checkpoint_every=3600)  # its thread asleep
    fill(idle, 3, 0)
    other = sqlite3.connect(tmp_path / "idle" / "scrapscan.db")
    _, in_wal, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert in_wal > 3000 and copied == in_wal  # SQLite's own would have begun at 1,000 pages
    other.close()
    idle.close()
    s = SQLiteStore(tmp_path / "live", checkpoint_every=0.05)
    fill(s, 1, 0.3)
    first = wal_pages(tmp_path / "live")
    fill(s, 5, 0.3, first=1)  # each round's commits copied and the WAL begun again from its start
    assert wal_pages(tmp_path / "live") < 1.5 * first < in_wal
    s.close()
    assert not (tmp_path / "live" / "scrapscan.db-wal").exists()
    assert SQLiteStore(tmp_path / "live").truck_report("T-W").frames == 600


def test_a_store_from_before_the_trucks_table_counts_its_trucks_at_start(tmp_path):
    s = SQLiteStore(tmp_path)
    for k in range(3):
        add(s, f"{k:032x}", truck="T-OLD")
    done(s, f"{1:032x}", score=0.95)
    before = s.truck_report("T-OLD")
    with s._db:
        s._db.execute("DROP TABLE trucks")
    s.close()
    again = SQLiteStore(tmp_path)
    assert again.truck_report("T-OLD") == before and before.frames_pending == 2
    again.close()


def test_every_sqlite_query_a_route_makes_has_an_index(tmp_path):
    s = SQLiteStore(tmp_path)
    for k in range(30):
        add(s, f"{k:032x}", camera=f"cam-{k % 3}", truck=f"T-{k % 4}", key=f"key-{k}")
        done(s, f"{k:032x}")
    judge(s, f"{3:032x}", "confirmed", instance=0)
    statements = []
    s._db.set_trace_callback(statements.append)
    add(s, "f" * 32, truck="T-1", key="key-new")
    s.get("f" * 32)
    s.image("f" * 32)
    done(s, "f" * 32)
    s.feed("", 10)
    s.feed("5", 10, camera_id="cam-1")
    s.tail_cursor(5)
    s.truck_report("T-1")
    page = s.trucks(TruckQuery(limit=2))
    s.trucks(TruckQuery(verdict="inspect", after=page.next, limit=2))
    s.backlog()
    s.unfinished()
    s.feedback("frame", f"{3:032x}")
    s.feedback_between(0.0, 1e18)
    s.add_shadow(shadow_frame("f" * 32, "a", agree=True))
    s.shadow_frames(ModelRef(name="test", version="a"))
    s.purge(60, 600)
    s._db.set_trace_callback(None)
    queries = {q for q in statements if q.split()[0] in ("SELECT", "UPDATE", "DELETE")}
    assert len(queries) > 10
    scans = {}
    for q in queries:
        plan = [row[3] for row in s._db.execute(f"EXPLAIN QUERY PLAN {q}")]
        full = [p for p in plan if p.startswith("SCAN") and "USING" not in p]
        # the feed's tail reads the newest entries backwards by their key, LIMIT-bound
        if full and not q.startswith("SELECT seq FROM feed ORDER BY seq DESC LIMIT 1"):
            scans[q] = plan
    assert scans == {}
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
    keep = UploadKeeping(flagged=True, clean_share=0.0)
    s = RedisStore(redis_url, result_ttl=60, report_ttl=120, upload_ttl=30, keep=keep)
    s.r.flushdb()
    for fid, verdict in (("5" * 32, "clean"), ("6" * 32, "clean"), ("7" * 32, "reject")):
        add(s, fid)
        done(s, fid, verdict=verdict)
    assert 0 < s.r.ttl("scrapscan:frame:" + "6" * 32 + ":image") <= 30
    assert 30 < s.r.ttl("scrapscan:frame:" + "7" * 32 + ":image") <= 60  # flagged: kept
    judge(s, "5" * 32, "missed", box=(0, 0, 4, 4))
    frame = "scrapscan:frame:" + "5" * 32
    for key in (frame, f"{frame}:image", f"{frame}:mask.png"):
        assert s.r.ttl(key) == -1, key  # exists, with no expiry
    assert s.r.ttl("scrapscan:frame:" + "6" * 32) > 0
    s.close()


def test_sqlite_keeps_uploads_a_while_and_a_judged_frame_for_good(tmp_path):
    keep = UploadKeeping(flagged=True, clean_share=0.0)
    s = SQLiteStore(tmp_path, keep=keep, upload_ttl=30)
    for fid, verdict in (("5" * 32, "clean"), ("6" * 32, "clean"), ("7" * 32, "reject")):
        add(s, fid)
        done(s, fid, verdict=verdict)
    add(s, "8" * 32)
    s.set_processing("8" * 32)
    s.fail("8" * 32, "corrupt_image: truncated")  # nothing to retrain on: not kept either
    judge(s, "5" * 32, "missed", box=(0, 0, 4, 4))  # judged: kept whole, for good
    ended = max(s.get(f * 32).completed_at for f in "5678")
    assert s.purge(60, 120, now=ended + 29) == 0
    assert s.purge(60, 120, now=ended + 31) == 2  # the clean and the failed frame's uploads
    for fid in ("6" * 32, "8" * 32):
        with pytest.raises(FileNotFoundError):
            s.image(fid)
    assert s.file_bytes("6" * 32, "mask.png") == b"png"  # the result's files stay
    assert s.get("6" * 32).result is not None
    assert s.image("5" * 32) == s.image("7" * 32) == b"jpeg-bytes"
    assert s.purge(60, 120, now=ended + 31) == 0  # done once
    assert s.purge(60, 120, now=ended + 61) == 3  # result_ttl: the others' files go
    assert s.image("5" * 32) == b"jpeg-bytes"  # but not the judged frame's
    with pytest.raises(FileNotFoundError):
        s.image("7" * 32)
    s.close()


def test_sqlite_keeps_a_share_of_clean_uploads_chosen_by_frame_id(tmp_path):
    s = SQLiteStore(tmp_path, keep=UploadKeeping(clean_share=0.5), upload_ttl=10)
    ids = [f"{k:x}" * 32 for k in range(16)]
    for fid in ids:
        add(s, fid)
        done(s, fid, verdict="clean")
    ended = max(s.get(f).completed_at for f in ids)
    assert s.purge(60, 120, now=ended + 11) == 8
    kept = []
    for fid in ids:
        try:
            kept.append(s.image(fid) == b"jpeg-bytes")
        except FileNotFoundError:
            kept.append(False)
    assert kept == [int(f[:8], 16) < 0.5 * 16**8 for f in ids]  # what Redis keeps too
    s.close()


def test_a_store_from_before_the_upload_policy_keeps_its_uploads_with_the_results(tmp_path):
    s = SQLiteStore(tmp_path)
    add(s, "1" * 32)
    done(s, "1" * 32, verdict="clean")
    with s._db:  # the frames table as it was: no upload_until column
        s._db.execute("DROP INDEX frames_upload_due")
        s._db.execute("ALTER TABLE frames DROP COLUMN upload_until")
    s.close()
    again = SQLiteStore(tmp_path, upload_ttl=0)
    ended = again.get("1" * 32).completed_at
    assert again.purge(60, 120, now=ended + 1) == 0 and again.image("1" * 32) == b"jpeg-bytes"
    add(again, "2" * 32)
    done(again, "2" * 32, verdict="clean")
    assert again.purge(60, 120, now=again.get("2" * 32).completed_at + 1) == 1
    again.close()


def test_results_are_kept_packed_and_plain_ones_still_read(tmp_path):
    result = frame_result([{"class": "cable", "score": 0.7, "area": 300}])
    packed = pack_result(result)
    assert len(packed) < len(result.model_dump_json())
    assert load_result(packed) == load_result(result.model_dump_json()) == result
    s = SQLiteStore(tmp_path)
    add(s, "1" * 32)
    done(s, "1" * 32)
    (kept,) = s._db.execute("SELECT result FROM frames").fetchone()
    assert kept == pack_result(s.get("1" * 32).result)
    with s._db:  # a row from before results were packed
        s._db.execute("UPDATE frames SET result = ?", (result.model_dump_json(),))
    assert s.get("1" * 32).result == result
    s.close()


def test_a_data_folder_from_before_keeps_its_frame_folders(tmp_path):
    s = SQLiteStore(tmp_path)
    add(s, "2" * 32)
    done(s, "2" * 32)
    s.close()
    # as the store kept files before: frames/<frame_id>/<name>
    old = tmp_path / "frames" / ("2" * 32)
    old.mkdir(parents=True)
    for name in ("image.jpg", "mask.png"):
        s_path = tmp_path / "files" / "22" / f"{'2' * 32}.{name}"
        (old / name).write_bytes(s_path.read_bytes())
        s_path.unlink()
    again = SQLiteStore(tmp_path)
    assert again.image("2" * 32) == b"jpeg-bytes" and again.file_bytes("2" * 32, "mask.png")
    ended = again.get("2" * 32).completed_at
    assert again.purge(60, 600, now=ended + 61) == 1
    assert not old.exists() and again.file_bytes("2" * 32, "mask.png") is None
    again.close()


def reopened(store, tmp_path, request):
    """Another store on the same data: the embedded store after a restart, another process."""
    if isinstance(store, SQLiteStore):
        store.close()
        return SQLiteStore(tmp_path / "data")
    return RedisStore(request.getfixturevalue("redis_url"))


def test_live_settings_are_versioned_with_what_they_replaced_and_survive_a_restart(
    store, tmp_path, request
):
    assert store.live_settings() is None and store.settings_log() == []
    first = store.save_settings(LiveSettings(class_thresholds={"cable": 0.97}), "admin")
    second = store.save_settings(
        LiveSettings(reject_score=0.9, cameras={"crane-2": CameraBed(bed="full")}), "ops"
    )
    assert (first.version, second.version) == (1, 2)
    assert first.previous == LiveSettings() and second.previous == first.settings
    again = reopened(store, tmp_path, request)
    try:
        assert again.live_settings() == second
        assert [c.version for c in again.settings_log()] == [1, 2]
        assert again.settings_log(limit=1) == [second]
        third = again.save_settings(LiveSettings(), "admin")
        assert third.version == 3 and third.previous == second.settings
    finally:
        again.close()


def shadow_frame(frame_id: str, version: str, agree: bool) -> ShadowFrame:
    served = frame_result([{"class": "motor", "score": 0.9, "area": 64}])
    return ShadowFrame(
        frame_id=frame_id,
        camera_id="cam",
        at=time.time(),
        served_model=served.model,
        candidate_model=ModelRef(name="test", version=version),
        served_verdict="inspect",
        candidate_verdict="inspect" if agree else "clean",
        matched=[],
        added=[],
        dropped=[],
    )


def test_shadow_frames_are_kept_per_candidate_up_to_a_bound_and_survive_a_restart(
    store, tmp_path, request, monkeypatch
):
    for module in ("service.store_sqlite", "service.store_redis"):
        monkeypatch.setattr(f"{module}.SHADOW_KEEP", 5)
    a, b = ModelRef(name="test", version="a"), ModelRef(name="test", version="b")
    assert store.shadow_frames(a) == []
    for k in range(7):
        store.add_shadow(shadow_frame(f"f{k}", "a", agree=k % 2 == 0))
    other = shadow_frame("g0", "b", agree=True)
    store.add_shadow(other)
    assert [f.frame_id for f in store.shadow_frames(a)] == ["f2", "f3", "f4", "f5", "f6"]
    assert [f.frame_id for f in store.shadow_frames(a, limit=2)] == ["f5", "f6"]
    again = reopened(store, tmp_path, request)
    try:
        assert again.shadow_frames(b) == [other]
        assert [f.candidate_verdict for f in again.shadow_frames(a)] == [
            "inspect",
            "clean",
            "inspect",
            "clean",
            "inspect",
        ]
    finally:
        again.close()
