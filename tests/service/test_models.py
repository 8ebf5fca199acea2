"""The model repository served: versions swapped and rolled back while frames go on."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from common.repository import Repository
from service.cli import main as serve_main
from training.synth import render_frame

from .conftest import REPO, Server, Worker, running
from .test_api import jpeg, post

pytestmark = pytest.mark.slow


def add(
    root: Path, version: str, postprocess: dict | None = None, **manifest_changes: object
) -> Path:
    """The demo bundle as version `version` of model demo."""
    folder = root / "demo" / version
    shutil.copytree(REPO / "models" / "demo", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["version"] = version
    manifest["postprocess"].update(postprocess or {})
    manifest.update(manifest_changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def make_repository(root: Path) -> Path:
    """v1 (active) and v2 of the demo bundle, an eager one, two that cannot be served."""
    add(root, "v1")
    add(root, "v2")
    eager = {"class_thresholds": None, "pixel_threshold": 0.5, "min_score": 0.0}
    add(root, "eager", postprocess={**eager, "reject_score": 0.9})  # finds more, rejects more
    add(root, "unwarmable", grid=36)  # loads, and its engine answers another grid
    torn = add(root, "torn")
    (torn / "model.onnx").write_bytes((torn / "model.onnx").read_bytes()[:1000])
    Repository(root).activate("demo", "v1", "setup")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, repo: Path):
    env = {"SCRAPSCAN_REPOSITORY": str(repo), "SCRAPSCAN_THREADS": "2"}
    yield from running(Server(tmp_path_factory.mktemp("models") / "data", env))


class Load:
    """Two cameras posting frames (?wait=true) back to back until the block ends."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.frames = [jpeg(render_frame(70, i, 1280, 720).image) for i in range(3)]
        self.answers: list[httpx.Response] = []
        self.stop = threading.Event()
        self.cameras = [threading.Thread(target=self._camera, args=(k,)) for k in range(2)]

    def _camera(self, k: int) -> None:
        i = 0
        while not self.stop.is_set():
            data = self.frames[(i + k) % 3]
            fields = {"camera_id": f"crane-{k}", "truck_id": "TRK-SWAP"}
            self.answers.append(post(self.srv, data, fields, wait=True))
            i += 1

    def done(self) -> int:
        return sum(r.status_code == 200 for r in self.answers)

    def more(self, n: int) -> None:
        """Wait until n more frames have been answered."""
        target = self.done() + n
        for _ in range(1200):
            if self.done() >= target:
                return
            self.stop.wait(0.1)
        raise AssertionError(f"frames stalled at {self.done()}")

    def versions(self) -> list[str]:
        """Every answer done, each naming its model's version, in the order they came."""
        assert self.answers and all(r.status_code == 200 for r in self.answers), [
            r.text for r in self.answers if r.status_code != 200
        ]
        results = [r.json() for r in self.answers]
        assert all(res["status"] == "done" for res in results), results
        return [res["result"]["model"]["version"] for res in results]

    def __enter__(self) -> Load:
        for t in self.cameras:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.cameras:
            t.join(timeout=120)


def activate(srv: Server, version: str) -> httpx.Response:
    body = {"name": "demo", "version": version}  # answered once the new engine is warm
    return httpx.post(f"{srv.url}/v1/admin/bundles/active", json=body, timeout=120)


def test_versions_swap_and_roll_back_under_load_without_a_lost_frame(served, repo):
    with Load(served) as load:
        load.more(3)
        r = activate(served, "v2")
        assert r.status_code == 200 and r.json()["version"] == "v2", r.text
        load.more(4)
        for broken, why in [("torn", "model.onnx"), ("unwarmable", "36 x 36 grid")]:
            r = activate(served, broken)
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "bundle_refused" and why in r.text
        load.more(3)  # the refused ones changed nothing: v2 serves on
        r = httpx.post(f"{served.url}/v1/admin/bundles/rollback", timeout=120)
        assert r.status_code == 200 and r.json()["version"] == "v1", r.text
        load.more(4)
    versions = load.versions()
    assert set(versions) == {"v1", "v2"}
    assert versions[-1] == "v1"  # frames posted after the rollback ended on v1
    models = httpx.get(f"{served.url}/v1/admin/bundles").json()
    assert models["active"]["version"] == models["serving"]["version"] == "v1"
    assert [(e["action"], e["version"]) for e in models["log"]] == [
        ("activate", "v1"),
        ("activate", "v2"),
        ("rollback", "v1"),
    ]
    assert {v["version"] for v in models["versions"] if v["active"]} == {"v1"}
    report = httpx.get(f"{served.url}/v1/trucks/TRK-SWAP/report").json()
    assert report["models"] == [{"name": "demo", "version": v} for v in ("v1", "v2")]
    assert httpx.get(f"{served.url}/readyz").json()["model"] == {"name": "demo", "version": "v1"}
    metrics = httpx.get(f"{served.url}/metrics").text
    assert 'scrapscan_model_info{engine="' in metrics
    assert 'version="v1"' in metrics and 'version="v2"' not in metrics


def test_workers_follow_the_repository_under_load(tmp_path_factory, redis_url):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    folder = tmp_path_factory.mktemp("models-redis")
    repo = make_repository(folder / "repository")
    env = {
        "SCRAPSCAN_STORE": "redis",
        "SCRAPSCAN_REDIS_URL": redis_url,
        "SCRAPSCAN_REPOSITORY": str(repo),
        "SCRAPSCAN_THREADS": "1",
        "SCRAPSCAN_REPOSITORY_POLL_S": "600",  # the workers follow the API's announcements
    }
    srv = Server(folder / "data", env)
    workers = [Worker(folder, env, f"worker-{i}") for i in (1, 2)]
    for process in (srv, *workers):
        process.start()

    def serving(version: str) -> None:
        for _ in range(100):  # announced: within 20 s, not the 600 s of the poll
            said = [httpx.get(f"{w.url}/readyz").json()["model"]["version"] for w in workers]
            if said == [version, version]:
                return
            time.sleep(0.2)
        raise AssertionError(f"workers serve {said}, not {version}")

    try:
        with Load(srv) as load:
            load.more(3)
            r = activate(srv, "v2")
            assert r.status_code == 200, r.text
            serving("v2")
            load.more(4)
            r = activate(srv, "torn")  # the API checks the files before any worker sees it
            assert r.status_code == 409 and "model.onnx" in r.text
            r = httpx.post(f"{srv.url}/v1/admin/bundles/rollback", timeout=120)
            assert r.status_code == 200 and r.json()["version"] == "v1", r.text
            serving("v1")
            load.more(4)
            body = {"name": "demo", "version": "eager", "share": 1.0}
            r = httpx.put(f"{srv.url}/v1/admin/bundles/shadow", json=body, timeout=120)
            assert r.status_code == 200, r.text
            load.more(6)
            summary = shadow_figures(srv, 1)["summary"]
            assert summary["candidate_model"]["version"] == "eager"
            kept = httpx.get(f"{srv.url}/v1/admin/bundles/shadow/frames").json()  # frames go on
            assert 1 <= summary["frames"] <= len(kept)
            assert {f["candidate_model"]["version"] for f in kept} == {"eager"}
        versions = load.versions()
        assert set(versions) == {"v1", "v2"} and versions[-1] == "v1"
        bundles = httpx.get(f"{srv.url}/v1/admin/bundles").json()
        assert bundles["serving"] is None  # the workers serve
    finally:
        for process in (*workers, srv):
            process.stop()


def shadow_figures(srv: Server, frames: int) -> dict:
    """GET /v1/admin/bundles/shadow once the candidate has scored `frames` frames."""
    for _ in range(300):
        status = httpx.get(f"{srv.url}/v1/admin/bundles/shadow").json()
        if status["summary"] and status["summary"]["frames"] >= frames:
            return status
        time.sleep(0.1)
    raise AssertionError(f"the candidate scored {status}")


def test_a_candidate_in_shadow_is_compared_not_served(served, repo):
    r = httpx.put(
        f"{served.url}/v1/admin/bundles/shadow",
        json={"name": "demo", "version": "eager", "share": 1.0},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["share"] == 1.0, r.text
    frames = [jpeg(render_frame(71, i, 1280, 720).image) for i in range(4)]
    answers = [post(served, data, {"camera_id": "crane-9"}, wait=True).json() for data in frames]
    assert {a["result"]["model"]["version"] for a in answers} == {"v1"}  # never served
    status = shadow_figures(served, len(frames))
    assert (
        status["shadow"]["version"] == "eager" and status["shadow"]["by"] == "anonymous"
    )  # no keys on loopback
    summary = status["summary"]
    kept = httpx.get(f"{served.url}/v1/admin/bundles/shadow/frames").json()
    assert sorted(f["frame_id"] for f in kept) == sorted(a["frame_id"] for a in answers)
    served_by_id = {a["frame_id"]: a["result"] for a in answers}
    recount = {"agree": 0, "matched": 0, "reclassified": 0, "added": 0, "dropped": 0}
    pairs: dict[tuple[str, str], int] = {}
    for f in kept:  # the figures, counted again from the stored frames and results
        result = served_by_id[f["frame_id"]]
        assert f["served_verdict"] == result["verdict"]
        assert len(f["matched"]) + len(f["dropped"]) == len(result["instances"])
        assert f["candidate_model"] == {"name": "demo", "version": "eager"}
        key = (f["served_verdict"], f["candidate_verdict"])
        pairs[key] = pairs.get(key, 0) + 1
        recount["agree"] += key[0] == key[1]
        for m in f["matched"]:
            same = m["served"]["class"] == m["candidate"]["class"]
            recount["matched" if same else "reclassified"] += 1
        recount["added"] += len(f["added"])
        recount["dropped"] += len(f["dropped"])
    assert summary["frames"] == len(frames) and summary["verdicts_agree"] == recount["agree"]
    assert summary["instances"] == {
        k: recount[k] for k in ("matched", "reclassified", "added", "dropped")
    }
    assert {
        (a, b): n for a, row in summary["verdicts"].items() for b, n in row.items() if n
    } == pairs
    assert recount["added"] > 0  # the eager candidate finds what the served one leaves out
    metrics = httpx.get(f"{served.url}/metrics").text
    scored = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("scrapscan_shadow_frames_total{") and '"demo/eager"' in line
    ]
    assert sum(scored) == len(frames)

    r = httpx.delete(f"{served.url}/v1/admin/bundles/shadow")
    assert r.status_code == 200 and r.json()["summary"]["frames"] == len(frames)
    post(served, frames[0], {"camera_id": "crane-9"}, wait=True)
    assert httpx.delete(f"{served.url}/v1/admin/bundles/shadow").json()["shadow"] is None
    time.sleep(1)
    again = httpx.get(f"{served.url}/v1/admin/bundles/shadow?name=demo&version=eager").json()
    assert again["shadow"] is None and again["summary"]["frames"] == len(frames)

    # the candidate activated ends its shadow
    body = {"name": "demo", "version": "v2", "share": 0.5}
    r = httpx.put(f"{served.url}/v1/admin/bundles/shadow", json=body, timeout=120)
    assert r.status_code == 200
    assert activate(served, "v2").status_code == 200
    assert httpx.get(f"{served.url}/v1/admin/bundles/shadow").json()["shadow"] is None
    assert httpx.post(f"{served.url}/v1/admin/bundles/rollback", timeout=120).status_code == 200
    log = httpx.get(f"{served.url}/v1/admin/bundles").json()["log"]
    assert [(e["action"], e["version"]) for e in log[-6:]] == [
        ("shadow", "eager"),
        ("shadow_stop", "eager"),
        ("shadow", "v2"),
        ("activate", "v2"),
        ("shadow_stop", "v2"),
        ("rollback", "v1"),
    ]


def test_a_candidate_that_cannot_score_is_refused_with_the_reason(served, server):
    url = f"{served.url}/v1/admin/bundles/shadow"
    for share in (0, 1.5, "half"):
        r = httpx.put(url, json={"name": "demo", "version": "v2", "share": share})
        assert r.status_code == 400 and "share" in r.text, r.text
    r = httpx.put(url, json={"name": "demo", "version": "v9", "share": 0.5})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_version_not_found"
    r = httpx.put(url, json={"name": "demo", "version": "v1", "share": 0.5})
    assert r.status_code == 409 and r.json()["error"]["code"] == "shadow_is_served"
    for broken, why in [("torn", "model.onnx"), ("unwarmable", "36 x 36 grid")]:
        r = httpx.put(url, json={"name": "demo", "version": broken, "share": 0.5}, timeout=120)
        assert r.status_code == 409 and r.json()["error"]["code"] == "bundle_refused"
        assert why in r.text
    assert httpx.get(url).json()["shadow"] is None  # nothing was put in shadow
    r = httpx.get(f"{server.url}/v1/admin/bundles/shadow")  # a lone bundle
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_repository"


def test_unknown_versions_and_a_lone_bundle_get_clear_errors(served, server):
    r = activate(served, "v9")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_version_not_found"
    r = activate(served, "../v1")
    assert r.status_code == 400
    r = httpx.get(f"{server.url}/v1/admin/bundles")  # started with a bundle, not a repository
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_repository"


def test_serve_refuses_a_repository_with_no_active_version(tmp_path, capsys):
    add(tmp_path, "v1")
    assert serve_main(["--repository", str(tmp_path), "--data-dir", str(tmp_path / "d")]) == 1
    assert f"{tmp_path}: no active version" in capsys.readouterr().err
    assert serve_main(["--repository", str(tmp_path / "none")]) == 1
    assert "no such folder" in capsys.readouterr().err
