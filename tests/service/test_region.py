"""Instances described and checked by a bundle's region encoder, through HTTP."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from common.bundle import load_bundle, sha256_of
from model_export.region import REGION_FILE, export_region_encoder
from training.synth import render_frame

from .conftest import REPO, Server, Worker, running
from .test_api import jpeg, post

pytestmark = pytest.mark.slow


def without_region(folder: Path) -> Path:
    """The demo bundle without its region encoder."""
    shutil.copytree(REPO / "models" / "demo", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["region"] = None
    manifest["files"].pop(REGION_FILE, None)
    (folder / REGION_FILE).unlink(missing_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    load_bundle(folder)
    return folder


def with_region(folder: Path, checkpoint: Path, **verify: object) -> Path:
    """The demo bundle with this region encoder and its descriptions (in place of its own)."""
    shutil.copytree(REPO / "models" / "demo", folder)
    info = export_region_encoder(checkpoint, folder / REGION_FILE, 32)
    info.pop("parity")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["region"] = {**info, **verify}
    path = folder / REGION_FILE
    manifest["files"][REGION_FILE] = {
        "kind": "region_encoder",
        "precision": "fp32",
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    load_bundle(folder)
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A service whose bundle has no region encoder."""
    root = tmp_path_factory.mktemp("plain")
    env = {"SCRAPSCAN_BUNDLE": str(without_region(root / "bundle")), "SCRAPSCAN_THREADS": "2"}
    yield from running(Server(root / "data", env))


@pytest.fixture(scope="module")
def strict(tmp_path_factory, region_checkpoint):
    """A service whose region encoder verifies nothing (margin 10) and drops the unverified."""
    root = tmp_path_factory.mktemp("region")
    bundle = with_region(
        root / "bundle", region_checkpoint, verify_margin=10.0, drop_unverified=True
    )
    env = {"SCRAPSCAN_BUNDLE": str(bundle), "SCRAPSCAN_THREADS": "2"}
    yield from running(Server(root / "data", env))


def test_each_instance_is_described_and_an_unverified_one_does_not_count(strict, plain):
    # two frames on which the demo bundle serves instances
    frames = [jpeg(render_frame(31, i, 1280, 720).image) for i in (3, 7)]
    truck = {"truck_id": "TRK-VERIFY"}
    unchecked = [post(plain, f, truck, wait=True).json()["result"] for f in frames]
    checked = [post(strict, f, truck, wait=True).json()["result"] for f in frames]
    assert any(r["instances"] for r in unchecked), "no frame with an instance to check"
    classes = {"normal", "motor", "cable", "spray_can"}
    for before, after in zip(unchecked, checked, strict=True):
        # the same instances, each now with what the region encoder says of it
        keep = ("class", "score", "bbox", "area")
        assert [{k: i[k] for k in keep} for i in after["instances"]] == [
            {k: i[k] for k in keep} for i in before["instances"]
        ]
        for i in after["instances"]:
            assert i["description"] and i["description_class"] in classes
            assert isinstance(i["verification"], float) and i["verification"] < 10
            assert i["verified"] is False
        for i in before["instances"]:
            assert i["description"] is None and i["verified"] is None
        assert after["verdict"] == "clean"  # shown, and not counted
        assert "describe" in after["timings_ms"] or not after["instances"]
        assert (after["thresholds"]["verify_margin"], after["thresholds"]["drop_unverified"]) == (
            10.0,
            True,
        )
        assert before["thresholds"]["verify_margin"] is None
    # the truck's report counts what the verdicts counted: nothing here, the instances there
    url = "/v1/trucks/TRK-VERIFY/report"
    dropped, counted = httpx.get(strict.url + url).json(), httpx.get(plain.url + url).json()
    assert dropped["verdict"] == "clean" and dropped["evidence"] == []
    assert all(c["highest_score"] is None for c in dropped["classes"].values())
    assert counted["evidence"] and all(e["description"] is None for e in counted["evidence"])


def describe(srv: Server, frame_id: str, body: object):
    return httpx.post(f"{srv.url}/v1/frames/{frame_id}/describe", json=body, timeout=60)


def test_a_region_a_person_points_at_is_described(strict, plain, server):
    done = post(strict, jpeg(render_frame(31, 1, 1280, 720).image), wait=True).json()
    fid = done["frame_id"]
    r = describe(strict, fid, {"box": [600, 300, 700, 380]})
    assert r.status_code == 200, r.text
    said = r.json()
    texts = [d["text"] for d in said["descriptions"]]
    assert len(texts) == 5 and len(set(texts)) == 5
    sims = [d["similarity"] for d in said["descriptions"]]
    assert sims == sorted(sims, reverse=True)
    assert said["description_class"] == said["descriptions"][0]["class"]
    assert said["verified"] is False  # the margin is 10
    by_polygon = describe(
        strict, fid, {"polygon": [[600, 300], [700, 300], [700, 380], [600, 380]]}
    )
    assert by_polygon.json() == said  # the same region, as an outline
    for body, code in [
        ({"box": [1200, 600, 1400, 700]}, "invalid_region"),  # past the 1280 x 720 frame
        ({"polygon": [[1, 1], [5, 5]]}, "invalid_request"),  # two corners
        ({"box": [1, 1, 5, 5], "polygon": [[1, 1], [5, 1], [5, 5]]}, "invalid_request"),
        ({}, "invalid_request"),
        ({"box": [10, 10, 10, 50]}, "invalid_region"),  # no width
    ]:
        r = describe(strict, fid, body)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (body, r.text)
    r = describe(strict, "f" * 32, {"box": [0, 0, 10, 10]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "frame_not_found"
    done = post(plain, jpeg(render_frame(31, 1, 1280, 720).image), wait=True).json()
    r = describe(plain, done["frame_id"], {"box": [0, 0, 10, 10]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_region_encoder"
    # the demo bundle describes what it finds, and drops nothing (it sets no margin)
    image = jpeg(render_frame(31, 3, 1280, 720).image)  # two instances
    shown = post(server, image, {"truck_id": "TRK-SAID"}, wait=True).json()
    assert all(i["description"] and i["verified"] is None for i in shown["result"]["instances"])
    # the truck report shows what its evidence was seen as
    top = max(shown["result"]["instances"], key=lambda i: i["score"])
    (evidence,) = httpx.get(f"{server.url}/v1/trucks/TRK-SAID/report").json()["evidence"]
    assert evidence["description"] == top["description"]
    r = describe(server, shown["frame_id"], {"box": [600, 300, 700, 380]})
    assert r.status_code == 200 and r.json()["verified"] is None


def test_scaled_out_a_worker_describes_and_a_silent_one_times_out(
    tmp_path_factory, region_checkpoint, redis_url
):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    root = tmp_path_factory.mktemp("region-redis")
    bundle = with_region(root / "bundle", region_checkpoint, verify_margin=-10.0)
    env = {
        "SCRAPSCAN_STORE": "redis",
        "SCRAPSCAN_REDIS_URL": redis_url,
        "SCRAPSCAN_BUNDLE": str(bundle),
        "SCRAPSCAN_THREADS": "1",
        "SCRAPSCAN_WAIT_TIMEOUT_S": "3",  # how long the API waits for a worker's answer
    }
    api, worker = Server(root / "data", env), Worker(root, env, "worker-1")
    api.start()
    worker.start()
    try:
        fid = post(api, jpeg(render_frame(31, 2, 1280, 720).image)).json()["frame_id"]
        for _ in range(600):
            if httpx.get(f"{api.url}/v1/frames/{fid}").json()["status"] == "done":
                break
            time.sleep(0.1)
        r = describe(api, fid, {"box": [600, 300, 700, 380]})
        assert r.status_code == 200, r.text
        assert r.json()["verified"] is True and len(r.json()["descriptions"]) == 5  # margin -10
        r = describe(api, fid, {"box": [600, 300, 7000, 380]})  # checked by the API itself
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_region"
        worker.stop()
        r = describe(api, fid, {"box": [600, 300, 700, 380]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "describe_timeout"
        assert redis.Redis.from_url(redis_url).llen("scrapscan:describe") == 0  # taken back
    finally:
        worker.stop()
        api.stop()


def test_the_instances_of_frames_in_flight_share_the_region_encoders_batches():
    """The demo bundle's region encoder behind its batcher: the instances of three frames
    processed at once (their tiles in one engine batch; the encoder held 0.5 s a call, so
    that regions pile up as under load) go through it in shared batches, and each instance
    is told what the encoder says of it alone (the per-frame path's answer)."""
    import asyncio

    import cv2
    import numpy as np

    from service.serving import open_pipeline
    from service.settings import BatchSettings, Settings

    settings = Settings(
        bundle=REPO / "models" / "demo", batch=BatchSettings(max_batch=64, max_wait_ms=1500)
    )
    frames = [render_frame(4, i, 1280, 720, cover=0).image for i in (5, 6, 9)]  # with finds
    uploads = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]

    async def run():
        pipeline = await open_pipeline(settings)
        records = []
        pipeline.region_batcher.on_batch = records.append
        encode = pipeline.region.infer

        def slow(regions, text=None):  # the regions that come meanwhile form the next batch
            time.sleep(0.5)
            return encode(regions, text)

        pipeline.region.infer = slow
        try:
            done = await asyncio.gather(*(pipeline.process(u, "crane-1") for u in uploads))
            alone = []
            for u in uploads:  # the same frames through the encoder one frame at a time
                a = await pipeline.analyse(u, "crane-1")
                alone.append(pipeline.region.describe(a.frame, a.findings.instances))
            return done, alone, records
        finally:
            await pipeline.stop()

    done, alone, records = asyncio.run(run())
    counts = [len(p.result.instances) for p in done]
    assert sum(counts) == sum(r.size for r in records) and sum(c > 0 for c in counts) >= 2
    assert any(len(set(r.owners)) >= 2 for r in records)  # instances of two frames at once
    for processed, said in zip(done, alone, strict=True):
        got = [(i.description, i.verification) for i in processed.result.instances]
        want = [(d.description, d.verification) for d in said]
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-4)
