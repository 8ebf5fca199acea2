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


def add(root: Path, version: str, **manifest_changes: object) -> Path:
    """The demo bundle as version `version` of model demo."""
    folder = root / "demo" / version
    shutil.copytree(REPO / "models" / "demo", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["version"] = version
    manifest.update(manifest_changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def make_repository(root: Path) -> Path:
    """v1 (active) and v2 of the demo bundle, and two versions that cannot be served."""
    add(root, "v1")
    add(root, "v2")
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
    return httpx.post(f"{srv.url}/v1/models/active", json=body, timeout=120)


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
        r = httpx.post(f"{served.url}/v1/models/rollback", timeout=120)
        assert r.status_code == 200 and r.json()["version"] == "v1", r.text
        load.more(4)
    versions = load.versions()
    assert set(versions) == {"v1", "v2"}
    assert versions[-1] == "v1"  # frames posted after the rollback ended on v1
    models = httpx.get(f"{served.url}/v1/models").json()
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
    }
    srv = Server(folder / "data", env)
    workers = [Worker(folder, env, f"worker-{i}") for i in (1, 2)]
    for process in (srv, *workers):
        process.start()

    def serving(version: str) -> None:
        for _ in range(100):  # each worker looks every 2 s
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
            r = httpx.post(f"{srv.url}/v1/models/rollback", timeout=120)
            assert r.status_code == 200 and r.json()["version"] == "v1", r.text
            serving("v1")
            load.more(4)
        versions = load.versions()
        assert set(versions) == {"v1", "v2"} and versions[-1] == "v1"
        assert httpx.get(f"{srv.url}/v1/models").json()["serving"] is None  # the workers serve
    finally:
        for process in (*workers, srv):
            process.stop()


def test_unknown_versions_and_a_lone_bundle_get_clear_errors(served, server):
    r = activate(served, "v9")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_version_not_found"
    r = activate(served, "../v1")
    assert r.status_code == 400
    r = httpx.get(f"{server.url}/v1/models")  # started with a bundle, not a repository
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_repository"


def test_serve_refuses_a_repository_with_no_active_version(tmp_path, capsys):
    add(tmp_path, "v1")
    assert serve_main(["--repository", str(tmp_path), "--data-dir", str(tmp_path / "d")]) == 1
    assert f"{tmp_path}: no active version" in capsys.readouterr().err
    assert serve_main(["--repository", str(tmp_path / "none")]) == 1
    assert "no such folder" in capsys.readouterr().err
