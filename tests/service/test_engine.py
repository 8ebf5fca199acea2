import asyncio
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from common.bundle import BundleError, load_bundle
from common.imaging import CLIP_MEAN, CLIP_STD
from common.inputs import make_tiles
from common.tiling import Box
from service import engine as engine_module
from service.engine import (
    EngineError,
    EngineOutput,
    Flipped,
    OnnxRuntimeEngine,
    OpenVinoEngine,
    TorchEngine,
    open_engine,
)
from service.serving import open_pipeline
from service.settings import Settings

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEMO)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((3, 3, 518, 518)).astype(np.float32)


@pytest.mark.no_gpu
def test_auto_on_a_cpu_machine_serves_the_faster_of_onnxruntime_and_openvino(bundle, caplog):
    caplog.set_level(logging.INFO, "service.engine")
    engine = open_engine(bundle)  # CI has no GPU: this is what a CPU yard box gets
    said = [r.getMessage() for r in caplog.records if "engine auto on the CPU" in r.message]
    assert len(said) == 1, caplog.text
    rates = {
        name: float(rate)
        for name, rate in re.findall(r"(\S+) ([0-9.]+) tiles/s", said[0].split(";")[0])
    }
    assert len(rates) == 2 and "onnxruntime-cpu" in rates
    assert any(name.startswith("openvino-cpu-") for name in rates)
    assert said[0].endswith(f"chose {engine.name}") and rates[engine.name] == max(rates.values())

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed: import fails
    try:
        assert open_engine(bundle).name == "onnxruntime-cpu"
        with pytest.raises(EngineError, match="openvino package is not installed"):
            open_engine(bundle, "openvino")
    finally:
        monkeypatch.undo()


def test_openvino_at_fp32_answers_as_onnxruntime(bundle, images):
    engine = open_engine(bundle, "openvino", precision="fp32")
    assert isinstance(engine, OpenVinoEngine) and engine.name == "openvino-cpu-fp32"
    got, want = engine.infer(images), open_engine(bundle, "onnxruntime").infer(images)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-4)
    with pytest.raises(EngineError, match="runs on the CPU"):
        open_engine(bundle, "openvino", device="cuda")


def test_openvino_runs_below_fp32_only_within_the_fp16_parity_bound(
    bundle, images, caplog, monkeypatch
):
    import openvino

    bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    caplog.set_level(logging.INFO, "service.engine")
    engine = open_engine(bundle, "openvino")  # precision auto: bf16 where the CPU has it
    if not bf16:  # nothing to check against: it must run fp32 and say why
        assert engine.precision == "fp32" and "no bf16 on this CPU" in caplog.text
        return
    found = re.search(r"max abs difference (\S+) .* serving (\w+)", caplog.text)
    assert found is not None, caplog.text
    assert engine.precision == found[2] == ("bf16" if float(found[1]) <= 1e-2 else "fp32")
    fp32 = open_engine(bundle, "openvino", precision="fp32").infer(images)
    assert np.abs(engine.infer(images).anomaly - fp32.anomaly).max() <= 5e-2

    caplog.clear()
    monkeypatch.setitem(engine_module.PARITY_TOLERANCE, "fp16", 0.0)  # nothing can keep it
    strict = open_engine(bundle, "openvino", precision="bf16")
    assert strict.precision == "fp32" and strict.name == "openvino-cpu-fp32"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "serving fp32" in warned[0].getMessage()


def test_onnxruntime_and_torch_engines_agree(bundle, images):
    ort_out = open_engine(bundle, "onnxruntime").infer(images)
    torch_engine = open_engine(bundle, "torch", device="cpu")
    assert isinstance(torch_engine, TorchEngine) and torch_engine.max_batch == 32
    torch_out = torch_engine.infer(images)
    for a, b in zip(ort_out, torch_out, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert ort_out.class_probs.shape == (3, 4, 37, 37) and ort_out.scores.shape == (3, 4)


@pytest.mark.parametrize(
    ("kind", "precision"), [("onnxruntime", "fp32"), ("openvino", "fp32"), ("torch", "fp32")]
)
def test_every_engine_scores_the_text_classes_it_is_given(bundle, images, kind, precision):
    """The demo bundle's text-class slots: the maps of the features given, the learned maps
    the same with or without them, and zeros fed when none are given."""
    slots = bundle.manifest.zero_shot.slots
    text = np.random.default_rng(1).standard_normal((slots, 2, 64)).astype(np.float32)
    engine = open_engine(bundle, kind, device="cpu", precision=precision)
    given, blank = engine.infer(images, text), engine.infer(images)
    reference = open_engine(bundle, "onnxruntime", precision="fp32").infer(images, text)
    assert given.zero_shot.shape == (3, slots, 37, 37)
    np.testing.assert_allclose(given.zero_shot, reference.zero_shot, atol=1e-4)
    np.testing.assert_allclose(blank.zero_shot, 0.5, atol=1e-6)  # zeros: no side wins
    for a, b in zip(given[:3], blank[:3], strict=True):
        np.testing.assert_array_equal(a, b)


def test_fp16_onnx_is_chosen_by_precision(bundle, images):
    fp16 = open_engine(bundle, "onnxruntime", precision="fp16")
    assert isinstance(fp16, OnnxRuntimeEngine) and fp16.path.name == "model.fp16.onnx"
    np.testing.assert_allclose(
        fp16.infer(images).anomaly, open_engine(bundle).infer(images).anomaly, atol=1e-2
    )


@pytest.mark.gpu
def test_the_torch_engine_on_cuda_agrees_with_onnxruntime_on_the_cpu(bundle, images):
    cuda = open_engine(bundle, "torch", device="cuda")
    np.testing.assert_allclose(
        cuda.infer(images).anomaly,
        open_engine(bundle, "onnxruntime").infer(images).anomaly,
        atol=1e-3,
    )


@pytest.mark.no_gpu
def test_engines_that_cannot_run_here_say_why(bundle):
    with pytest.raises(EngineError, match="no TensorRT engine for this GPU"):
        open_engine(bundle, "tensorrt")
    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        open_engine(bundle, "onnxruntime", device="cuda")
    with pytest.raises(EngineError, match="torch sees no CUDA GPU"):
        open_engine(bundle, "torch", device="cuda")


def _edited(tmp_path, **changes):
    copy = tmp_path / "bundle"
    shutil.copytree(DEMO, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["postprocess"]["class_thresholds"] = None  # they name the classes
    manifest.update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"outputs": ["probs", "anomaly", "scores"]}, "outputs ['probs', 'anomaly', 'scores']"),
        ({"inputs": ["pixel_values"]}, "the service feeds ['images', 'zero_shot_text']"),
        ({"classes": ["motor", "normal", "cable", "spray_can"]}, "the first must be normal"),
        ({"overlap": 512}, "overlap 512 is not smaller than tile_size 512"),
        ({"std": [0.3, 0.0, 0.3]}, "not positive"),
    ],
)
def test_a_bundle_the_service_cannot_serve_is_refused_with_the_reason(tmp_path, changes, reason):
    copy = _edited(tmp_path, **changes)
    load_bundle(copy)  # a valid bundle as such
    with pytest.raises(BundleError, match="cannot serve it") as err:
        load_bundle(copy, serving=True)
    assert reason in str(err.value)
    with pytest.raises(BundleError, match="cannot serve it"):
        asyncio.run(open_pipeline(Settings(bundle=copy)))


def test_a_manifest_grid_the_engine_does_not_answer_is_refused(tmp_path):
    copy = _edited(tmp_path, grid=36)
    with pytest.raises(BundleError, match=r"manifest says 4 classes on a 36 x 36 grid"):
        asyncio.run(open_pipeline(Settings(bundle=copy)))


def test_tiles_are_normalised_with_the_bundle_mean_and_std():
    frame = np.random.default_rng(1).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    box = Box(0, 0, 700, 600)
    _, clip = make_tiles(frame, box, 512, 64, 518)
    tiles, other = make_tiles(frame, box, 512, 64, 518, mean, std)
    rgb = clip * np.asarray(CLIP_STD)[:, None, None] + np.asarray(CLIP_MEAN)[:, None, None]
    expected = (rgb - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    np.testing.assert_allclose(other, expected, atol=1e-4)
    assert len(tiles) == 4 and not np.allclose(other, clip)


class _Local:
    """An engine whose maps read the pixels under each cell, plus its column when `skewed`."""

    name, max_batch = "local", 8

    def __init__(self, skewed=False):
        self.skewed, self.batches = skewed, []

    def infer(self, images, text=None):
        self.batches.append(images.copy())
        n, c = images.shape[:2]  # the mean of each 14 px cell: 37 x 37, the model's grid
        cells = images.reshape(n, c, 37, 14, 37, 14).mean(axis=(3, 5))
        column = np.arange(37, dtype=np.float32) if self.skewed else np.zeros(37, np.float32)
        probs = np.concatenate([cells, cells[:, :1]], axis=1) + column
        left = images[..., : images.shape[-1] // 2].mean(axis=(2, 3))  # reads the left half
        return EngineOutput(probs, cells[:, 0] + column, left, cells[:, :2] * 2 + column)


def test_flipped_views_are_mirrored_back_before_they_are_averaged(images):
    # maps made cell by cell from the pixels under them do not change with any flip: each
    # view, mirrored back, lies on its own cells
    inner = _Local()
    plain = inner.infer(images)
    engine = Flipped(inner, ["horizontal", "vertical", "both"])
    out = engine.infer(images)
    for name, a, b in zip(EngineOutput._fields, plain, out, strict=True):
        if name != "scores":
            np.testing.assert_allclose(b, a, atol=1e-6, err_msg=name)
    assert [b.shape for b in inner.batches[1:]] == [images.shape] * 4  # one batch a view
    np.testing.assert_array_equal(inner.batches[2], images[..., ::-1])
    np.testing.assert_array_equal(inner.batches[3], images[..., ::-1, :])
    np.testing.assert_array_equal(inner.batches[4], images[..., ::-1, ::-1])
    # the scores are the mean over the views as they come: the left half and the right half
    whole = images.mean(axis=(2, 3))
    np.testing.assert_allclose(
        Flipped(_Local(), ["horizontal"]).infer(images).scores, whole, atol=1e-5
    )
    # what depends on where a cell is averages with its mirror image: the column's 0 .. 36
    # and 36 .. 0 become 18 everywhere
    skewed = Flipped(_Local(skewed=True), ["horizontal"]).infer(images)
    np.testing.assert_allclose(skewed.anomaly, plain.anomaly + 18, atol=1e-5)
    assert engine.name == "local+flips" and engine.max_batch == 8
    assert all(a.dtype == np.float32 for a in out)


def test_a_bundle_with_flips_is_served_flipped(tmp_path, images):
    copy = _edited(tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["postprocess"]["flips"] = ["horizontal"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    flipped = load_bundle(copy)
    engine = open_engine(flipped, "onnxruntime")
    assert isinstance(engine, Flipped) and engine.name == "onnxruntime-cpu+flips"
    plain = open_engine(load_bundle(DEMO), "onnxruntime")
    assert not isinstance(plain, Flipped)
    one, mirrored = (
        plain.infer(images[:2]),
        plain.infer(np.ascontiguousarray(images[:2, ..., ::-1])),
    )
    out = engine.infer(images[:2])
    np.testing.assert_allclose(
        out.anomaly, (one.anomaly + mirrored.anomaly[..., ::-1]) / 2, atol=1e-5
    )
    assert not np.allclose(out.anomaly, one.anomaly, atol=1e-3)  # the model itself is not symmetric
    for flips, said in (
        (["horizontal", "horizontal"], "lists a view twice"),
        (["sideways"], "flips"),
    ):
        manifest["postprocess"]["flips"] = flips
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=said):
            load_bundle(copy)
