"""Instances described and checked by a bundle's region encoder, through HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.bundle import load_bundle, sha256_of
from model_export.region import REGION_FILE, export_region_encoder
from training.synth import render_frame

from .conftest import REPO, Server, running
from .test_api import jpeg, post

pytestmark = pytest.mark.slow


def with_region(folder: Path, checkpoint: Path, **verify: object) -> Path:
    """The demo bundle with a region encoder and its descriptions added."""
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
def strict(tmp_path_factory, region_checkpoint):
    """A service whose region encoder verifies nothing (margin 10) and drops the unverified."""
    root = tmp_path_factory.mktemp("region")
    bundle = with_region(
        root / "bundle", region_checkpoint, verify_margin=10.0, drop_unverified=True
    )
    env = {"SCRAPSCAN_BUNDLE": str(bundle), "SCRAPSCAN_THREADS": "2"}
    yield from running(Server(root / "data", env))


def test_each_instance_is_described_and_an_unverified_one_does_not_count(strict, server):
    frames = [jpeg(render_frame(31, i, 1280, 720).image) for i in range(3)]
    plain = [post(server, f, wait=True).json()["result"] for f in frames]
    checked = [post(strict, f, wait=True).json()["result"] for f in frames]
    assert any(r["instances"] for r in plain), "no frame with an instance to check"
    classes = {"normal", "motor", "cable", "spray_can"}
    for before, after in zip(plain, checked, strict=True):
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
