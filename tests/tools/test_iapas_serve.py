"""The service with the IAP-AS engine plugged in (scrapscan-iap-as): real HTTP through uvicorn,
the demo bundle's tiling and bed, tiny random Grounding DINO and SAM in place of the model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import httpx
import pytest

from common.bundle import load_bundle
from service import engine as engine_module
from service.engine import EngineError, open_engine
from service.local import running_service
from service.settings import Settings
from tools.iapas_serve import main, plug
from training.iapas import load_iapas_config
from training.synth import render_frame

from ..training.test_iapas import config

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
STAGE_ONE = {
    "tags": ["steel plate", "rebar"],
    "prompts": {
        "motor": ["electric motor", "motor among rebar"],
        "cable": ["cable"],
        "spray_can": ["spray can"],
        "anomaly": ["abnormal object"],
    },
    "size_threshold": 0.5,
}


@pytest.fixture
def report(tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"pixel": {}, "iap_as": STAGE_ONE}))
    return path


def test_the_service_serves_frames_with_the_iap_as_engine(
    iapas_weights, tiny_config, report, tmp_path, monkeypatch
):
    monkeypatch.setattr(engine_module, "PLUGGED", {})  # plugged for this test only
    plug(load_iapas_config(config(tmp_path, iapas_weights, tiny_config)), report)
    frame = render_frame(41, 0, 1280, 720).image
    _, data = cv2.imencode(".jpg", frame)
    settings = Settings(bundle=DEMO, data_dir=tmp_path / "data", engine="iap-as")
    with running_service(settings) as url:
        r = httpx.post(
            f"{url}/v1/frames",
            params={"wait": "true"},
            data={"camera_id": "crane-1"},
            files={"image": ("f.jpg", data.tobytes(), "image/jpeg")},
            timeout=300,
        )
        assert r.status_code == 200, r.text
        result = r.json()["result"]
        metrics = httpx.get(f"{url}/metrics").text
    assert result["model"]["name"] == "demo" and result["tiles"] > 0
    assert set(result["scores"]) == {"anomaly", "motor", "cable", "spray_can"}
    assert result["scores"]["anomaly"] > 0  # the boxes' masks reached the merged map
    assert 'engine="iap-as"' in metrics


def test_without_the_launcher_engine_iap_as_says_how_to_start_it(monkeypatch):
    monkeypatch.setattr(engine_module, "PLUGGED", {})
    with pytest.raises(EngineError, match="scrapscan-iap-as serve"):
        open_engine(load_bundle(DEMO), "iap-as")


def test_a_report_without_stage_one_is_refused_before_any_model(
    iapas_weights, tiny_config, tmp_path, capsys
):
    cfg = config(tmp_path, iapas_weights, tiny_config)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"pixel": {}}))
    for given, said in ((bare, "no iap_as tags"), (tmp_path / "none.json", "not a readable")):
        assert main(["serve", "--config", str(cfg), "--report", str(given)]) == 1
        err = capsys.readouterr().err
        assert said in err and str(given) in err
