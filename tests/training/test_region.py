"""The region encoder: CLIP with an alpha input, its data, its loss, its command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from common.regions import crop_box
from training.data import load_frames
from training.model import WeightsError
from training.region.config import LoraConfig, RegionModelConfig, RegionRunConfig
from training.region.data import (
    RegionCrops,
    found_regions,
    labelled_regions,
    negative_regions,
    normal_regions,
    split_mask,
)
from training.region.describe import DescriptionError, load_descriptions
from training.region.model import build_region_encoder, load_alpha_weights
from training.region.train import main, supcon_loss

from ..conftest import CONFIGS

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 56, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
MODEL = RegionModelConfig(
    clip_model="region-test", pretrained=None, quick_gelu=False, tiny_config=TINY, input_size=56
)


def inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    alpha = torch.zeros(n, 1, 56, 56)
    alpha[:, :, 14:42, 14:42] = 1
    return torch.randn(n, 3, 56, 56, generator=g), alpha


def test_the_untouched_encoder_is_clip_and_the_mask_steers_it_once_learned():
    torch.manual_seed(0)
    enc = build_region_encoder(MODEL, LoraConfig(rank=0)).eval()
    x, a = inputs()
    clip = F.normalize(enc.clip.encode_image(x), dim=-1)
    with torch.no_grad():
        assert torch.allclose(enc.encode_region(x, a), clip, atol=1e-6)
        torch.nn.init.normal_(enc.conv1_alpha.weight, std=0.1)
        inside, outside = enc.encode_region(x, a), enc.encode_region(x, 1 - a)
    assert (inside - outside).abs().max() > 1e-3
    assert torch.allclose(inside.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_lora_trains_adapters_and_the_patch_convolutions_only():
    torch.manual_seed(0)
    enc = build_region_encoder(MODEL, LoraConfig(rank=4, alpha=8))
    learning = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert learning and all(
        "lora_" in n or n.startswith(("clip.visual.conv1.", "conv1_alpha.")) for n in learning
    )
    assert any("lora_" in n and ".attn" in n for n in learning)  # attention too, not only MLPs
    groups = enc.parameter_groups()
    assert {id(p) for p in groups["tower"]} == {
        id(p) for n, p in enc.named_parameters() if "lora_" in n
    }
    x, a = inputs()
    with torch.no_grad():  # LoRA starts at zero: the same model
        plain = F.normalize(enc.clip.encode_image(x), dim=-1)
        assert torch.allclose(enc.encode_region(x, a), plain, atol=1e-6)


def test_alpha_weights_are_read_from_a_file_or_refused_with_the_reason(tmp_path):
    torch.manual_seed(1)
    source = build_region_encoder(MODEL, LoraConfig(rank=0))
    torch.nn.init.normal_(source.conv1_alpha.weight)
    state = {f"visual.{k}": v for k, v in source.visual.state_dict().items()}
    state["visual.conv1_alpha.weight"] = source.conv1_alpha.weight.detach().clone()
    good = tmp_path / "alpha.pth"
    torch.save(state, good)
    torch.manual_seed(2)
    enc = build_region_encoder(MODEL.model_copy(update={"alpha_weights": good}), LoraConfig(rank=0))
    assert torch.equal(enc.conv1_alpha.weight, source.conv1_alpha.weight)
    assert torch.equal(enc.visual.conv1.weight, source.visual.conv1.weight)

    plain = tmp_path / "plain.pth"
    torch.save({k: v for k, v in state.items() if "alpha" not in k}, plain)
    with pytest.raises(WeightsError, match="holds no conv1_alpha.weight"):
        load_alpha_weights(enc, plain)
    state["visual.conv1.weight"] = torch.zeros(1, 3, 14, 14)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="other.pth: does not fit region-test"):
        load_alpha_weights(enc, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="junk.pth: cannot read"):
        load_alpha_weights(enc, tmp_path / "junk.pth")


def test_supervised_contrastive_loss_by_hand_and_aligned_features_score_lower():
    f = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=-1)
    labels = torch.tensor([0, 0, 1])
    t = 0.5
    s = (f @ f.T / t).tolist()
    # anchors 0 and 1 have one positive each; anchor 2 has none and is left out
    l0 = -(s[0][1] - math.log(math.exp(s[0][1]) + math.exp(s[0][2])))
    l1 = -(s[1][0] - math.log(math.exp(s[1][0]) + math.exp(s[1][2])))
    assert supcon_loss(f, labels, t).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    aligned = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]), dim=-1)
    assert supcon_loss(aligned, labels, t) < supcon_loss(f, labels, t)


def test_a_class_mask_splits_by_components_or_by_dbscan_where_objects_touch():
    mask = np.zeros((40, 60), bool)
    mask[5:25, 5:25] = True
    mask[5:25, 35:55] = True
    mask[14:16, 25:35] = True  # a thin bridge: one component
    assert len(split_mask(mask, "components")) == 1
    parts = split_mask(mask, "dbscan", eps=1.5)
    boxes = sorted(box for box, _ in parts)
    assert len(parts) == 2 and boxes[0][:2] == (5, 5) and boxes[1][0] >= 30
    with pytest.raises(ValueError, match="components or dbscan"):
        split_mask(mask, "kmeans")


def test_regions_come_from_labels_plain_scrap_and_served_false_regions(synth_dir, tmp_path):
    frames = load_frames(synth_dir)
    labelled = labelled_regions(frames)
    assert len(labelled) == sum(len(f.instances) for f in frames.frames) > 0
    normal = normal_regions(frames, 2, [40, 60], seed=3)
    assert len(normal) == 2 * len(frames.frames)
    for r in normal:  # inside the bed, on no contaminant
        x, y, w, h = r.box
        assert not (r.frame.load_mask()[y : y + h, x : x + w][r.pixels()] > 0).any()
    assert [r.box for r in normal] == [r.box for r in normal_regions(frames, 2, [40, 60], 3)]
    f = frames.frames[0]
    listed = {
        "frames": {
            f.image_path.name: [
                {"bbox": [10, 20, 30, 40], "polygon": [[10, 20], [40, 20], [40, 60]], "score": 0.5}
            ],
            "not-here.jpg": [{"bbox": [0, 0, 5, 5], "polygon": [], "score": 0.9}],
        }
    }
    (tmp_path / "false_regions.json").write_text(json.dumps(listed))
    (negative,) = negative_regions(tmp_path / "false_regions.json", frames)
    assert (negative.class_index, negative.box, negative.source) == (
        0,
        (10, 20, 30, 40),
        "negative",
    )
    assert negative.score == 0.5
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="bad.json: not a false_regions.json"):
        negative_regions(tmp_path / "bad.json", frames)
    listed["frames"][f.image_path.name][0].pop("bbox")
    (tmp_path / "no-box.json").write_text(json.dumps(listed))
    with pytest.raises(ValueError, match="no-box.json: not a false_regions.json.*bbox"):
        negative_regions(tmp_path / "no-box.json", frames)

    # the served finds: the true class in the served outline
    finds = {
        "frames": {
            f.image_path.name: [
                {
                    "bbox": [12, 22, 30, 40],
                    "polygon": [[12, 22], [42, 22], [42, 62]],
                    "class": "cable",
                    "served_class": "motor",
                    "score": 0.95,
                }
            ]
        }
    }
    (tmp_path / "found_regions.json").write_text(json.dumps(finds))
    (find,) = found_regions(tmp_path / "found_regions.json", frames)
    assert (find.class_index, find.box, find.source, find.score) == (
        2,
        (12, 22, 30, 40),
        "served",
        0.95,
    )
    with pytest.raises(ValueError, match="bad.json: not a found_regions.json"):
        found_regions(tmp_path / "bad.json", frames)
    finds["frames"][f.image_path.name][0]["class"] = "normal"
    (tmp_path / "plain.json").write_text(json.dumps(finds))
    with pytest.raises(ValueError, match="plain.json: not a found_regions.json.*class normal"):
        found_regions(tmp_path / "plain.json", frames)
    finds["frames"][f.image_path.name][0]["class"] = "tyre"
    (tmp_path / "tyre.json").write_text(json.dumps(finds))
    with pytest.raises(ValueError, match="tyre.json: not a found_regions.json"):
        found_regions(tmp_path / "tyre.json", frames)

    crops = RegionCrops.cut([*labelled[:3], *normal[:2], negative], 56, 0.5, 16)
    assert crops.rgb.shape == (6, 56, 56, 3) and crops.alpha.shape == (6, 56, 56)
    assert all(crops.alpha[k][28, 28] > 0 or crops.alpha[k].sum() > 0 for k in range(6))
    assert crops.alpha[:, 0, 0].max() == 0  # the region's surroundings are not the region
    assert crop_box((100, 100, 10, 40), 0.5, 16) == (65, 80, 80)


def test_descriptions_name_every_class_or_are_refused(tmp_path):
    good = load_descriptions(CONFIGS / "descriptions.yaml")
    assert [len(t) > 0 for t in good.texts] == [True] * 4 and good.flat[0][0] == 0
    data = yaml.safe_load((CONFIGS / "descriptions.yaml").read_text())
    for change, why in [
        (lambda d: d.pop("cable"), "cable: needs a list"),
        (lambda d: d.update(tire=["a tire"]), "unknown class 'tire'"),
        (lambda d: d.update(motor=["a motor", ""]), "motor: not a text"),
    ]:
        d = json.loads(json.dumps(data))
        change(d)
        path = tmp_path / "d.yaml"
        path.write_text(yaml.safe_dump(d))
        with pytest.raises(DescriptionError, match=why) as err:
            load_descriptions(path)
        assert str(path) in str(err.value)


def small_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((CONFIGS / "region-tiny.yaml").read_text())
    cfg["model"]["tiny_config"] = TINY
    cfg["model"]["input_size"] = 56
    cfg["train"].update(epochs=2, batch_size=4)
    path = tmp_path / "region.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_resume_and_evaluate_from_the_command(synth_dir, tmp_path, capsys):
    config, run = small_config(tmp_path), tmp_path / "run"
    argv = ["train", "--config", str(config), "--data", str(synth_dir), "--out", str(run)]
    assert main([*argv, "--max-steps", "3"]) == 0
    first = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert first[-1]["step"] == 3 and math.isfinite(first[-1]["loss"])
    assert main(argv) == 2 and "holds a run already" in capsys.readouterr().err
    assert main(["train", "--data", str(synth_dir), "--out", str(run), "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 2 and rows[-1]["step"] > 3
    cfg = RegionRunConfig.model_validate_json((run / "config.json").read_text())
    assert cfg.train.batch_size == 4

    report = tmp_path / "report"
    ckpt = run / "checkpoint.pt"
    assert (
        main(
            ["evaluate", "--checkpoint", str(ckpt), "--data", str(synth_dir), "--out", str(report)]
        )
        == 0
    )
    body = json.loads((report / "report.json").read_text())
    frames = load_frames(synth_dir)
    assert body["true_regions"] == sum(len(f.instances) for f in frames.frames)
    assert (
        sum(v["regions"] for v in body["accuracy_by_regions_in_frame"].values())
        == (body["true_regions"])
    )
    assert 0 <= body["accuracy"] <= 1 and set(body["confusion"]) == {
        "normal",
        "motor",
        "cable",
        "spray_can",
    }


def test_the_command_names_what_is_wrong(synth_dir, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batch_size: 1, epochs: 0}\n")
    assert (
        main(
            ["train", "--config", str(bad), "--data", str(synth_dir), "--out", str(tmp_path / "r")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.yaml: 2 wrong field(s)" in err and "train.batch_size" in err
    config = small_config(tmp_path)
    missing = tmp_path / "nope"
    assert (
        main(
            ["train", "--config", str(config), "--data", str(missing), "--out", str(tmp_path / "r")]
        )
        == 1
    )
    assert f"{missing}: no such file or folder" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(junk),
                "--data",
                str(synth_dir),
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 1
    )
    assert "junk.pt: not a scrapscan-region checkpoint" in capsys.readouterr().err
    assert (
        main(["train", "--data", str(synth_dir), "--out", str(tmp_path / "new"), "--resume"]) == 2
    )


def test_the_shipped_region_configs_load():
    from training.config import load_as

    paper = load_as(RegionRunConfig, CONFIGS / "region-paper.yaml")
    assert (paper.model.clip_model, paper.model.input_size) == ("ViT-L-14-336", 336)
    assert (paper.lora.rank, paper.lora.alpha, paper.train.lr_alpha, paper.train.lr_rgb) == (
        64,
        64,
        1e-4,
        1e-6,
    )
    tiny = load_as(RegionRunConfig, CONFIGS / "region-tiny.yaml")
    assert tiny.lora.rank == 0 and tiny.model.pretrained is None


def test_training_takes_the_served_false_regions_as_plain_scrap(synth_dir, tmp_path, capsys):
    frames = load_frames(synth_dir)
    listed = {
        "frames": {
            f.image_path.name: [{"bbox": [100, 100, 40, 30], "polygon": [], "score": 0.9}]
            for f in frames.frames
        }
    }
    negatives = tmp_path / "false_regions.json"
    negatives.write_text(json.dumps(listed))
    config = small_config(tmp_path)
    argv = ["train", "--config", str(config), "--data", str(synth_dir), "--max-steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "without")]) == 0
    without = capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "with"), "--negatives", str(negatives)]) == 0
    with_them = capsys.readouterr().out

    def normal(printed: str) -> int:
        line = next(x for x in printed.splitlines() if " regions: " in x)
        return int(line.split(": ")[1].split(" normal")[0])

    assert normal(with_them) == normal(without) + len(frames.frames)
    # the served finds join their true class
    finds = tmp_path / "found_regions.json"
    listed = {
        "frames": {
            f.image_path.name: [
                {"bbox": [100, 100, 40, 30], "polygon": [], "class": "spray_can", "score": 0.9}
            ]
            for f in frames.frames
        }
    }
    finds.write_text(json.dumps(listed))
    assert main([*argv, "--out", str(tmp_path / "finds"), "--finds", str(finds)]) == 0

    def count(printed: str, name: str) -> int:
        line = next(x for x in printed.splitlines() if " regions: " in x)
        return int(line.split(f" {name}")[0].split(" ")[-1])

    with_finds = capsys.readouterr().out
    assert count(with_finds, "spray_can") == count(without, "spray_can") + len(frames.frames)
    assert count(with_finds, "normal") == count(without, "normal")
    negatives.write_text("{}")
    assert main([*argv, "--out", str(tmp_path / "bad"), "--negatives", str(negatives)]) == 1
    assert "not a false_regions.json" in capsys.readouterr().err
