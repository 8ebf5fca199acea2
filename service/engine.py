"""Engines: one interface over ONNX Runtime, PyTorch (the bundle's model.pt2) and TensorRT.

An engine takes (N, 3, S, S) float32 CLIP-normalised tiles, N <= max_batch, and returns
the bundle's outputs as float32 numpy arrays: class_probs (N, C, g, g), anomaly
(N, g, g), scores (N, C). `open_engine` picks one by name or, for "auto", the best this
machine can run: TensorRT (an engine built for this GPU and TensorRT version), then
PyTorch on a CUDA GPU, then ONNX Runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from common.bundle import OUTPUT_NAMES, Bundle, Precision

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]


class EngineOutput(NamedTuple):
    """What an engine returns for a batch."""

    class_probs: Array
    anomaly: Array
    scores: Array


assert EngineOutput._fields == OUTPUT_NAMES, "EngineOutput follows the bundle's output names"


class Engine(Protocol):
    """What the batcher needs from an engine."""

    name: str
    max_batch: int

    def infer(self, images: Array) -> EngineOutput:
        """Run one batch."""
        ...


class EngineError(RuntimeError):
    """The requested engine cannot run here; the message says why and what to do."""


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class OnnxRuntimeEngine:
    """ONNX Runtime with the CUDA provider when asked and available, else the CPU."""

    def __init__(
        self, path: Path, device: str = "auto", threads: int = 0, max_batch: int = 32
    ) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise EngineError(
                "device cuda: onnxruntime has no CUDA provider here; install onnxruntime-gpu "
                "in place of onnxruntime (pip uninstall onnxruntime; pip install "
                "'scrapscan[serve,gpu]') or set SCRAPSCAN_DEVICE=cpu"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self.name = f"onnxruntime-{self.device}"
        self.max_batch = max_batch

    def infer(self, images: Array) -> EngineOutput:
        """Run one batch."""
        out = self.session.run(list(OUTPUT_NAMES), {"images": images})
        return EngineOutput(*(np.asarray(o, dtype=np.float32) for o in out))


class TorchEngine:
    """The bundle's torch.export program (model.pt2) on the CPU or a CUDA GPU."""

    def __init__(
        self, path: Path, device: str = "auto", threads: int = 0, max_batch: int = 32
    ) -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise EngineError("device cuda: torch sees no CUDA GPU; set SCRAPSCAN_DEVICE=cpu")
        self.device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        if threads:
            torch.set_num_threads(threads)
        self.module: Any = torch.export.load(str(path)).module().to(self.device)
        self.name = f"torch-{self.device}"
        self.max_batch = max_batch
        self._torch = torch

    def infer(self, images: Array) -> EngineOutput:
        """Run one batch."""
        torch = self._torch
        with torch.inference_mode():
            out = self.module(torch.from_numpy(images).to(self.device))
        return EngineOutput(*(o.float().cpu().numpy() for o in out))


class TensorRTEngine:
    """A serialized TensorRT engine built for this GPU and TensorRT version (CUDA only)."""

    def __init__(self, path: Path, max_batch: int) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineError(f"{path}: TensorRT cannot deserialize it")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.name = "tensorrt"
        self.max_batch = max_batch

    def infer(self, images: Array) -> EngineOutput:
        """Run one batch."""
        torch = self._torch
        x = torch.from_numpy(images).cuda()
        self.context.set_input_shape("images", tuple(x.shape))
        self.context.set_tensor_address("images", x.data_ptr())
        outs = {}
        for name in EngineOutput._fields:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed")
        stream.synchronize()
        return EngineOutput(*(outs[n].cpu().numpy() for n in EngineOutput._fields))


def _tensorrt_file(bundle: Bundle) -> tuple[Path, int] | None:
    """The bundle's engine for this GPU and TensorRT version, if there is one."""
    try:
        import tensorrt as trt
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    gpu = torch.cuda.get_device_name(0)
    for name, f in bundle.manifest.files.items():
        if f.kind == "tensorrt" and f.target == {"gpu": gpu, "tensorrt": trt.__version__}:
            return bundle.path(name), f.max_batch or 1
    return None


def open_engine(
    bundle: Bundle,
    kind: str = "auto",
    device: str = "auto",
    threads: int = 0,
    precision: Precision = "fp32",
) -> Engine:
    """The engine `kind` (auto | onnxruntime | torch | tensorrt) for `bundle`."""
    m = bundle.manifest
    if kind in ("auto", "tensorrt") and device != "cpu":
        found = _tensorrt_file(bundle)
        if found is not None:
            return TensorRTEngine(*found)
        if kind == "tensorrt":
            raise EngineError(
                f"{bundle.root}: no TensorRT engine for this GPU and TensorRT version; build one "
                f"with scrapscan-export --tensorrt on this machine, or choose another engine"
            )
    torch_file = m.file("torch_export")
    if kind == "torch" or (kind == "auto" and torch_file and device != "cpu" and _cuda_available()):
        if torch_file is None:
            raise EngineError(f"{bundle.root}: the bundle has no model.pt2 for the torch engine")
        limit = m.files[torch_file].max_batch or 32
        return TorchEngine(bundle.path(torch_file), device, threads, limit)
    onnx_file = m.file("onnx", precision) or m.file("onnx", "fp32")
    if onnx_file is None:
        raise EngineError(f"{bundle.root}: the bundle has no ONNX file")
    return OnnxRuntimeEngine(bundle.path(onnx_file), device, threads)
