import io
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from common.bundle import read_manifest
from common.imaging import polygon_mask
from common.tiling import polygon_box, tile_grid
from training.synth import render_frame

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"

pytestmark = pytest.mark.slow


def jpeg(image_bgr, quality=90):
    ok, data = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def frame():
    return render_frame(31, 0, 1280, 720)


def post(server, data, fields=None, name="frame.jpg", ctype="image/jpeg", headers=None, wait=False):
    fields = {"camera_id": "crane-1", **(fields or {})}
    return httpx.post(
        f"{server.url}/v1/frames",
        params={"wait": "true"} if wait else None,
        data=fields,
        files={"image": (name, data, ctype)} if data is not None else None,
        headers=headers,
        timeout=120,
    )


def assert_error(r, status, code):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code and body["error"]["message"]


def test_a_frame_goes_through_and_its_result_matches_the_frame(server, frame):
    r = post(
        server,
        jpeg(frame.image),
        {"truck_id": "TRK-7", "captured_at": "2026-11-24T06:31:07Z"},
        wait=True,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "done" and body["truck_id"] == "TRK-7"
    result = body["result"]
    assert result["image"] == {"width": 1280, "height": 720}
    # no camera setting: the bundle's bed model finds the bed ("auto")
    assert result["bed"]["strategy"] in {"learned", "learned-none-full"}
    assert len(result["bed"]["polygon"]) >= 3
    made = read_manifest(DEMO).postprocess  # each result says what made it
    assert result["thresholds"]["pixel"] == pytest.approx(made.pixel_threshold)
    assert result["thresholds"]["min_area_px"] == made.min_area_px
    assert result["thresholds"]["min_score"] == pytest.approx(made.min_score)
    assert result["thresholds"]["reject_score"] == pytest.approx(made.reject_score or 0.8)
    refine = None if made.refine is None else made.refine.model_dump()
    assert result["thresholds"]["refine"] == refine
    assert result["thresholds"]["flips"] == list(made.flips)
    assert set(result["scores"]) == {"anomaly", "motor", "cable", "spray_can"}
    assert result["verdict"] in {"clean", "inspect", "reject"}
    stages = {"decode", "crop", "tile", "infer", "merge", "postprocess", "encode"}
    # the demo bundle's region encoder describes the instances, when there are some
    assert set(result["timings_ms"]) == stages | ({"describe"} if result["instances"] else set())
    # the bed's box in 512 px tiles with >= 64 px overlap (the full 1280x720 frame: 3 x 2)
    bed_box = polygon_box(np.asarray(result["bed"]["polygon"]), 1280, 720)
    assert result["tiles"] == len(tile_grid(bed_box, 512, 64).tiles) <= 6
    for inst in result["instances"]:
        x, y, w, h = inst["bbox"]
        assert 0 <= x < 1280 and 0 <= y < 720 and inst["area"] <= w * h
    mask = httpx.get(f"{server.url}{body['links']['mask']}")
    assert mask.headers["content-type"] == "image/png"
    m = cv2.imdecode(np.frombuffer(mask.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert m.shape == (720, 1280) and m.dtype == np.uint8 and m.max() <= 3
    assert (m > 0).sum() == sum(i["area"] for i in result["instances"])
    overlay = httpx.get(f"{server.url}{body['links']['overlay']}")
    o = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    assert o.shape == (720, 1280, 3)
    again = httpx.get(f"{server.url}/v1/frames/{body['frame_id']}").json()
    assert again["result"] == result


def test_without_wait_the_answer_is_202_and_the_frame_finishes(server, frame):
    r = post(server, jpeg(frame.image))
    assert r.status_code == 202 and r.headers["location"].startswith("/v1/frames/")
    frame_id = r.json()["frame_id"]
    for _ in range(300):
        status = httpx.get(f"{server.url}/v1/frames/{frame_id}").json()["status"]
        if status == "done":
            break
        assert status in {"queued", "processing"}

        time.sleep(0.1)
    assert status == "done"


@pytest.mark.parametrize(
    "image",
    [
        np.full((300, 200), 90, np.uint8),  # grayscale, smaller than one tile
        np.dstack(
            [np.full((100, 600, 3), 120, np.uint8), np.full((100, 600), 255, np.uint8)]
        ),  # RGBA
    ],
)
def test_small_grayscale_and_rgba_pngs_are_processed(server, image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    r = post(server, buf.getvalue(), name="f.png", ctype="image/png", wait=True)
    assert r.status_code == 200, r.text
    h, w = image.shape[:2]
    assert r.json()["result"]["image"] == {"width": w, "height": h}


def test_idempotency_key_returns_the_first_frame_and_refuses_other_bytes(server, frame):
    data = jpeg(frame.image, 80)
    first = post(server, data, headers={"Idempotency-Key": "cam1-000123"})
    second = post(server, data, headers={"Idempotency-Key": "cam1-000123"})
    assert first.status_code == second.status_code == 202
    assert first.json()["frame_id"] == second.json()["frame_id"]
    other = post(server, jpeg(frame.image, 70), headers={"Idempotency-Key": "cam1-000123"})
    assert_error(other, 409, "idempotency_conflict")


def corrupt_png():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 300, 3), np.uint8)).save(
        buf, "PNG"
    )
    data = bytearray(buf.getvalue())
    start = data.index(b"IDAT") + 40
    data[start : start + 200] = bytes(200)  # the header is intact, the pixel data is not
    return bytes(data)


def test_a_frame_that_fails_inside_the_pipeline_is_marked_failed(server, frame):
    r = post(server, corrupt_png(), name="f.png", ctype="image/png", wait=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "failed" and body["error"].startswith("corrupt_image")
    assert_error(httpx.get(f"{server.url}{body['links']['mask']}"), 404, "result_not_ready")
    assert post(server, jpeg(frame.image), wait=True).json()["status"] == "done"  # still serving


def bomb():
    _ok, data = cv2.imencode(
        ".png", np.zeros((8000, 8000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )
    return data.tobytes()


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("no image", "missing_field"),
        ("no camera", "missing_field"),
        ("bad camera", "invalid_field"),
        ("bad date", "invalid_field"),
        ("bad key", "invalid_idempotency_key"),
    ],
)
def test_a_bad_form_gets_a_400_with_a_code(server, frame, kind, code):
    url = f"{server.url}/v1/frames"
    good = jpeg(frame.image)
    if kind == "no image":  # multipart, with the camera field only
        r = httpx.post(url, files={"camera_id": (None, "crane-1")})
    elif kind == "no camera":
        r = httpx.post(url, files={"image": ("f.jpg", good, "image/jpeg")})
    elif kind == "bad camera":
        r = post(server, good, {"camera_id": "../../etc/passwd"})
    elif kind == "bad date":
        r = post(server, good, {"captured_at": "yesterday"})
    else:
        r = post(server, good, headers={"Idempotency-Key": "has space"})
    assert_error(r, 400, code)


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("json body", 415, "unsupported_media_type"),
        ("empty body", 415, "unsupported_media_type"),
        ("empty image", 400, "empty_image"),
        ("random bytes", 400, "not_an_image"),
        ("truncated", 400, "corrupt_image"),
        ("gif", 400, "unsupported_format"),
        ("bomb", 413, "image_too_large"),
    ],
)
def test_a_bad_image_gets_a_4xx_with_a_code(server, frame, kind, status, code):
    url = f"{server.url}/v1/frames"
    good = jpeg(frame.image)
    if kind == "json body":
        r = httpx.post(url, json={"camera_id": "c"})
    elif kind == "empty body":
        r = httpx.post(url, content=b"")
    elif kind == "empty image":
        r = post(server, b"")
    elif kind == "random bytes":
        r = post(server, np.random.default_rng(2).bytes(20000))
    elif kind == "truncated":
        r = post(server, good[: len(good) // 2])
    elif kind == "gif":
        buf = io.BytesIO()
        Image.new("RGB", (10, 10)).save(buf, "GIF")
        r = post(server, buf.getvalue(), name="f.gif", ctype="image/gif")
    else:
        r = post(server, bomb(), name="f.png", ctype="image/png")
    assert_error(r, status, code)


def test_an_upload_over_the_byte_limit_is_refused_while_streaming(server):
    sent = 0

    def chunks():  # no Content-Length: the limit must be enforced as bytes arrive
        nonlocal sent
        head = (
            b'--xyz\r\nContent-Disposition: form-data; name="camera_id"\r\n\r\nc1\r\n'
            b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n"
        )
        yield head
        for _ in range(400):  # 400 x 64 KiB = 25 MiB, limit 3 MB
            sent += 65536
            yield b"\xff" * 65536

    try:
        r = httpx.post(
            f"{server.url}/v1/frames",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=xyz"},
            timeout=60,
        )
        assert_error(r, 413, "upload_too_large")
    except httpx.HTTPError:
        pass  # the server may close the connection before the client has sent everything
    assert sent < 25 * 1024 * 1024
    declared = httpx.post(
        f"{server.url}/v1/frames",
        content=b"x" * 3_100_000,
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_error(declared, 413, "upload_too_large")
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/frames/0123456789abcdef0123456789abcdef", 404, "frame_not_found"),
        ("/v1/frames/..%2F..%2Fscrapscan.db", 404, "not_found"),  # never reaches a file
        ("/v1/frames/..%2Fscrapscan.db", 404, "not_found"),
        ("/v1/frames/abc.def", 400, "invalid_frame_id"),
        ("/v1/frames/0123456789abcdef0123456789abcdef/mask.png", 404, "frame_not_found"),
        ("/v1/nothing", 404, "not_found"),
    ],
)
def test_unknown_and_malformed_ids(server, path, status, code):
    assert_error(httpx.get(f"{server.url}{path}"), status, code)


def test_health_config_metrics_and_docs(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready" and ready["model"]["name"] == "demo"
    config = httpx.get(f"{server.url}/v1/config").json()
    assert config["redis_url"] == "redis://***@cache.local:6379" and "secret" not in str(config)
    assert config["max_upload_bytes"] == 3_000_000
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "scrapscan_frames_total" in metrics and "scrapscan_stage_duration_seconds" in metrics
    spec = httpx.get(f"{server.url}/openapi.json").json()
    form = spec["paths"]["/v1/frames"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(form["schema"]["required"]) == {"image", "camera_id"}
    assert "413" in spec["paths"]["/v1/frames"]["post"]["responses"]


def test_results_and_queued_frames_survive_a_restart(server, frame):
    done = post(server, jpeg(frame.image), wait=True).json()
    server.stop()
    server.start()
    again = httpx.get(f"{server.url}/v1/frames/{done['frame_id']}").json()
    assert again["status"] == "done" and again["result"] == done["result"]
    assert httpx.get(f"{server.url}{done['links']['overlay']}").status_code == 200


def test_a_frame_still_queued_at_a_restart_is_processed_after_it(server, frame):
    """What the service had accepted and not finished when it stopped is queued again."""
    from service.store import NewFrame
    from service.store_sqlite import SQLiteStore

    server.stop()
    store = SQLiteStore(server.data_dir)  # accepted, never picked up: the process died
    frame_id, _ = store.add(NewFrame("7" * 32, "crane-1", None, None, jpeg(frame.image), ".jpg"))
    store.close()
    server.start()
    deadline = time.monotonic() + 60
    while (status := httpx.get(f"{server.url}/v1/frames/{frame_id}").json())["status"] != "done":
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["result"]["verdict"] in {"clean", "inspect", "reject"}


def test_a_method_a_route_lacks_is_a_405_that_says_which_it_has(server):
    r = httpx.delete(f"{server.url}/v1/frames")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def fill(polygon, shape):
    """Polygon (COCO convention) to a pixel mask."""
    return polygon_mask(polygon, *shape).astype(np.uint8)


def test_held_out_4k_frames_against_their_ground_truth(server):
    """The demo bundle end to end: mask size, the bed it found, instances under the bundle's
    thresholds and drawn in the mask. (How well they match the truth is the served-path
    evaluation's to say: scrapscan-eval --bundle, BENCHMARKS.md.)"""
    for index in range(3):
        frame = render_frame(300, index)  # held out: neither the model's nor the bed's seeds
        r = post(server, jpeg(frame.image), {"camera_id": "crane-learned"}, wait=True)
        result = r.json()["result"]
        assert result["bed"]["strategy"] == "learned"
        mask = httpx.get(f"{server.url}{r.json()['links']['mask']}").content
        m = cv2.imdecode(np.frombuffer(mask, np.uint8), cv2.IMREAD_UNCHANGED)
        assert m.shape == frame.image.shape[:2]
        used, true_bed = fill(result["bed"]["polygon"], m.shape), fill(frame.bed_polygon, m.shape)
        assert (used & true_bed).sum() / (used | true_bed).sum() > 0.9
        assert (m[used == 0] == 0).mean() > 0.999  # nothing off the bed (up to edge pixels)
        rule = result["thresholds"]
        for inst in result["instances"]:
            assert inst["score"] >= rule["min_score"] and inst["area"] >= rule["min_area_px"]
        assert (m > 0).sum() == sum(i["area"] for i in result["instances"])


def small_png(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (200, 300, 3), np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def test_the_feed_pages_every_frame_exactly_once_while_frames_arrive(server):
    import threading

    start = httpx.get(f"{server.url}/v1/results", params={"limit": 1000}).json()["next"]
    posted = []

    def camera(k):
        for i in range(6):
            r = post(
                server,
                small_png(100 * k + i),
                {"camera_id": f"feed-{k}"},
                name="f.png",
                ctype="image/png",
            )
            posted.append(r.json()["frame_id"])

    threads = [threading.Thread(target=camera, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    seen, cursor = [], start
    for _ in range(200):
        page = httpx.get(
            f"{server.url}/v1/results", params={"after": cursor, "limit": 4, "wait": 2}, timeout=10
        ).json()
        seen += [i["frame_id"] for i in page["items"]]
        cursor = page["next"]
        if len(seen) >= 18 and not any(t.is_alive() for t in threads):
            break
    assert sorted(seen) == sorted(posted) and len(set(seen)) == 18
    only = httpx.get(
        f"{server.url}/v1/results", params={"after": start, "camera_id": "feed-1", "limit": 100}
    ).json()
    assert len(only["items"]) == 6 and {i["camera_id"] for i in only["items"]} == {"feed-1"}


def test_an_empty_long_poll_waits_and_keeps_the_cursor(server):

    last = httpx.get(f"{server.url}/v1/results", params={"limit": 1000}).json()["next"]
    t0 = time.monotonic()
    page = httpx.get(f"{server.url}/v1/results", params={"after": last, "wait": 0.5}).json()
    assert page == {"items": [], "next": last} and time.monotonic() - t0 >= 0.45
    assert_error(
        httpx.get(f"{server.url}/v1/results", params={"after": "x"}), 400, "invalid_cursor"
    )
    assert_error(httpx.get(f"{server.url}/v1/results", params={"wait": 99}), 400, "invalid_request")


def test_the_heat_map_of_a_done_frame(server, frame):
    body = post(server, jpeg(frame.image), wait=True).json()
    url = f"{server.url}/v1/frames/{body['frame_id']}/heatmap.png"
    overlay = Image.open(io.BytesIO(httpx.get(f"{server.url}{body['links']['overlay']}").content))
    for which in ("anomaly", "cable"):
        r = httpx.get(url, params={"class": which})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        heat = Image.open(io.BytesIO(r.content))
        assert heat.height == overlay.height and heat.width > overlay.width  # with the legend
    assert_error(httpx.get(url, params={"class": "tyre"}), 400, "invalid_query")
    assert_error(
        httpx.get(f"{server.url}/v1/frames/{'0' * 32}/heatmap.png"), 404, "frame_not_found"
    )


def test_the_feed_as_server_sent_events(server):
    last = httpx.get(f"{server.url}/v1/results", params={"limit": 1000}).json()["next"]
    frame_id = post(server, small_png(7), name="f.png", ctype="image/png", wait=True).json()[
        "frame_id"
    ]
    with httpx.stream(
        "GET", f"{server.url}/v1/results/stream", params={"after": last}, timeout=30
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break
    assert lines[0].startswith("id: ") and lines[1] == "event: result"
    assert frame_id in lines[2]
    # a client that reconnects with Last-Event-ID gets what came after that event only
    second = post(server, small_png(8), name="g.png", ctype="image/png", wait=True).json()
    with httpx.stream(
        "GET",
        f"{server.url}/v1/results/stream",
        headers={"Last-Event-ID": lines[0].removeprefix("id: ")},
        timeout=30,
    ) as r:
        data = next(line for line in r.iter_lines() if line.startswith("data: "))
    assert second["frame_id"] in data and frame_id not in data
    # a dashboard opening on a long day starts with the latest frames, here the last one
    with httpx.stream(
        "GET", f"{server.url}/v1/results/stream", params={"last": 1}, timeout=30
    ) as r:
        data = next(line for line in r.iter_lines() if line.startswith("data: "))
    assert second["frame_id"] in data


@pytest.mark.parametrize(
    ("params", "headers"), [({"after": "null"}, {}), ({}, {"Last-Event-ID": "x-1"})]
)
def test_a_bad_stream_cursor_is_a_400_before_the_stream_starts(server, params, headers):
    r = httpx.get(f"{server.url}/v1/results/stream", params=params, headers=headers, timeout=10)
    assert_error(r, 400, "invalid_cursor")


def test_truck_report_and_listing_through_http(server, frame):
    ids = [
        post(server, jpeg(frame.image, q), {"truck_id": "TRK-REPORT-1"}, wait=True).json()[
            "frame_id"
        ]
        for q in (90, 85)
    ]
    report = httpx.get(f"{server.url}/v1/trucks/TRK-REPORT-1/report").json()
    assert report["truck_id"] == "TRK-REPORT-1" and report["frames"] == 2
    assert report["verdict"] in {"clean", "inspect", "reject"}
    assert {e["frame_id"] for e in report["evidence"]} <= set(ids)
    as_csv = httpx.get(f"{server.url}/v1/trucks/TRK-REPORT-1/report", params={"format": "csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text.splitlines()[0].startswith("truck_id,verdict,frames")
    listing = httpx.get(f"{server.url}/v1/trucks", params={"since": "2020-01-01T00:00:00Z"}).json()
    assert "TRK-REPORT-1" in [t["truck_id"] for t in listing["trucks"]]
    future = httpx.get(f"{server.url}/v1/trucks", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert future == {"trucks": [], "next": None}
    # without since: the last day; a page of one, then the next page from its cursor
    post(server, jpeg(frame.image), {"truck_id": "TRK-REPORT-2"}, wait=True)
    first = httpx.get(f"{server.url}/v1/trucks", params={"limit": 1}).json()
    assert [t["truck_id"] for t in first["trucks"]] == ["TRK-REPORT-2"] and first["next"]
    after = {"limit": 1, "after": first["next"]}
    second = httpx.get(f"{server.url}/v1/trucks", params=after).json()
    assert [t["truck_id"] for t in second["trucks"]] == ["TRK-REPORT-1"]
    assert_error(
        httpx.get(f"{server.url}/v1/trucks", params={"after": "1~"}), 400, "invalid_cursor"
    )
    assert_error(httpx.get(f"{server.url}/v1/trucks", params={"limit": 0}), 400, "invalid_request")
    assert_error(httpx.get(f"{server.url}/v1/trucks/NOPE-0/report"), 404, "truck_not_found")
    assert_error(
        httpx.get(f"{server.url}/v1/trucks", params={"since": "soon"}), 400, "invalid_query"
    )
    assert_error(
        httpx.get(f"{server.url}/v1/trucks", params={"verdict": "maybe"}), 400, "invalid_request"
    )


def test_the_drift_signals_are_exported(loose_server, frame):
    body = post(loose_server, jpeg(frame.image), {"camera_id": "crane-drift"}, wait=True).json()
    text = httpx.get(f"{loose_server.url}/metrics").text
    scores = body["result"]["scores"]
    assert set(scores) == {"anomaly", "motor", "cable", "spray_can"}
    for name in scores:
        assert f'scrapscan_frame_score_count{{camera="crane-drift",class="{name}"}} 1.0' in text
    verdict = body["result"]["verdict"]
    assert f'scrapscan_frame_verdicts_total{{camera="crane-drift",verdict="{verdict}"}} 1.0' in text
    strategy = body["result"]["bed"]["strategy"]
    assert f'scrapscan_bed_total{{camera="crane-drift",strategy="{strategy}"}} 1.0' in text
    # the reference the drift alert compares with: the bundle's validation figures
    assert 'scrapscan_model_reference_frame_score{class="anomaly",percentile="50"} 0.6' in text
