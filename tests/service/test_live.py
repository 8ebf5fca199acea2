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
    assert r.json()["version"] == 2
    assert r.json()["previous"] == {**STRICT, "cameras": {}, "text_classes": None}
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


GAS = {"name": "gas_cylinder", "prompts": ["a photo of a gas cylinder.", "a steel gas bottle."]}


def classes(srv: Server) -> dict:
    r = httpx.get(f"{srv.url}/v1/classes", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def define(srv: Server, body: dict) -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/classes", json=body, timeout=30)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "gas_cylinder", "prompts": []}, 400, "invalid_request"),
        ({"name": "gas_cylinder", "prompts": ["   "]}, 400, "invalid_request"),
        ({"name": "gas_cylinder", "prompts": ["x" * 201]}, 400, "invalid_request"),
        ({"name": "gas_cylinder", "prompts": ["a b c d " * 20]}, 400, "prompt_too_long"),
        (
            {"name": "gas_cylinder", "prompts": ["a"], "normal_prompts": [""]},
            400,
            "invalid_request",
        ),
        ({"name": "Gas Cylinder", "prompts": ["a gas cylinder"]}, 400, "invalid_request"),
        ({"name": "gas_cylinder", "prompts": ["a"], "threshold": 1.5}, 400, "invalid_request"),
        ({"name": "motor", "prompts": ["an electric motor"]}, 409, "class_exists"),
        ({"name": "normal", "prompts": ["steel"]}, 409, "class_exists"),
    ],
)
def test_a_bad_class_definition_is_refused_and_nothing_is_kept(embedded, body, status, code):
    before = classes(embedded)
    r = define(embedded, body)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert classes(embedded) == before


def test_a_class_defined_by_text_is_scored_kept_over_a_restart_and_removed(embedded, frame):
    listed = classes(embedded)
    assert listed["text"] == [] and listed["learned"] == ["motor", "cable", "spray_can"]
    assert (listed["limit"], listed["slots"]) == (4, 4)
    r = define(embedded, GAS)
    assert r.status_code == 201, r.text
    assert r.json()["text"] == [{**GAS, "normal_prompts": None, "threshold": 0.5}]
    assert define(embedded, GAS).json()["error"]["code"] == "class_exists"

    result = post(embedded, frame, wait=True).json()["result"]
    assert result["thresholds"]["text_classes"] == {"gas_cylinder": 0.5}
    assert 0 <= result["scores"]["gas_cylinder"] <= 1
    assert all(i["zero_shot"] == (i["class"] == "gas_cylinder") for i in result["instances"])

    for k in range(3):
        assert define(embedded, {"name": f"hazard_{k}", "prompts": ["a tank."]}).status_code == 201
    r = define(embedded, {"name": "hazard_3", "prompts": ["a tank."]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_classes"
    assert put(embedded, STRICT).status_code == 200  # other settings keep the classes
    assert len(classes(embedded)["text"]) == 4
    r = put(embedded, {"text_classes": [GAS, GAS]})  # the same rules through the settings
    assert r.status_code == 409 and r.json()["error"]["code"] == "class_exists"

    embedded.stop()
    embedded.start()
    kept = classes(embedded)
    assert [c["name"] for c in kept["text"]] == ["gas_cylinder", "hazard_0", "hazard_1", "hazard_2"]
    after = post(embedded, frame, wait=True).json()["result"]
    assert set(after["thresholds"]["text_classes"]) == {c["name"] for c in kept["text"]}

    missing = httpx.delete(f"{embedded.url}/v1/classes/battery", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "class_not_found"
    for name in ("gas_cylinder", "hazard_0", "hazard_1", "hazard_2"):
        assert httpx.delete(f"{embedded.url}/v1/classes/{name}", timeout=30).status_code == 200
    assert classes(embedded)["text"] == []
    last = post(embedded, frame, wait=True).json()["result"]
    assert last["thresholds"]["text_classes"] == {} and "gas_cylinder" not in last["scores"]


def test_workers_score_a_class_defined_through_the_api(redis_server, frame):
    r = define(redis_server, GAS)
    assert r.status_code == 201 and r.json()["slots"] is None, r.text  # each worker's bundle
    deadline = time.monotonic() + 10  # a worker looks every 2 s
    while True:
        result = post(redis_server, frame, wait=True).json()["result"]
        if result["thresholds"]["text_classes"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result["thresholds"]["text_classes"] == {"gas_cylinder": 0.5}
    assert "gas_cylinder" in result["scores"]
    assert (
        httpx.delete(f"{redis_server.url}/v1/classes/gas_cylinder", timeout=30).status_code == 200
    )
