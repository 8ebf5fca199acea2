"""Classes defined by text: the bundle's text tower and the served maps, against PyTorch.

The mechanism is what can be exact with random weights: the features the service computes
(tokenizers + text.onnx) equal PyTorch's (open_clip's tokenizer + the model's text tower),
and a text class's merged map on a frame equals one computed here from the PyTorch model
on the same tiles; the learned classes' maps do not change when text classes are scored.
"""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import onnxruntime as ort
import open_clip
import pytest
import torch

from common.bundle import load_bundle
from common.inputs import make_tiles
from model_export.cli import main
from model_export.export import ExportOptions, export_bundle
from model_export.text import CHECK_PROMPTS
from service.live import LiveSettings, SettingsChange, next_change
from service.serving import open_pipeline
from service.settings import Settings
from service.stages import merge
from service.zeroshot import PromptError, TextClass, TextTower
from training.checkpoint import load_trained
from training.model import create_clip
from training.synth import render_frame

pytestmark = pytest.mark.slow

GAS = TextClass(name="gas_cylinder", prompts=("a photo of a gas cylinder.", "a steel gas bottle."))
BATTERY = TextClass(
    name="battery", prompts=("a photo of a car battery.",), normal_prompts=("steel scrap.",)
)


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "b"
    options = ExportOptions(name="t", version="1", fp16=False, torch_export=False)
    export_bundle(tiny_checkpoint, out, options, log=lambda _: None)
    return load_bundle(out)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_trained(tiny_checkpoint)[0]


def reference_features(model, prompts) -> np.ndarray:
    """PyTorch: open_clip's tokenizer, the model's text tower run without prompts."""
    with torch.no_grad():
        return model.text.encode_plain(open_clip.tokenize(list(prompts))).numpy()


def reference_class(model, prompts) -> np.ndarray:
    mean = reference_features(model, prompts).mean(axis=0)
    return mean / np.linalg.norm(mean)


def test_the_bundle_carries_the_text_tower_and_the_graph_its_input(bundle):
    m = bundle.manifest
    assert m.zero_shot is not None and m.zero_shot.slots == 4
    assert {"text.onnx", "tokenizer.json"} <= set(m.files)
    assert m.inputs == ("images", "zero_shot_text")
    assert m.outputs == ("class_probs", "anomaly", "scores", "zero_shot")
    assert m.files["tokenizer.json"].precision is None
    assert m.zero_shot.parity["max_abs"] <= 1e-4


def test_the_plain_text_tower_is_clips_own(tiny_config):
    """encode_plain (what text.onnx is) equals open_clip's encode_text on the same weights."""
    from training.model import ScrapAnomalyModel

    torch.manual_seed(3)
    clip = create_clip(tiny_config.model)
    model = ScrapAnomalyModel(clip, tiny_config.model).eval()
    tokens = open_clip.tokenize(list(CHECK_PROMPTS))
    with torch.no_grad():
        want = clip.encode_text(tokens, normalize=True)
        got = model.text.encode_plain(tokens)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_the_service_encodes_prompts_as_pytorch_does(bundle, model):
    tower = TextTower(bundle)
    prompts = [*CHECK_PROMPTS[:-4], "a photo of a gas cylinder.", "&amp; a lead-acid battery"]
    got = tower.features(prompts)
    want = reference_features(model, prompts)
    assert np.abs(got - want).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (
        np.abs(tower.class_feature(GAS.prompts) - reference_class(model, GAS.prompts)).max() <= 1e-4
    )


def test_a_prompt_longer_than_the_text_tower_reads_is_refused_naming_it(bundle):
    tower = TextTower(bundle)
    with pytest.raises(PromptError, match=r"'a b c d .* 80 tokens, the text tower reads 75"):
        tower.tokens(["a b c d " * 20])
    assert tower.tokens(["a b c " * 25]).shape == (1, 77)  # 75 tokens: kept whole


def test_the_learned_outputs_do_not_depend_on_the_text_input(bundle):
    session = ort.InferenceSession(
        str(bundle.path("model.onnx")), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 518, 518)).astype(np.float32)
    runs = [
        session.run(None, {"images": x, "zero_shot_text": t})
        for t in (
            np.zeros((4, 2, 64), np.float32),
            rng.standard_normal((4, 2, 64)).astype(np.float32),
        )
    ]
    for a, b in zip(runs[0][:3], runs[1][:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0][3], runs[1][3])


def test_without_slots_the_bundle_has_no_text_tower(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "b"
    args = ["--checkpoint", str(tiny_checkpoint), "--out", str(out), "--no-fp16"]
    assert main([*args, "--no-torch-export", "--zero-shot-slots", "0"]) == 0
    m = load_bundle(out).manifest
    assert m.zero_shot is None and m.inputs == ("images",) and len(m.outputs) == 3
    assert not (out / "text.onnx").exists() and not (out / "tokenizer.json").exists()


def live(*classes: TextClass) -> SettingsChange:
    return next_change(None, LiveSettings(text_classes=classes), "admin")


def test_a_served_text_class_map_equals_pytorchs_on_the_same_frame(bundle, model):
    """The merged map of a text class equals the PyTorch model's on the same tiles, merged the
    same way, to 1e-4; the learned classes' maps and instances are the same with it as without."""
    frame = render_frame(5, 0, 1280, 720).image
    m = bundle.manifest
    _, data = cv2.imencode(".png", frame)

    async def run():
        pipeline = await open_pipeline(Settings(bundle=bundle.root, engine="onnxruntime"))
        try:
            plain = await pipeline.analyse(data.tobytes(), "crane-1")
            pipeline.use(live(GAS, BATTERY))
            scored = await pipeline.analyse(data.tobytes(), "crane-1")
            return pipeline, plain, scored
        finally:
            await pipeline.stop()

    pipeline, plain, scored = asyncio.run(run())
    np.testing.assert_array_equal(plain.merged.anomaly, scored.merged.anomaly)
    np.testing.assert_array_equal(plain.merged.classes, scored.merged.classes)
    learned = [i for i in scored.findings.instances if not i.zero_shot]
    assert [(i.class_name, i.bbox) for i in learned] == [
        (i.class_name, i.bbox) for i in plain.findings.instances
    ]
    assert plain.merged.zero_shot is None and scored.merged.zero_shot.shape[0] == 2

    # the reference: PyTorch on the same tiles, the text features from open_clip's tokenizer
    normal = m.zero_shot.normal_prompts
    text = torch.from_numpy(
        np.stack(
            [
                [reference_class(model, normal), reference_class(model, GAS.prompts)],
                [
                    reference_class(model, BATTERY.normal_prompts),
                    reference_class(model, BATTERY.prompts),
                ],
            ]
        ).astype(np.float32)
    )
    tiles, inputs = make_tiles(
        frame, scored.bed.box, m.tile_size, m.overlap, m.input_size, m.mean, m.std
    )
    with torch.no_grad():
        stages = model.stage_tokens(torch.from_numpy(inputs))
        per_stage = [
            (torch.einsum("nld,kcd->nklc", s, text) / model.cfg.temperature).softmax(-1)[..., 1]
            for s in stages
        ]
        g = model.grid
        maps = torch.stack(per_stage).mean(0).reshape(len(inputs), 2, g, g).numpy()
    ref = merge(
        frame.shape,
        scored.bed,
        tiles,
        np.zeros((len(inputs), g, g), np.float32),
        np.zeros((len(inputs), 4, g, g), np.float32),
        m.overlap,
        pipeline.sigma,
        pipeline.settings.map_stride,
        maps.astype(np.float32),
    )
    assert ref.zero_shot[:, scored.merged.bed_mask].std() > 1e-3  # a map, not a constant
    assert np.abs(scored.merged.zero_shot - ref.zero_shot).max() <= 1e-4
    assert scored.findings.frame_scores["gas_cylinder"] == pytest.approx(
        float(ref.zero_shot[0][scored.merged.bed_mask].max()), abs=1e-4
    )


def test_classes_past_the_slots_are_not_scored(bundle):
    many = [TextClass(name=f"c{k}", prompts=(f"a photo of thing {k}.",)) for k in range(6)]
    rule = TextTower(bundle).rule(tuple(many))
    assert rule is not None and rule.names == ("c0", "c1", "c2", "c3") and rule.registered == 6
    assert rule.text.shape == (4, 2, 64) and not rule.text.flags.writeable
