"""scrapscan-bench store: a store filled through its own API, every route's store work timed.

The store is filled as the service fills it (add, set_processing, complete), with eight
cameras, trucks of TRUCK_FRAMES frames and one truck of --big-truck frames, results with
up to three instances and placeholder bytes for the upload and the result files (this
measures the records; the images' own cost is their bytes). Then, each call repeated:

- feed: the first page, a page deep in the feed, and a camera-filtered page for a
  camera with no frame, from the start (the dashboard's poll of an idle camera);
- trucks: the listing's first page (the last day), the same with a verdict, and the
  report of the big truck;
- a frame's record, and the store work of one POST (add) and of one frame's end;
- the retention: a purge at a time when the first tenth of the frames have outlived
  result_ttl (SQLite: the store's purge; Redis with a bucket: the deletion of the objects
  due, Redis expires the records itself), timed while another thread reads the feed and
  adds frames; the same thread as long without a purge is the baseline. What the SQLite
  purge can hold the service up by is its time holding the store's lock: each hold of
  the purge and each wait of the other thread for the lock are timed apart from the
  calls, whose own time also holds the machine's pauses;
- bytes per stored frame: the database file with its WAL copied in (SQLite) or Redis'
  used_memory growth.

With --s3-url (store redis) the uploads and files go to a new bucket on that S3 server, as
the scaled-out shape deploys it, and the Redis figures are those of records and queues
(plus the list of objects due for deletion).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.classes import ANOMALY_CLASSES
from service.queue import FRAMES
from service.result import FrameResult, Instance
from service.runner import settled_heap
from service.settings import UploadKeeping
from service.store import NewFrame, Store, TruckQuery
from service.store_redis import OBJECTS, RedisStore

CAMERAS = 8
TRUCK_FRAMES = 40
"""Frames per ordinary truck (a truck under the crane for about five seconds a camera)."""
IMAGE = b"\xff\xd8" + bytes(1022)
BED = [(400, 300), (3400, 300), (3400, 1900), (400, 1900)]
FILES = {"mask.png": bytes(100), "overlay.jpg": bytes(200), "maps.png": bytes(100)}
KEEP_ALL = UploadKeeping(clean_share=1.0)
"""Every upload kept with its result: the purge timed is result_ttl's, files and all."""


def add_parser(sub: Any) -> None:
    """The `store` subcommand's arguments."""
    s = sub.add_parser("store", help="a store filled to N frames: every route's store work")
    s.add_argument("--store", choices=("sqlite", "redis"), required=True)
    s.add_argument("--frames", type=int, required=True, help="frames to store first")
    s.add_argument("--big-truck", type=int, default=2000, help="frames of the largest truck")
    s.add_argument(
        "--repeat", type=int, default=20, help="calls per timed operation after its first (20)"
    )
    s.add_argument("--dir", type=Path, help="SQLite: the data folder (default: a temporary one)")
    s.add_argument(
        "--redis-url", help="Redis: an empty database the bench may fill and flush (required)"
    )
    s.add_argument(
        "--s3-url",
        help="Redis: an S3 server (MinIO's URL) on which the bench makes a bucket for the "
        "images (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
    )


def _result(k: int) -> FrameResult:
    """A result as the pipeline makes it: every third frame clean, the others 1 to 3 finds."""
    n = 0 if k % 3 == 0 else 1 + k % 3
    instances = [
        Instance(
            class_name=ANOMALY_CLASSES[(k + j) % len(ANOMALY_CLASSES)],
            score=0.5 + 0.1 * j,
            area=2000 + 10 * j,
            class_scores=dict.fromkeys(ANOMALY_CLASSES, 0.3),
            bbox=(100 * j, 200, 60, 40),
            polygon=[(100.0 * j + x, 200.0 + (x * 7) % 40) for x in range(0, 60, 2)],
        )
        for j in range(n)
    ]
    return FrameResult.model_validate(
        {
            "model": {"name": "bench", "version": "1"},
            "image": {"width": 3840, "height": 2160},
            "bed": {"strategy": "learned", "polygon": BED},
            "verdict": "clean" if n == 0 else ("reject" if k % 17 == 0 else "inspect"),
            "scores": {"anomaly": 0.5 + 0.1 * n, **dict.fromkeys(ANOMALY_CLASSES, 0.2)},
            "instances": instances,
            "thresholds": {
                "pixel": 0.85,
                "classes": [0.85, 0.9, 0.87],
                "min_area_px": 1617,
                "max_bed_fraction": 0.5,
                "min_score": 0.9,
                "reject_score": 0.98,
            },
            "tiles": 12,
            "timings_ms": {"decode": 20.0, "infer": 500.0},
        }
    )


def _frame(store: Store, k: int, truck: str) -> str:
    frame_id = f"{k:032x}"[::-1]  # spread over the 256 file folders, as uuid4 ids are
    store.add(NewFrame(frame_id, f"cam-{k % CAMERAS}", truck, None, IMAGE, ".jpg"))
    store.set_processing(frame_id)
    store.complete(frame_id, _result(k), FILES)
    return frame_id


def _timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """The first call (its pages maybe not yet in memory) apart, then `repeat` more."""
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    first, times = times[0], times[1:]
    return {
        "first_ms": round(first, 3),
        "p50_ms": round(statistics.median(times), 3),
        "p95_ms": round(float(np.percentile(times, 95)), 3),
    }


def _open(args: argparse.Namespace, folder: Path) -> tuple[Store, Callable[[], int]]:
    """The store, and how many bytes it holds now."""
    if args.store == "sqlite":
        from service.store_sqlite import SQLiteStore

        sqlite = SQLiteStore(folder, keep=KEEP_ALL)

        def disk() -> int:
            # the database with its WAL copied in: the WAL is reused, at most WAL_PAGES
            # pages (4 KiB) whatever the number of frames
            with contextlib.closing(sqlite3.connect(folder / "scrapscan.db")) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return (folder / "scrapscan.db").stat().st_size

        return sqlite, disk
    from service.store_redis import RedisStore

    bucket = None
    if args.s3_url:
        import uuid

        from service.objects import ObjectStore

        bucket = ObjectStore(f"scrapscan-bench-{uuid.uuid4().hex[:8]}", endpoint_url=args.s3_url)
        bucket.s3.create_bucket(Bucket=bucket.bucket)
    redis_store = RedisStore(args.redis_url, 7 * 86400, 90 * 86400, objects=bucket, keep=KEEP_ALL)
    redis_store.r.flushdb()
    return redis_store, lambda: int(redis_store.r.info("memory")["used_memory"])


def bench_store(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the store, time each route's store calls; the figures as a dict."""
    folder = args.dir or Path(tempfile.mkdtemp(prefix="scrapscan-store-"))
    store, size = _open(args, folder)
    try:
        with settled_heap():  # as the service's processes, once started
            return _measure(args, store, size)
    finally:
        store.close()
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


def _measure(args: argparse.Namespace, store: Store, size: Callable[[], int]) -> dict[str, Any]:
    empty = size()
    start = time.perf_counter()
    big = min(args.big_truck, args.frames)
    ids = []
    for k in range(args.frames):
        truck = "TRK-BIG" if k < big else f"TRK-{k // TRUCK_FRAMES:07d}"
        ids.append(_frame(store, k, truck))
    fill_s = time.perf_counter() - start
    if isinstance(store, RedisStore):  # every frame has ended: workers have acked and
        store.r.delete(FRAMES)  # deleted their entries of the frame stream (service/queue.py)
    per_frame = (size() - empty) / args.frames
    deep = store.tail_cursor(args.frames // 2)
    quiet = "cam-quiet"
    r = args.repeat
    extra = iter(range(args.frames, args.frames + 10 * r))
    routes = {
        "feed, first page": _timed(lambda: store.feed("", 100), r),
        "feed, a page half-way back": _timed(lambda: store.feed(deep, 100), r),
        "feed of a camera with no frame, from the start": _timed(
            lambda: store.feed("", 100, camera_id=quiet), r
        ),
        "truck listing, first page": _timed(lambda: store.trucks(TruckQuery(limit=100)), r),
        "truck listing, reject only": _timed(
            lambda: store.trucks(TruckQuery(verdict="reject", limit=100)), r
        ),
        f"truck report, {big} frames": _timed(lambda: store.truck_report("TRK-BIG"), r),
        "a frame's record": _timed(lambda: store.get(ids[len(ids) // 2]), r),
        "one frame in and out (add, processing, complete)": _timed(
            lambda: _frame(store, next(extra), "TRK-NEW"), r
        ),
    }
    purge = _purge(store, ids) if args.store == "sqlite" or args.s3_url else None
    keys = _redis_keys(store, ids) if args.store == "redis" else None
    return {
        "store": args.store + (" with a bucket" if args.s3_url else ""),
        "frames": args.frames,
        "fill_s": round(fill_s, 1),
        "bytes_per_frame": round(per_frame),
        "routes": routes,
        "purge": purge,
        "redis_bytes_by_key": keys,
    }


def _purge(store: Any, ids: list[str]) -> dict[str, Any]:
    """A tenth of the frames' files purged while another thread reads the feed and adds.

    SQLite: the retention's purge (result_ttl's part), timed also by its holds of the
    store's lock. Redis with a bucket: the deletion of the objects due (Redis expires the
    records itself). The same thread runs as long again after the purge: its calls then
    are the baseline that the purge's cost to the service is read against.
    """
    # every frame ended after the one a tenth of the way in is younger than the cut-off
    tenth = store.get(ids[len(ids) // 10]).completed_at
    if isinstance(store, RedisStore):
        # objects due at the cut-off are deleted; the SQLite purge's cut-off is strict
        work = functools.partial(store.purge_objects, now=tenth + store.result_ttl - 1e-3)
    else:  # result_ttl an hour: the purge's own cut-off is then the tenth's end
        work = functools.partial(store.purge, 3600.0, 90 * 86400.0, now=tenth + 3600.0)
    extra = iter(range(10 * len(ids), 20 * len(ids)))
    calls: dict[str, Callable[[], Any]] = {
        "feed": lambda: store.feed("", 100),
        "frame": lambda: _frame(store, next(extra), "TRK-DURING"),
    }

    def service(stop: threading.Event, times: dict[str, list[float]]) -> None:
        while not stop.is_set():
            for name, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)

    def beside(work: Callable[[], Any]) -> tuple[Any, float, dict[str, list[float]]]:
        stop, times = threading.Event(), {name: list[float]() for name in calls}
        other = threading.Thread(target=service, args=(stop, times), name="service")
        other.start()
        start = time.perf_counter()
        out = work()
        seconds = time.perf_counter() - start
        stop.set()
        other.join()
        return out, seconds, times

    lock = getattr(store, "_lock", None)
    watched = None
    if lock is not None:
        store._lock = watched = _WatchedLock(lock)
    try:
        changed, seconds, during = beside(work)
    finally:
        if lock is not None:
            store._lock = lock
    _, _, alone = beside(lambda: time.sleep(seconds))

    def figures(times: list[float]) -> dict[str, float | None]:
        return {
            "calls": len(times),
            "p99_ms": round(float(np.percentile(times, 99)), 2) if times else None,
            "max_ms": round(max(times), 2) if times else None,
        }

    return {
        "purged": changed,
        "what": "objects deleted" if watched is None else "frames' files",
        "seconds": round(seconds, 2),
        "during": figures(during["feed"] + during["frame"]),
        "without": figures(alone["feed"] + alone["frame"]),
        "feed_during": figures(during["feed"]),
        "feed_without": figures(alone["feed"]),
        "purge_lock_holds": None
        if watched is None
        else figures(watched.held[threading.current_thread().name]),
        "service_lock_waits": None if watched is None else figures(watched.waited["service"]),
    }


class _WatchedLock:
    """A store's lock, timing each taker's wait for it and hold of it, by thread name."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._since = 0.0  # when the holder took it: one holder at a time
        self.waited: dict[str, list[float]] = collections.defaultdict(list)
        self.held: dict[str, list[float]] = collections.defaultdict(list)

    def __enter__(self) -> None:
        start = time.perf_counter()
        self._lock.acquire()
        self._since = time.perf_counter()
        self.waited[threading.current_thread().name].append((self._since - start) * 1000)

    def __exit__(self, *_: object) -> None:
        held = (time.perf_counter() - self._since) * 1000
        self.held[threading.current_thread().name].append(held)
        self._lock.release()


def _redis_keys(store: Any, ids: list[str]) -> dict[str, int]:
    """Redis: mean MEMORY USAGE per frame of each of a frame's keys, over 200 frames."""
    sample = ids[:: max(1, len(ids) // 200)][:200]
    names = ("", ":image", ":mask.png", ":overlay.jpg", ":maps.png", ":report")
    totals = dict.fromkeys(names, 0)
    for frame_id in sample:
        for name in names:
            totals[name] += int(
                store.r.memory_usage(f"scrapscan:frame:{frame_id}{name}", samples=0) or 0
            )
    out = {f"frame:<id>{k}": round(v / len(sample)) for k, v in totals.items()}
    if store.objects is not None:
        out["objects (per frame)"] = round(int(store.r.memory_usage(OBJECTS) or 0) / len(ids))
    return out


def store_table(r: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    lines = [
        f"{r['store']}, {r['frames']:,} frames (filled through the store's API in "
        f"{r['fill_s']} s); {r['bytes_per_frame']:,} bytes per frame in the "
        f"{'database files' if r['store'] == 'sqlite' else 'Redis used_memory'}",
        "",
        "| store call | first call ms | p50 ms | p95 ms (the calls after it) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['first_ms']} | {v['p50_ms']} | {v['p95_ms']} |" for k, v in r["routes"].items()
    ]
    if r.get("redis_bytes_by_key"):
        lines += [
            "",
            "Redis bytes per frame by key (MEMORY USAGE, 200 frames): "
            + ", ".join(f"{k} {v:,}" for k, v in r["redis_bytes_by_key"].items()),
        ]
    p = r["purge"]
    if p:
        lines += [
            "",
            f"purge: {p['purged']:,} {p['what']} in {p['seconds']} s. Feed reads "
            f"and frame adds beside it: {p['during']['calls']} calls, p99 "
            f"{p['during']['p99_ms']} ms, slowest {p['during']['max_ms']} ms (feed reads "
            f"alone: slowest {p['feed_during']['max_ms']} ms); as long without a purge: "
            f"{p['without']['calls']} calls, p99 {p['without']['p99_ms']} ms, slowest "
            f"{p['without']['max_ms']} ms (feed reads: {p['feed_without']['max_ms']} ms).",
        ]
        if p["purge_lock_holds"]:
            lines[-1] += (
                f" The purge held the store's lock {p['purge_lock_holds']['calls']} times, "
                f"p99 {p['purge_lock_holds']['p99_ms']} ms, longest "
                f"{p['purge_lock_holds']['max_ms']} ms; the other thread waited for it at "
                f"most {p['service_lock_waits']['max_ms']} ms (p99 "
                f"{p['service_lock_waits']['p99_ms']} ms)"
            )
    return "\n".join(lines)
