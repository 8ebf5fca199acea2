"""Operators' feedback back into training: judged through the API, exported by the CLI and
the admin route, checked by scrapscan-data check, trained on for two steps."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from common.classes import CLASS_NAMES, IGNORE_INDEX
from service.feedback_export import _region
from tools.data_cli import main as data_main
from training.synth import render_frame
from training.train import main as train_main

from .test_api import jpeg, post

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def judged(loose_server):
    """Two frames judged in every way the dashboard can, and one frame nobody judged."""
    frames = []
    for seed in (33, 34, 35):
        r = post(
            loose_server,
            jpeg(render_frame(seed, 0, 1920, 1080).image),
            {"truck_id": "TRK-EX"},
            wait=True,
        )
        assert r.status_code == 200
        frames.append(r.json())
    first, second, _unjudged = frames
    assert len(first["result"]["instances"]) >= 3 and second["result"]["instances"]
    given = [
        (first, {"label": "confirmed", "instance": 0}),
        (first, {"label": "confirmed", "instance": 1}),
        (first, {"label": "false_alarm", "instance": 1}),  # changed their mind: this counts
        (first, {"label": "other_class", "instance": 2, "class": "spray_can"}),
        (first, {"label": "missed", "box": [10, 20, 30, 40], "class": "cable"}),
        (second, {"label": "false_alarm", "instance": 0}),
    ]
    for frame, body in given:
        url = f"{loose_server.url}/v1/frames/{frame['frame_id']}/feedback"
        assert httpx.post(url, json=body).status_code == 201
    return first, second


def test_the_export_is_a_folder_training_reads(loose_server, judged, tmp_path, capsys):
    first, second = judged
    out = tmp_path / "feedback"
    assert (
        data_main(["export-feedback", "--data-dir", str(loose_server.data_dir), "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    coco = json.loads((out / "annotations.json").read_text())
    boxes = sum(len(i["to_label"]) for i in coco["images"])
    assert f"{len(coco['images'])} judged frames, {len(coco['annotations'])} labelled" in printed
    assert f"{boxes} missed boxes to label" in printed
    names = {i["frame_id"]: i for i in coco["images"]}
    assert first["frame_id"] in names and second["frame_id"] in names and len(names) >= 2
    mine = [a for a in coco["annotations"] if a["image_id"] == names[first["frame_id"]]["id"]]
    inst = first["result"]["instances"]
    classes = sorted((a["category_id"], a["feedback"]) for a in mine)
    want = sorted(
        [
            (CLASS_NAMES.index(inst[0]["class"]), "confirmed"),
            (CLASS_NAMES.index("spray_can"), "other_class"),
        ]
    )
    assert classes == want
    assert names[first["frame_id"]]["to_label"] == [
        {"box": [10, 20, 30, 40], "class": "cable", "by": "anonymous"}
    ]

    mask = cv2.imread(str(out / "masks" / f"{first['frame_id']}.png"), cv2.IMREAD_UNCHANGED)
    h, w = first["result"]["image"]["height"], first["result"]["image"]["width"]
    assert mask.shape == (h, w)
    assert (mask[20:60, 10:40] == IGNORE_INDEX).all()  # the missed box: to be outlined
    region = _region(inst[2]["polygon"], h, w)
    assert (mask[region] == CLASS_NAMES.index("spray_can")).mean() > 0.5  # unless overlapped
    if len(inst) > 3:  # regions nobody judged are unknown
        assert IGNORE_INDEX in mask[_region(inst[3]["polygon"], h, w)]
    assert np.isin(mask, [0, 1, 2, 3, IGNORE_INDEX]).all()
    assert len(json.loads((out / "feedback.json").read_text())) >= 6
    assert data_main(["check", str(out), "--decode"]) == 0
    assert "no problems found" in capsys.readouterr().out

    run = tmp_path / "run"
    config = ["--config", str(CONFIGS / "tiny.yaml"), "--data", str(out), "--out", str(run)]
    assert train_main([*config, "--max-steps", "2"]) == 0
    steps = [
        json.loads(line)["step"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"step"' in line
    ]
    assert max(steps) == 2


def test_the_admin_route_streams_the_same_folder_as_a_zip(loose_server, judged):
    r = httpx.get(f"{loose_server.url}/v1/feedback/export", timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    first = judged[0]["frame_id"]
    assert {
        "feedback/annotations.json",
        "feedback/feedback.json",
        f"feedback/masks/{first}.png",
    } <= set(names)
    assert f"feedback/images/{first}.jpg" in names
    later = httpx.get(
        f"{loose_server.url}/v1/feedback/export", params={"since": "2100-01-01T00:00:00Z"}
    )
    coco = json.loads(zipfile.ZipFile(io.BytesIO(later.content)).read("feedback/annotations.json"))
    assert coco["images"] == [] and coco["annotations"] == []
    bad = httpx.get(f"{loose_server.url}/v1/feedback/export", params={"since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_query"


def test_export_refuses_a_folder_that_exists_and_a_store_that_is_not_there(
    loose_server, tmp_path, capsys
):
    assert (
        data_main(
            ["export-feedback", "--data-dir", str(loose_server.data_dir), "--out", str(tmp_path)]
        )
        == 1
    )
    assert f"{tmp_path} exists" in capsys.readouterr().err
    assert (
        data_main(
            ["export-feedback", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "no scrapscan.db" in capsys.readouterr().err
    assert data_main(["export-feedback", "--since", "soon", "--out", str(tmp_path / "o")]) == 2
    assert "--since must be an RFC 3339 time" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_confirmed_text_class_instance_is_left_to_label_not_trained_as_a_class():
    """A class defined by text has no category in the training data: its confirmed region is
    ignored in the mask and listed to label, with its name."""
    from service.feedback import FrameFeedback
    from service.feedback_export import _frame_labels

    from .conftest import frame_result

    result = frame_result(
        [
            {"class": "gas_cylinder", "score": 0.9, "area": 64, "zero_shot": True},
            {"class": "motor", "score": 0.7, "area": 64},
        ]
    )
    result = result.model_copy(
        update={
            "instances": [
                i.model_copy(update={"polygon": [(x0, 4), (x0 + 8, 4), (x0 + 8, 12), (x0, 12)]})
                for i, x0 in zip(result.instances, (4, 30), strict=True)
            ]
        }
    )
    items = [
        FrameFeedback(
            id=str(k), frame_id="f", by="operator", at=1.0 + k, label="confirmed", instance=k
        )
        for k in range(2)
    ]
    mask, annotations, to_label = _frame_labels(result, items, 1, 1)
    assert [a["category_id"] for a in annotations] == [CLASS_NAMES.index("motor")]
    assert [(t["class"], t["by"]) for t in to_label] == [("gas_cylinder", "operator")]
    assert (mask[6:10, 6:10] == IGNORE_INDEX).all()
    assert (mask[6:10, 32:36] == CLASS_NAMES.index("motor")).all()
