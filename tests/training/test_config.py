import pytest

from training.config import BinaryMode, ConfigError, load_config, parse_config
from training.model import register_model_config

from .conftest import CONFIGS


def test_paper_config_holds_the_papers_values():
    cfg = load_config(CONFIGS / "paper.yaml")
    m, t = cfg.model, cfg.train
    assert (m.clip_model, m.pretrained, m.quick_gelu, m.input_size) == (
        "ViT-L-14-336",
        "openai",
        True,
        518,
    )
    assert m.feature_layers == (6, 12, 18, 24)
    assert (m.prompts.context_length, m.prompts.deep_depth, m.prompts.deep_length) == (16, 9, 4)
    assert m.prompts.normal == "object which is made of steel"
    assert m.prompts.anomaly.format("motor") == "object which is not steel but motor"
    assert m.prompts.binary_anomaly == "object which is not steel"
    assert m.msm.windows == (3, 9) and m.temperature == 0.07
    assert m.binary_mode == BinaryMode.AVERAGED_PROMPT
    assert (t.lr, t.epochs, t.batch_size) == (1e-6, 15, 4)
    assert t.msm_stage_weights == (0.1, 0.1, 0.1, 0.7)
    assert not m.freeze_image_encoder


def test_tiny_config_loads(tiny_config):
    assert tiny_config.model.tiny_config is not None
    assert tiny_config.model.pretrained is None


def test_every_wrong_field_is_named():
    bad = {
        "model": {
            "msm": {"windows": [4, 9]},
            "prompts": {"anomaly": "x", "contxt_length": 3},
            "feature_layers": [12, 6],
            "binary_mode": "vote",
        },
        "train": {"lr": -1, "msm_stage_weights": [1, 1], "anomaly_share": 1.5},
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(bad, "bad.yaml")
    msg = str(exc.value)
    assert msg.startswith("bad.yaml: 7 wrong field(s):")
    for expected in [
        "model.feature_layers: must be increasing layer numbers, got [12, 6]",
        "model.prompts.anomaly: must contain exactly one {}",
        "model.prompts.contxt_length: unknown field (misspelt?)",
        "model.msm.windows: windows must be odd",
        "model.binary_mode: Input should be 'averaged_prompt' or 'class_sum'",
        "train.lr: Input should be greater than 0",
        "train.anomaly_share: Input should be less than 1",
    ]:
        assert expected in msg


def test_cross_field_checks():
    with pytest.raises(
        ConfigError, match="msm_stage_weights has 2 weights but model.feature_layers has 4"
    ):
        parse_config({"train": {"msm_stage_weights": [1, 1]}})
    with pytest.raises(ConfigError, match="deep_length .5. cannot exceed context_length .4."):
        parse_config({"model": {"prompts": {"context_length": 4, "deep_length": 5}}})
    with pytest.raises(ConfigError, match="overlap .512. must be smaller than tile_size"):
        parse_config({"data": {"overlap": 512}})
    with pytest.raises(
        ConfigError, match="anomaly_share . hard_negative_share must stay under 1, got 1"
    ):
        parse_config({"train": {"anomaly_share": 0.6, "hard_negative_share": 0.4}})


def test_file_problems_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config(listy)


def test_registering_a_config_makes_it_buildable(tiny_config):
    import open_clip

    register_model_config("scrapscan-test-arch", tiny_config.model.tiny_config)
    assert "scrapscan-test-arch" in open_clip.list_models()


def test_registering_leaves_no_file_behind_and_the_latest_config_wins(tiny_config):
    import tempfile
    from pathlib import Path

    import open_clip

    before = set(Path(tempfile.gettempdir()).glob("scrapscan-clip-*"))
    first = dict(tiny_config.model.tiny_config)
    second = {**first, "embed_dim": first["embed_dim"] * 2}
    register_model_config("scrapscan-test-twice", first)
    register_model_config("scrapscan-test-twice", second)
    register_model_config("scrapscan-test-other", first)  # rescans every path registered
    assert open_clip.get_model_config("scrapscan-test-twice")["embed_dim"] == second["embed_dim"]
    assert set(Path(tempfile.gettempdir()).glob("scrapscan-clip-*")) == before
