import socket

import pytest
import torch

from common.classes import NUM_CLASSES
from training import model as model_module
from training.config import BinaryMode, load_config
from training.model import WeightsError, build_model, create_clip

from .conftest import CONFIGS


def with_model(cfg, **changes):
    return cfg.model.model_copy(update=changes)


def test_outputs_have_the_documented_shapes(tiny_config, images):
    model = build_model(tiny_config.model)
    with torch.no_grad():
        out = model(images)
    assert len(out.stage_probs) == len(out.msm_probs) == 4
    for p in (*out.stage_probs, *out.msm_probs, out.class_probs):
        assert p.shape == (2, NUM_CLASSES, 37, 37)
        torch.testing.assert_close(p.sum(dim=1), torch.ones(2, 37, 37))
    assert out.anomaly.shape == (2, 37, 37)
    assert float(out.anomaly.min()) >= 0 and float(out.anomaly.max()) <= 1


def test_text_tower_is_frozen_and_everything_else_learns(tiny_config, images):
    model = build_model(tiny_config.model)
    out = model(images)
    (
        out.class_probs[:, 1:].mean()
        + out.anomaly.mean()
        + sum(p[:, 2].mean() for p in out.msm_probs)
    ).backward()
    assert model.text.prompts.context.grad.abs().sum() > 0
    assert model.text.prompts.deep.grad.abs().sum() > 0
    assert model.visual.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.msm.parameters())
    text_tower = [p for n, p in model.text.named_parameters() if not n.startswith("prompts.")]
    assert text_tower and all(not p.requires_grad and p.grad is None for p in text_tower)


def test_every_trainable_parameter_gets_a_gradient(tiny_config, images):
    for dpam in (True, False):
        model = build_model(with_model(tiny_config, dpam=dpam, feature_layers=(1, 3)))
        out = model(images[:1])
        (sum(p.sum() for p in out.msm_probs) + out.class_probs.sum() + out.anomaly.sum()).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == [], (dpam, missing)


def test_frozen_image_encoder_baseline(tiny_config):
    model = build_model(with_model(tiny_config, freeze_image_encoder=True))
    groups = model.parameter_groups()
    assert groups["image_encoder"] == 0 and groups["prompts"] > 0 and groups["msm"] > 0


def test_msm_and_dpam_flags_change_the_model(tiny_config, images):
    torch.manual_seed(0)
    base = build_model(tiny_config.model)
    state = base.state_dict()
    no_msm = build_model(
        with_model(tiny_config, msm=tiny_config.model.msm.model_copy(update={"enabled": False}))
    )
    assert no_msm(images).msm_probs == ()
    assert no_msm.parameter_groups()["msm"] == 0
    no_dpam = build_model(with_model(tiny_config, dpam=False))
    no_dpam.load_state_dict(state)
    with torch.no_grad():
        a, b = base(images).stage_probs[-1], no_dpam(images).stage_probs[-1]
    assert not torch.allclose(a, b)
    windowed = build_model(
        with_model(tiny_config, msm=tiny_config.model.msm.model_copy(update={"stride": "window"}))
    )
    assert windowed(images).msm_probs[0].shape == (2, NUM_CLASSES, 37, 37)


def test_binary_modes(tiny_config, images):
    torch.manual_seed(0)
    model = build_model(with_model(tiny_config, binary_mode=BinaryMode.CLASS_SUM))
    with torch.no_grad():
        out = model(images)
        torch.testing.assert_close(out.anomaly, 1 - out.class_probs[:, 0])
        model.cfg = model.cfg.model_copy(update={"binary_mode": BinaryMode.AVERAGED_PROMPT})
        prompt = model(images)
    # the same class maps; the binary map from the averaged prompt and the MSM's normal
    torch.testing.assert_close(prompt.class_probs, out.class_probs)
    assert prompt.anomaly.shape == out.anomaly.shape
    assert (prompt.anomaly - out.anomaly).abs().max() > 1e-3
    assert bool(((prompt.anomaly >= 0) & (prompt.anomaly <= 1)).all())


def test_deep_prompts_reach_the_text_features(tiny_config):
    model = build_model(tiny_config.model)
    before = model.text.class_features().detach()
    with torch.no_grad():
        model.text.prompts.deep.add_(1.0)
    assert not torch.allclose(before, model.text.class_features())
    feats = model.text.binary_features()
    assert feats.shape == (2, tiny_config.model.tiny_config["embed_dim"])


def test_weights_load_from_a_local_file(tiny_config, tmp_path):
    torch.manual_seed(1)
    clip = create_clip(tiny_config.model)
    path = tmp_path / "tiny-weights.pt"
    torch.save(clip.state_dict(), path)
    torch.manual_seed(2)
    loaded = create_clip(with_model(tiny_config, pretrained=str(path)))
    for (name, a), (_, b) in zip(
        clip.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    fresh = create_clip(tiny_config.model)
    assert not torch.equal(fresh.visual.conv1.weight, clip.visual.conv1.weight)


def test_a_weights_file_of_another_model_is_refused(tiny_config, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match=f"cannot load weights file {path}"):
        create_clip(with_model(tiny_config, pretrained=str(path)))


def test_unknown_weights_tag_is_refused_at_once(tiny_config):
    with pytest.raises(WeightsError, match="neither a file nor a weights tag of scrapscan-tiny"):
        create_clip(with_model(tiny_config, pretrained="openai"))


@pytest.mark.slow
def test_openai_weights_without_network_fail_at_once_with_instructions(monkeypatch):
    cfg = load_config(CONFIGS / "paper.yaml").model

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)  # CI may have no network
    monkeypatch.setattr(model_module, "_cached", lambda model, tag: False)  # nor a cache
    with pytest.raises(WeightsError) as exc:
        create_clip(cfg)
    msg = str(exc.value)
    assert "cannot fetch the 'openai' weights of ViT-L-14-336" in msg
    assert "set model.pretrained to its path" in msg


@pytest.mark.slow
def test_paper_model_builds_with_the_expected_trainable_parameters():
    cfg = load_config(CONFIGS / "paper.yaml").model.model_copy(update={"pretrained": None})
    groups = build_model(cfg).parameter_groups()
    # ViT-L/14 vision tower at 518 px: 24 blocks of width 1024, 37x37+1 positions, proj to 768
    block = 12 * 1024 * 1024 + 13 * 1024
    tower = 24 * block + 3 * 14 * 14 * 1024 + 1024 + (37 * 37 + 1) * 1024 + 4 * 1024 + 1024 * 768
    # block 24's MLP half feeds nothing when tokens come from the value-value path: frozen
    last_mlp = 2 * 1024 + (1024 * 4096 + 4096) + (4096 * 1024 + 1024)
    assert groups["image_encoder"] == tower - last_mlp
    assert groups["prompts"] == 4 * 16 * 768 + 8 * 4 * 768
    msm_stage = 2 * 768 + (4 * 768 * 768 + 4 * 768) + (4 * 4 + 4)
    assert groups["msm"] == 4 * msm_stage


def test_binary_prompts_the_anomalyclip_style_baseline(tiny_config, images):
    cfg = with_model(tiny_config, prompt_mode="binary", freeze_image_encoder=True)
    model = build_model(cfg)
    assert model.parameter_groups()["image_encoder"] == 0
    out = model(images)
    assert out.class_probs.shape == (2, 2, 37, 37)
    assert all(p.shape == (2, 2, 37, 37) for p in (*out.stage_probs, *out.msm_probs))
    torch.testing.assert_close(out.anomaly, 1 - out.class_probs[:, 0])
    out.anomaly.mean().backward()
    assert model.text.prompts.context.grad is not None
    assert model.text.prompts.context.shape[0] == 2
