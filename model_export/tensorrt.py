"""TensorRT engines built from the bundle's ONNX file, one per GPU model and TensorRT version.

An engine only runs on the GPU model and TensorRT version it was built with, so its file
name carries both (`model.<gpu>.trt<version>.<precision>.plan`) and the manifest records
them; the service never loads an engine built for another GPU or TensorRT.

fp16 (default) builds from the fp32 ONNX with FP16 kernels allowed. int8 and fp8 first
quantise the ONNX with NVIDIA ModelOpt (explicit Q/DQ nodes, calibrated on given
patches) and build a strongly typed network from it. One optimisation profile covers
batch 1..max_batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

PRECISIONS = ("fp16", "int8", "fp8")
INSTALL_HINT = (
    "TensorRT is not installed: on a machine with an NVIDIA GPU and driver run "
    "`pip install 'scrapscan[gpu]'` (tensorrt>=10), or leave out --tensorrt; the ONNX "
    "Runtime and PyTorch engines need no TensorRT"
)


class TensorRTError(RuntimeError):
    """TensorRT is missing, there is no GPU, or the build failed."""


def require_tensorrt() -> ModuleType:
    """The tensorrt module, or TensorRTError saying what to install (checked before any work)."""
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTError(f"{INSTALL_HINT} ({err})") from None
    module: ModuleType = tensorrt
    return module


def gpu_name() -> str:
    """The CUDA device's name, or TensorRTError when there is none."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTError(
            "no CUDA GPU is visible: a TensorRT engine is built on the GPU it serves"
        )
    return str(torch.cuda.get_device_name(0))


def engine_name(gpu: str, trt_version: str, precision: str) -> str:
    """model.<gpu slug>.trt<version>.<precision>.plan.

    E.g. model.nvidia-h100-80gb-hbm3.trt10.7.0.fp16.plan.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return f"model.{slug}.trt{trt_version}.{precision}.plan"


@dataclass(frozen=True, slots=True)
class Engine:
    """A built engine: its file name and what it was built for."""

    name: str
    gpu: str
    tensorrt: str
    precision: str
    max_batch: int


def _quantize(onnx_path: Path, out: Path, precision: str, calibration: npt.NDArray[Any]) -> None:
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError:
        raise TensorRTError(
            f"{precision} engines need NVIDIA ModelOpt for calibration: pip install nvidia-modelopt"
        ) from None
    quantize(
        onnx_path=str(onnx_path),
        quantize_mode=precision,
        calibration_data={"images": calibration.astype(np.float32)},
        output_path=str(out),
    )


def build_engine(
    onnx_path: Path,
    out_dir: Path,
    input_size: int,
    precision: str = "fp16",
    max_batch: int = 32,
    calibration: npt.NDArray[Any] | None = None,
    workspace_gib: int = 8,
) -> Engine:
    """Build and write an engine for this machine's GPU; returns what was written."""
    if precision not in PRECISIONS:
        raise TensorRTError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    trt = require_tensorrt()
    gpu = gpu_name()
    source = onnx_path
    if precision != "fp16":
        if calibration is None or len(calibration) == 0:
            raise TensorRTError(f"{precision} needs calibration patches (--calibration DIR)")
        source = out_dir / f"model.{precision}.qdq.onnx"
        _quantize(onnx_path, source, precision, calibration)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if precision == "fp16" else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"{source}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (3, input_size, input_size)
    profile.set_shape("images", (1, *shape), (max(1, max_batch // 2), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTError(f"{source}: the TensorRT build failed (see the log above)")
    name = engine_name(gpu, trt.__version__, precision)
    (out_dir / name).write_bytes(bytes(plan))
    if source != onnx_path:
        source.unlink()
    return Engine(name, gpu, trt.__version__, precision, max_batch)
