import json

import numpy as np
import pytest
import torch

from training.checkpoint import CheckpointError, load_trained
from training.data import PatchSet, load_frames
from training.evaluate import evaluate, main
from training.metrics import pixel_metrics
from training.model import build_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def test_checkpoint_round_trip(checkpoint, tiny_config, images):
    model, cfg = load_trained(checkpoint)
    assert cfg == tiny_config
    torch.manual_seed(0)
    reference = build_model(tiny_config.model).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images).class_probs, reference(images).class_probs)


def test_streamed_evaluation_matches_the_exact_metrics(checkpoint, synth_dir):
    model, _ = load_trained(checkpoint)
    patches = PatchSet(load_frames(synth_dir))
    ev = evaluate(model, patches, batch_size=4, sigma=4.0, keep=2)
    # the same maps, all in memory, through the exact path
    from training.evaluate import predict

    maps, masks = [], []
    for i in range(len(patches)):
        p = patches[i]
        maps.append(predict(model, p.image[None], 4.0, "cpu")[0][0])
        masks.append(p.mask)
    maps, masks = np.stack(maps), np.stack(masks)
    valid = masks != 255
    exact = pixel_metrics(maps, valid & (masks > 0), valid=valid)
    for key in ("auroc", "ap", "aupro", "f1_max"):
        assert ev.pixel[key] == pytest.approx(exact[key], abs=1e-3), key
    assert ev.patches == len(patches)
    assert len(ev.worst) == 2 and len(ev.best) <= 2


def test_eval_command_writes_report_curves_and_overlays(checkpoint, synth_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(synth_dir),
                "--out",
                str(out),
                "--overlays",
                "2",
                "--binary-mode",
                "class_sum",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert set(report["pixel"]) == {"auroc", "ap", "aupro", "f1_max", "f1_threshold"}
    assert all(0 <= v <= 1 for k, v in report["pixel"].items() if k != "f1_threshold")
    assert report["binary_mode"] == "class_sum"
    assert set(report["per_class_ap"]) == {"motor", "cable", "spray_can"}
    for name in ("roc.png", "pr.png", "worst_1.jpg", "worst_2.jpg"):
        assert (out / name).stat().st_size > 1000
    assert "AUROC" in capsys.readouterr().out
    assert main(["--checkpoint", str(checkpoint), "--data", str(synth_dir), "--out", str(out)]) == 2
    assert "already holds report.json" in capsys.readouterr().err


def test_bad_checkpoints_are_named(tmp_path, synth_dir, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a checkpoint"):
        load_trained(junk)
    with pytest.raises(CheckpointError, match="no such file"):
        load_trained(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    assert (
        main(["--checkpoint", str(other), "--data", str(synth_dir), "--out", str(tmp_path / "r")])
        == 1
    )
    assert "not a scrapscan-train checkpoint" in capsys.readouterr().err
