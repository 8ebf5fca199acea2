"""Real service processes (uvicorn, the demo bundle) for the API tests: scrapscan-serve with
a SQLite or Redis store, and scrapscan-worker processes for the scaled-out shape."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.local import free_port, wait_ready
from service.objects import ObjectStore
from service.result import FrameResult, Instance, Summary

from ..conftest import Child

THRESHOLDS = {
    "pixel": 0.5,
    "classes": None,
    "min_area_px": 64,
    "max_bed_fraction": 0.5,
    "min_score": None,
    "reject_score": 0.8,
}


def frame_result(instances: list[dict], verdict: str = "inspect") -> FrameResult:
    """A result as the pipeline makes it, holding these instances (class, score, area)."""
    return FrameResult(
        model={"name": "test", "version": "0"},
        image={"width": 64, "height": 48},
        bed={"strategy": "full", "polygon": [(0, 0), (64, 0), (64, 48), (0, 48)]},
        verdict=verdict,
        scores={"anomaly": max((i["score"] for i in instances), default=0.0)},
        instances=[
            Instance(
                class_scores={i["class"]: 1.0}, bbox=(0, 0, 8, 8), polygon=[(0, 0), (8, 8)], **i
            )
            for i in instances
        ],
        thresholds=THRESHOLDS,
        tiles=1,
        timings_ms={"decode": 1.0},
    )


def summary(instances: list[dict], verdict: str) -> Summary:
    """What a truck report reads of a frame."""
    return Summary(verdict=verdict, scores={}, instances=instances)


REPO = Path(__file__).resolve().parents[2]


class Server(Child):
    """scrapscan-serve in a subprocess; start() waits for /readyz."""

    module = "service"
    stop_s = 60.0

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{self.module}-{self.port}.log"

    def args(self) -> list[str]:
        return ["--data-dir", str(self.data_dir), "--log-level", "info"]

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", str(self.port), *self.args()],
            cwd=REPO,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() reaches its children
        )
        proc = self.proc
        try:
            wait_ready(self.url, lambda: proc.poll() is None, 60)
        except RuntimeError as err:
            raise RuntimeError(f"{err}: {self.log.read_text()[-2000:]}") from None

    def _signal(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL to the process and its children (--processes)."""
        os.killpg(proc.pid, signal.SIGKILL)


class Worker(Server):
    """scrapscan-worker in a subprocess, consumer `name`; start() waits for /readyz."""

    module = "service.worker"

    def __init__(self, folder: Path, env: dict[str, str], name: str) -> None:
        super().__init__(folder / name, env)
        self.name = name

    def args(self) -> list[str]:
        return ["--name", self.name, "--log-level", "info"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("service")
    srv = Server(
        root / "data",
        {
            "SCRAPSCAN_MAX_UPLOAD_BYTES": str(3_000_000),
            "SCRAPSCAN_MAX_PIXELS": str(5000 * 5000),
            "SCRAPSCAN_REDIS_URL": "redis://user:secret@cache.local:6379/0",
            "SCRAPSCAN_THREADS": "2",
            "SCRAPSCAN_CAMERAS": '{"crane-learned": {"bed": "learned"}}',
        },
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def loose_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle with thresholds that find instances on most synthetic frames.

    (The demo bundle's calibrated ones pass most of them as clean; feedback and the
    dashboard need instances to show.)
    """
    folder = tmp_path_factory.mktemp("loose") / "bundle"
    shutil.copytree(REPO / "models" / "demo", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    post = manifest["postprocess"]
    post["class_thresholds"] = dict.fromkeys(post["class_thresholds"], 0.5)
    post.update(pixel_threshold=0.5, min_area_px=64, min_score=0.0, reject_score=0.99)
    post["calibration"]["frame_score_quantiles"] = {"anomaly": {"0.1": 0.2, "0.5": 0.6, "0.9": 0.9}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def running(srv: Server) -> Iterator[Server]:
    """A fixture's body: the server started, yielded, stopped."""
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def loose_server(tmp_path_factory: pytest.TempPathFactory, loose_bundle: Path) -> Iterator[Server]:
    """An embedded service on `loose_bundle`, without keys."""
    env = {"SCRAPSCAN_BUNDLE": str(loose_bundle), "SCRAPSCAN_THREADS": "2"}
    yield from running(Server(tmp_path_factory.mktemp("loose-service") / "data", env))


@pytest.fixture(scope="module")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, s3_url: str
) -> Iterator[Server]:
    """The scaled-out shape as deployed: scrapscan-serve with SCRAPSCAN_STORE=redis, one
    worker, and the uploads, masks and overlays in a bucket (`srv.bucket`)."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    bucket = _new_bucket(s3_url)
    objects = {"bucket": bucket.bucket, "prefix": bucket.prefix, "endpoint_url": s3_url}
    env = {
        "SCRAPSCAN_STORE": "redis",
        "SCRAPSCAN_REDIS_URL": redis_url,
        "SCRAPSCAN_THREADS": "2",
        "SCRAPSCAN_OBJECTS": json.dumps({**objects, "region": "us-east-1"}),
    }
    folder = tmp_path_factory.mktemp("service-redis")
    srv = Server(folder / "data", env)
    srv.bucket = bucket  # type: ignore[attr-defined]
    worker = Worker(folder, env, "worker-1")
    srv.start()
    worker.start()
    yield srv
    worker.stop()
    srv.stop()


KEYS = {role: f"{role}-key-0123456789" for role in ("camera", "dashboard", "operator", "admin")}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_keys(path: Path, keys: dict[str, list[str]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({role: [digest(k) for k in ks] for role, ks in keys.items()}))
    tmp.replace(path)  # as a Secret update does: the file is swapped whole


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The embedded service with API keys, one per role."""
    folder = tmp_path_factory.mktemp("keyed")
    keys_file = folder / "keys.json"
    write_keys(keys_file, {role: [key] for role, key in KEYS.items()})
    srv = Server(
        folder / "data",
        {"SCRAPSCAN_API_KEYS_FILE": str(keys_file), "SCRAPSCAN_THREADS": "2"},
    )
    srv.keys_file = keys_file  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def bucket(s3_url: str) -> ObjectStore:
    """A new bucket on the session's S3 server, used under the prefix yard-1/."""
    return _new_bucket(s3_url)


def _new_bucket(s3_url: str) -> ObjectStore:
    import boto3

    name = f"scrapscan-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").create_bucket(Bucket=name)
    return ObjectStore(name, "yard-1/", endpoint_url=s3_url, region="us-east-1")
