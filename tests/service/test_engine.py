from pathlib import Path

import numpy as np
import pytest

from common.bundle import load_bundle
from service.engine import EngineError, OnnxRuntimeEngine, TorchEngine, open_engine

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEMO)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((3, 3, 518, 518)).astype(np.float32)


def test_auto_on_a_cpu_machine_is_onnxruntime(bundle):
    engine = open_engine(bundle)  # CI has no GPU: this is what a CPU yard box gets
    assert isinstance(engine, OnnxRuntimeEngine) and engine.name == "onnxruntime-cpu"


def test_onnxruntime_and_torch_engines_agree(bundle, images):
    ort_out = open_engine(bundle, "onnxruntime").infer(images)
    torch_engine = open_engine(bundle, "torch", device="cpu")
    assert isinstance(torch_engine, TorchEngine) and torch_engine.max_batch == 32
    torch_out = torch_engine.infer(images)
    for a, b in zip(ort_out, torch_out, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert ort_out.class_probs.shape == (3, 4, 37, 37) and ort_out.scores.shape == (3, 4)


def test_fp16_onnx_is_chosen_by_precision(bundle, images):
    fp16 = open_engine(bundle, "onnxruntime", precision="fp16")
    assert isinstance(fp16, OnnxRuntimeEngine) and fp16.path.name == "model.fp16.onnx"
    np.testing.assert_allclose(
        fp16.infer(images).anomaly, open_engine(bundle).infer(images).anomaly, atol=1e-2
    )


def test_engines_that_cannot_run_here_say_why(bundle):
    with pytest.raises(EngineError, match="no TensorRT engine for this GPU"):
        open_engine(bundle, "tensorrt")
    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        open_engine(bundle, "onnxruntime", device="cuda")
    with pytest.raises(EngineError, match="torch sees no CUDA GPU"):
        open_engine(bundle, "torch", device="cuda")
