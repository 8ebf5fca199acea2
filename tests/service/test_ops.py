"""Operations and security through real HTTP: API keys by role on every route, key rotation
without a restart, request ids, CORS, structured logs and the Prometheus metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections import Counter

import httpx
import pytest

from service.auth import ACCESS, KeyRing, KeysFileError, load_keys
from training.synth import render_frame

from .conftest import KEYS, Server, write_keys
from .test_api import assert_error, jpeg

pytestmark = pytest.mark.slow


def auth(role: str | None) -> dict[str, str]:
    if role is None:
        return {}
    key = KEYS.get(role, "a-key-nobody-has")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def done_frame(keyed: Server) -> dict:
    frame = render_frame(51, 0, 640, 360)
    r = httpx.post(
        f"{keyed.url}/v1/frames",
        params={"wait": "true"},
        data={"camera_id": "crane-9", "truck_id": "TRK-KEYS"},
        files={"image": ("f.jpg", jpeg(frame.image), "image/jpeg")},
        headers=auth("admin"),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


# every route: (method, path, permission or None for open routes)
ROUTES = [
    ("POST", "/v1/frames", "submit"),
    ("GET", "/v1/frames/{frame_id}", "frames"),
    ("GET", "/v1/frames/{frame_id}/mask.png", "frames"),
    ("GET", "/v1/frames/{frame_id}/overlay.jpg", "frames"),
    ("GET", "/v1/frames/{frame_id}/heatmap.png", "frames"),
    ("POST", "/v1/frames/{frame_id}/feedback", "feedback"),
    ("GET", "/v1/frames/{frame_id}/feedback", "frames"),
    ("POST", "/v1/trucks/{truck_id}/decisions", "feedback"),
    ("POST", "/v1/frames/{frame_id}/describe", "feedback"),
    ("GET", "/v1/trucks/{truck_id}/decisions", "reports"),
    ("GET", "/v1/results", "feed"),
    ("GET", "/v1/results/stream", "feed"),
    ("GET", "/v1/trucks/{truck_id}/report", "reports"),
    ("GET", "/v1/trucks", "reports"),
    ("GET", "/v1/config", "config"),
    ("GET", "/v1/status", "frames"),
    ("GET", "/v1/feedback/export", "export"),
    ("GET", "/v1/admin/bundles", "config"),  # 404 for admin: this service has no repository
    ("POST", "/v1/admin/bundles/active", "config"),
    ("POST", "/v1/admin/bundles/rollback", "config"),
    ("GET", "/v1/admin/bundles/shadow", "config"),
    ("PUT", "/v1/admin/bundles/shadow", "config"),
    ("DELETE", "/v1/admin/bundles/shadow", "config"),
    ("GET", "/v1/admin/bundles/shadow/frames", "config"),
    ("GET", "/v1/admin/settings", "config"),
    ("PUT", "/v1/admin/settings", "config"),
    ("GET", "/v1/admin/settings/log", "config"),
    ("GET", "/v1/classes", "config"),
    ("POST", "/v1/classes", "config"),
    ("DELETE", "/v1/classes/{name}", "config"),
    ("GET", "/dashboard", None),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]
WHO = [None, "unknown", "camera", "dashboard", "operator", "admin"]


def call_classes(srv: Server, method: str, path: str, role: str | None) -> int:
    """Define a class (a new name each time, removed again) or remove one (defined first)."""
    url = f"{srv.url}/v1/classes"
    if method == "DELETE":
        body = {"name": "role_check", "prompts": ["a photo of a gas cylinder."]}
        httpx.post(url, json=body, headers=auth("admin"))  # 409 when it is there already
        return httpx.delete(f"{srv.url}{path}", headers=auth(role)).status_code
    name = f"role_{uuid.uuid4().hex[:8]}"
    r = httpx.post(url, json={"name": name, "prompts": ["a battery."]}, headers=auth(role))
    httpx.delete(f"{url}/{name}", headers=auth("admin"))
    return r.status_code


def call(srv: Server, method: str, template: str, role: str | None, frame_id: str) -> int:
    path = template.format(frame_id=frame_id, truck_id="TRK-KEYS", name="role_check")
    if path.startswith("/v1/classes") and method != "GET":
        return call_classes(srv, method, path, role)
    if path.startswith("/v1/admin/bundles/") and method != "GET":
        body = {"name": "demo", "version": "v1", "share": 0.5}
        return httpx.request(method, f"{srv.url}{path}", json=body, headers=auth(role)).status_code
    if method == "PUT":  # the live settings: an empty version changes nothing
        return httpx.put(f"{srv.url}{path}", json={}, headers=auth(role)).status_code
    if path.endswith("/describe"):
        body = {"box": [0, 0, 10, 10]}
        return httpx.post(f"{srv.url}{path}", json=body, headers=auth(role)).status_code
    if method == "POST" and path.endswith(("/feedback", "/decisions")):
        body = {"label": "missed", "box": [0, 0, 4, 4]} if path.endswith("/feedback") else {}
        body = body or {"decision": "accepted"}
        return httpx.post(f"{srv.url}{path}", json=body, headers=auth(role)).status_code
    if method == "POST":
        frame = render_frame(52, 0, 320, 240)
        return httpx.post(
            f"{srv.url}{path}",
            data={"camera_id": "crane-9"},
            files={"image": ("f.jpg", jpeg(frame.image), "image/jpeg")},
            headers=auth(role),
            timeout=60,
        ).status_code
    with httpx.stream("GET", f"{srv.url}{path}", headers=auth(role), timeout=30) as r:
        return r.status_code  # the event stream is left unread


def test_the_matrix_covers_every_route_of_the_app(keyed):
    spec = httpx.get(f"{keyed.url}/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    listed = {(m, p) for m, p, _ in ROUTES}
    assert documented <= listed
    assert {p for _, p, perm in ROUTES if perm} == {
        p for m, p in documented if "security" in spec["paths"][p][m.lower()]
    }


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize(("method", "path", "permission"), ROUTES)
def test_each_role_on_each_route(keyed, done_frame, who, method, path, permission):
    status = call(keyed, method, path, who, done_frame["frame_id"])
    if permission is None:
        assert status == 200
    elif who in (None, "unknown"):
        assert status == 401
    elif who in ACCESS[permission]:
        assert status in ((404,) if path.startswith("/v1/admin/bundles") else (200, 201, 202))
    else:
        assert status == 403


def test_401_and_403_bodies_say_what_to_do(keyed, done_frame):
    r = httpx.get(f"{keyed.url}/v1/config")
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(f"{keyed.url}/v1/config", headers=auth("unknown")), 401, "unauthorized")
    forbidden = httpx.get(f"{keyed.url}/v1/config", headers=auth("dashboard"))
    assert_error(forbidden, 403, "forbidden")
    assert "dashboard" in forbidden.json()["error"]["message"]
    bad_scheme = httpx.get(f"{keyed.url}/v1/config", headers={"Authorization": "Basic eDp5"})
    assert_error(bad_scheme, 401, "unauthorized")


def test_keys_rotate_without_a_restart(keyed):
    url = f"{keyed.url}/v1/config"
    new = "rotated-admin-key-42"
    write_keys(keyed.keys_file, {**{r: [k] for r, k in KEYS.items()}, "admin": [new]})
    deadline = time.monotonic() + 10
    while httpx.get(url, headers={"Authorization": f"Bearer {new}"}).status_code != 200:
        assert time.monotonic() < deadline, "the new key was not taken up"
        time.sleep(0.2)
    assert httpx.get(url, headers=auth("admin")).status_code == 401  # the old key is gone
    keyed.keys_file.write_text("{not json")  # a broken file keeps the keys in force
    time.sleep(1.5)
    assert httpx.get(url, headers={"Authorization": f"Bearer {new}"}).status_code == 200
    write_keys(keyed.keys_file, {r: [k] for r, k in KEYS.items()})
    deadline = time.monotonic() + 10
    while httpx.get(url, headers=auth("admin")).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_request_ids_in_headers_and_in_every_log_line(keyed):
    given = httpx.get(f"{keyed.url}/healthz", headers={"X-Request-ID": "cam9-000123"})
    assert given.headers["x-request-id"] == "cam9-000123"
    made = httpx.get(f"{keyed.url}/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert made.headers["x-request-id"] != "bad id with spaces"
    assert len(httpx.get(f"{keyed.url}/healthz").headers["x-request-id"]) == 32
    time.sleep(0.2)
    text = keyed.log.read_text().splitlines()
    lines = [json.loads(line) for line in text if line.startswith("{")]  # not warnings
    assert len(lines) > 0.9 * len([t for t in text if t.strip()])
    assert all({"asctime", "level", "name", "request_id", "message"} <= set(x) for x in lines)
    assert any(x["request_id"] == "cam9-000123" and "/healthz" in x["message"] for x in lines)


def test_cors_is_closed_by_default(keyed):
    r = httpx.get(f"{keyed.url}/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = httpx.options(
        f"{keyed.url}/v1/results",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in pre.headers


def test_metrics_after_a_frame_pass_promtool_and_name_what_happened(keyed, done_frame):
    text = httpx.get(f"{keyed.url}/metrics").text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs it (scripts/ensure-test-tools.sh)")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for needed in (
        'scrapscan_http_requests_total{method="POST",route="/v1/frames",status="200"}',
        'scrapscan_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/healthz"}',
        'scrapscan_frames_total{camera="crane-9",outcome="accepted"}',
        'scrapscan_frames_total{camera="crane-9",outcome="done"}',
        'scrapscan_stage_duration_seconds_count{stage="queue_wait"}',
        'scrapscan_stage_duration_seconds_count{stage="infer"}',
        "scrapscan_queue_backlog_frames 0.0",
        "scrapscan_engine_batch_size_count",
        "scrapscan_engine_batch_duration_seconds_count",
        'scrapscan_model_info{engine="',  # the faster CPU engine, timed at load
        'name="demo"',
        "scrapscan_retention_purge_duration_seconds_count 1.0",  # the pass at start
        "scrapscan_retention_purged_frames_total 0.0",
    ):
        assert needed in text, needed
    result = done_frame["result"]
    by_class = Counter(i["class"] for i in result["instances"])
    for name, n in by_class.items():  # at least this frame's instances
        prefix = f'scrapscan_detections_total{{class="{name}"}}'
        line = next(x for x in text.splitlines() if x.startswith(prefix))
        assert float(line.split()[-1]) >= n


def test_keys_files_that_cannot_be_used_are_named(tmp_path):
    cases = {
        "notjson.json": ("{", "not JSON"),
        "list.json": ("[]", "JSON object"),
        "role.json": ('{"root": ["' + "0" * 64 + '"]}', "unknown roles"),
        "digest.json": ('{"admin": ["not-a-digest"]}', "not a sha256 hex digest"),
        "empty.json": ('{"admin": []}', "no key at all"),
    }
    for name, (text, why) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(KeysFileError) as err:
            load_keys(path)
        assert str(path) in str(err.value) and why in str(err.value)
    with pytest.raises(KeysFileError, match="cannot read"):
        load_keys(tmp_path / "missing.json")


def test_a_key_ring_matches_several_keys_per_role(tmp_path):
    path = tmp_path / "keys.json"
    write_keys(path, {"camera": ["c1", "c2"], "admin": ["a1"]})
    ring = KeyRing(path, check_every_s=0)
    assert ring.roles("c1") == {"camera"} and ring.roles("c2") == {"camera"}
    assert ring.roles("a1") == {"admin"} and ring.roles("nope") == frozenset()
    assert not KeyRing(None).enabled


def test_serve_refuses_an_open_port_without_keys_and_a_bad_keys_file(tmp_path, capsys, monkeypatch):
    from service.cli import main

    assert main(["--host", "0.0.0.0"]) == 1
    assert "without API keys" in capsys.readouterr().err
    bad = tmp_path / "keys.json"
    bad.write_text("{}")
    monkeypatch.setenv("SCRAPSCAN_API_KEYS_FILE", str(bad))
    assert main([]) == 1
    assert str(bad) in capsys.readouterr().err


def test_feedback_records_the_role_that_gave_it(keyed, done_frame):
    url = f"{keyed.url}/v1/frames/{done_frame['frame_id']}/feedback"
    missed = {"label": "missed", "box": [0, 0, 8, 8]}
    assert httpx.post(url, json=missed, headers=auth("operator")).json()["by"] == "operator"
    assert httpx.post(url, json=missed, headers=auth("admin")).json()["by"] == "admin"
    assert_error(httpx.post(url, json=missed, headers=auth("dashboard")), 403, "forbidden")
