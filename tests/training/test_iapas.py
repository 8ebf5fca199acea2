"""IAP-AS with every model built from a tiny random config and saved as a yard would give it
(Grounding DINO and SAM folders from save_pretrained, the tagger's CLIP): the whole pipeline
on synthetic frames through scrapscan-eval --iap-as. The language model is a local HTTP
server answering as an OpenAI-compatible endpoint would (no model can run here)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from training.evaluate import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """Two synthetic frames: a handful of patches, so that two runs stay quick."""
    from training.synth import write_dataset

    out = tmp_path_factory.mktemp("iapas-frames")
    write_dataset(out, frames=2, seed=3, width=1280, height=720, workers=1)  # clean and not
    return out


def config(tmp_path: Path, weights, tiny_config, **changes) -> Path:
    tags = tmp_path / "tags.txt"
    tags.write_text("# a comment\nsteel plate\nrebar\n\ncrack\npipe\nscrap metal\n")
    clip = tiny_config.model.model_dump(mode="json")  # pretrained None: random weights
    data = {
        "name": "iap-as-test",
        **{k: str(v) for k, v in weights.items()},
        "tagger": {
            "clip": {**clip, "input_size": 224},
            "vocabulary": str(tags),
            "normal_images": 3,
            "top_k": 2,
            "max_tags": 3,
        },
        # random weights score every box low: thresholds of 0 keep boxes, so that every
        # stage (NMS, the size filter, SAM, the score) has work
        "thresholds": {"box": 0.0, "text": 0.0, "nms_iou": 0.5},
        **changes,
    }
    path = tmp_path / "iap-as.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class _LLM(BaseHTTPRequestHandler):
    asked: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _LLM.asked.append({"path": self.path, "body": body, "auth": self.headers["Authorization"]})
        answer = {"choices": [{"message": {"content": "1. with copper windings\n- half buried\n"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_the_whole_pipeline_runs_and_its_report_can_be_repeated(
    iapas_weights, tiny_config, frames, tmp_path, capsys, monkeypatch
):
    server = HTTPServer(("127.0.0.1", 0), _LLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("YARD_LLM_KEY", "secret")
    llm = {
        "url": f"http://127.0.0.1:{server.server_port}/v1",
        "model": "yard-llm",
        "api_key_env": "YARD_LLM_KEY",
        "clauses": 2,
    }
    try:
        cfg = config(tmp_path, iapas_weights, tiny_config, prompts={"llm": llm})
        out = tmp_path / "report"
        assert main(["--iap-as", str(cfg), "--data", str(frames), "--out", str(out)]) == 0
    finally:
        server.shutdown()
    report = json.loads((out / "report.json").read_text())
    iap = report["iap_as"]
    assert report["binary_mode"] == "iap-as" and report["iap_as_config"] == str(cfg)
    assert 0 < len(iap["tags"]) <= 3
    assert set(iap["tags"]) <= {"steel plate", "rebar", "pipe", "scrap metal"}  # crack excluded
    assert "CLIP zero-shot tagging" in iap["tagger"] and "Recognize Anything" in iap["tagger"]
    motor = iap["prompts"]["motor"]
    assert motor[:2] == ["electric motor", "motor"]
    assert f"electric motor among {iap['tags'][0]}" in motor
    assert motor[-2:] == ["electric motor with copper windings", "electric motor half buried"]
    assert iap["prompts"]["anomaly"] == ["abnormal object", "defect"]
    assert iap["prompt_source"] == f"templates and yard-llm at {llm['url']}"
    assert len(_LLM.asked) == 3 and _LLM.asked[0]["path"] == "/v1/chat/completions"
    assert _LLM.asked[0]["auth"] == "Bearer secret"
    assert "rebar" in _LLM.asked[0]["body"]["messages"][0]["content"] or iap["tags"]
    assert 0 < iap["size_threshold"] <= 1 and iap["size_source"].startswith(("fitted", "default"))
    assert report["patches"] > 0
    assert 0 <= report["pixel"]["auroc"] <= 1 and report["pixel"]["auroc"] != 0.5  # not constant
    assert set(report["per_class_ap"]) == {"motor", "cable", "spray_can"}

    # the same prompts again, with no language model: from the report
    again = config(
        tmp_path, iapas_weights, tiny_config, prompts={"from_report": str(out / "report.json")}
    )
    out2 = tmp_path / "again"
    assert main(["--iap-as", str(again), "--data", str(frames), "--out", str(out2)]) == 0
    repeated = json.loads((out2 / "report.json").read_text())["iap_as"]
    assert repeated["prompts"] == iap["prompts"]
    assert repeated["prompt_source"] == str(out / "report.json")
    assert len(_LLM.asked) == 3


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"sam": "/nowhere/sam"}, "sam: /nowhere/sam is not a folder of weights"),
        ({"grounding_dino": "/tmp"}, "grounding_dino: /tmp is not a folder of weights"),
        ({"thresholds": {"box": 1.5}}, "thresholds.box"),
        ({"prompts": {"from_report": "/nowhere/report.json"}}, "prompts.from_report"),
    ],
)
def test_a_wrong_config_is_named_before_any_work(
    iapas_weights, tiny_config, frames, tmp_path, capsys, change, named
):
    cfg = config(tmp_path, iapas_weights, tiny_config, **change)
    out = tmp_path / "report"
    assert main(["--iap-as", str(cfg), "--data", str(frames), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert named in err and str(cfg) in err
    assert not out.exists()
