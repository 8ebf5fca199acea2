"""Live settings through real HTTP: validated, versioned, applied, kept across a restart."""

from __future__ import annotations

import time

import httpx
import pytest

from training.synth import render_frame

from .conftest import Server, running
from .test_api import jpeg, post

pytestmark = pytest.mark.slow

STRICT = {
    "class_thresholds": {"motor": 1.0, "cable": 1.0, "spray_can": 1.0},  # nothing reaches 1
    "min_score": 0.3,
    "reject_score": 0.95,
}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory):
    env = {"SCRAPSCAN_THREADS": "2"}
    yield from running(Server(tmp_path_factory.mktemp("live") / "data", env))


@pytest.fixture(scope="module")
def frame() -> bytes:
    return jpeg(render_frame(41, 0, 1280, 720).image)


def put(srv: Server, body: dict) -> httpx.Response:
    return httpx.put(f"{srv.url}/v1/admin/settings", json=body, timeout=30)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"class_thresholds": {"battery": 0.5}}, "class_thresholds.battery"),
        ({"class_thresholds": {"cable": 1.5}}, "class_thresholds.cable"),
        ({"reject_score": -0.1}, "reject_score"),
        ({"cameras": {"crane-1": {"bed": "polygon"}}}, "cameras.crane-1"),
        ({"cameras": {"crane-1": {"bed": "polygon", "polygon": [[0, 0], [1, 2], [0, 1]]}}}, "1.1"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field(embedded, body, named):
    r = put(embedded, body)
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]
    assert httpx.get(f"{embedded.url}/v1/admin/settings").json() is None  # nothing saved


def test_settings_apply_to_the_next_frame_and_survive_a_restart(embedded, frame):
    before = post(embedded, frame, wait=True).json()["result"]
    assert before["settings_version"] is None
    r = put(embedded, STRICT)
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    after = post(embedded, frame, wait=True).json()["result"]
    assert after["settings_version"] == 1 and after["instances"] == []
    assert after["thresholds"]["classes"] == [1.0, 1.0, 1.0]
    assert (after["thresholds"]["min_score"], after["thresholds"]["reject_score"]) == (0.3, 0.95)
    assert after["thresholds"]["min_area_px"] == before["thresholds"]["min_area_px"]  # the bundle's

    r = put(embedded, {**STRICT, "cameras": {"crane-9": {"bed": "full"}}})
    assert r.json()["version"] == 2 and r.json()["previous"] == {**STRICT, "cameras": {}}
    embedded.stop()
    embedded.start()
    live = httpx.get(f"{embedded.url}/v1/admin/settings").json()
    assert live["version"] == 2 and live["by"] == "anonymous"
    moved = post(embedded, frame, {"camera_id": "crane-9"}, wait=True).json()["result"]
    assert moved["settings_version"] == 2 and moved["bed"]["strategy"] == "full"
    log = httpx.get(f"{embedded.url}/v1/admin/settings/log").json()
    assert [c["version"] for c in log] == [1, 2]


def test_workers_apply_a_change_made_through_the_api(redis_server, frame):
    r = put(redis_server, STRICT)
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    deadline = time.monotonic() + 10  # a worker looks every 2 s
    while True:
        result = post(redis_server, frame, wait=True).json()["result"]
        if result["settings_version"] == version or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result["settings_version"] == version and result["instances"] == []
