import json

import pytest
import torch
import torch.nn.functional as F

from training.config import load_config
from training.evaluate import main
from training.winclip import ANOMALOUS_STATES, NORMAL_STATES, TEMPLATES, WinCLIP, prompt_texts

from .conftest import CONFIGS


@pytest.fixture(scope="module")
def winclip(tiny_config):
    torch.manual_seed(0)
    return WinCLIP.build(tiny_config.model)


def test_prompts_are_every_state_in_every_template():
    texts = prompt_texts(ANOMALOUS_STATES)
    assert len(texts) == len(ANOMALOUS_STATES) * len(TEMPLATES)
    assert "a photo of contaminated steel scrap." in texts
    assert len(set(prompt_texts(NORMAL_STATES))) == len(NORMAL_STATES) * len(TEMPLATES)


def test_a_window_is_scored_from_its_own_tokens_only(winclip, images):
    v, g, k = winclip.visual, winclip.grid, 3
    with torch.no_grad():
        tokens = v._embeds(images)
        scores = winclip.window_scores(tokens, k)
        assert scores.shape == (2, g - k + 1, g - k + 1)
        r, c = 5, 11  # the window whose top-left patch is row 5, column 11
        index = [0] + [1 + (r + i) * g + (c + j) for i in range(k) for j in range(k)]
        out = v.transformer(tokens[:, index])[:, 0]
        emb = F.normalize(v.ln_post(out) @ v.proj, dim=-1)
        expected = (emb @ winclip.text.T / winclip.temperature).softmax(-1)[:, 1]
    torch.testing.assert_close(scores[:, r, c], expected, rtol=1e-4, atol=1e-5)


def test_patch_score_is_the_harmonic_mean_of_its_windows(winclip, images):
    g = winclip.grid
    with torch.no_grad():
        tokens = winclip.visual._embeds(images)
        out = winclip(images)
        per_scale = {k: winclip.window_scores(tokens, k) for k in winclip.scales}
    assert out.anomaly.shape == (2, g, g) and out.class_probs.shape == (2, 2, g, g)
    torch.testing.assert_close(out.class_probs.sum(1), torch.ones(2, g, g))
    for y, x in ((0, 0), (4, 20), (g - 1, g - 2)):
        means = []
        for k, s in per_scale.items():
            covering = [
                s[:, r, c]
                for r in range(max(0, y - k + 1), min(y, g - k) + 1)
                for c in range(max(0, x - k + 1), min(x, g - k) + 1)
            ]
            means.append(len(covering) / sum(1 / v for v in covering))
        torch.testing.assert_close(out.anomaly[:, y, x], sum(means) / len(means))


def test_images_of_another_size_are_resized(winclip):
    with torch.no_grad():
        out = winclip(torch.randn(1, 3, 300, 300))
    assert out.anomaly.shape == (1, winclip.grid, winclip.grid)


@pytest.mark.parametrize("scales", [(), (0, 2), (38,)])
def test_window_scales_must_fit_the_grid(winclip, scales):
    clip = torch.nn.Module()
    clip.visual = winclip.visual
    with pytest.raises(ValueError, match="window scales"):
        WinCLIP(clip, winclip.text, 518, scales=scales)


@pytest.mark.slow
def test_eval_command_runs_the_zero_shot_baseline(synth_dir, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["--winclip", str(CONFIGS / "tiny.yaml"), "--data", str(synth_dir), "--out", str(out)]
    assert main([*args, "--overlays", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["binary_mode"] == "winclip" and report["checkpoint"] is None
    assert all(v is None for v in report["per_class_ap"].values())  # binary prompts only
    assert 0 <= report["pixel"]["auroc"] <= 1
    assert (out / "worst_1.jpg").is_file()
    assert "AUROC" in capsys.readouterr().out


def test_eval_command_names_a_bad_winclip_config(synth_dir, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {clip_model: 3, input_size: -1}\n")
    args = ["--winclip", str(bad), "--data", str(synth_dir), "--out", str(tmp_path / "r")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "input_size" in err


def test_the_shipped_config_names_the_papers_baseline_clip():
    cfg = load_config(CONFIGS / "winclip.yaml")
    assert (cfg.model.clip_model, cfg.model.pretrained) == ("ViT-B-16-plus-240", "laion400m_e31")
    assert cfg.model.input_size == 240
