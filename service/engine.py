"""Engines: one interface over ONNX Runtime, OpenVINO, PyTorch (model.pt2) and TensorRT.

An engine takes (N, 3, S, S) float32 CLIP-normalised tiles, N <= max_batch, and, for a
bundle with text-class slots, the (K, 2, D) features of the classes defined by text
(zeros when none are given); it returns the bundle's outputs as float32 numpy arrays:
class_probs (N, C, g, g), anomaly (N, g, g), scores (N, C), zero_shot (N, K, g, g) (K = 0
for a bundle without slots). `open_engine` picks one by name or, for "auto", the best this
machine can run: TensorRT (an engine built for this GPU and TensorRT version), then
PyTorch on a CUDA GPU; on the CPU, of ONNX Runtime and OpenVINO (when installed) the one
that runs a batch faster, timed side by side at load. A bundle whose manifest lists test-time
`flips` gets its engine wrapped in `Flipped`: each batch also runs mirrored those ways and
the maps are averaged over the views.

OpenVINO reads the bundle's model.onnx. Below fp32 (bf16 on CPUs with AMX or AVX-512
BF16, the default precision "auto") it is served only when its answers stay within the
bound the export holds fp16 files to (common.bundle.PARITY_TOLERANCE), checked at load
against its own fp32 run and logged either way; else it runs in fp32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from common.bundle import (
    MIN_ARGMAX_AGREEMENT,
    OUTPUT_NAMES,
    PARITY_TOLERANCE,
    ZERO_SHOT_INPUT,
    ZERO_SHOT_OUTPUT,
    Bundle,
    Flip,
    Precision,
    ZeroShotInfo,
)

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]


class EngineOutput(NamedTuple):
    """What an engine returns for a batch."""

    class_probs: Array
    anomaly: Array
    scores: Array
    zero_shot: Array
    """(N, K, g, g) the text-defined classes' maps; K = 0 without slots."""


assert EngineOutput._fields == (*OUTPUT_NAMES, ZERO_SHOT_OUTPUT), "the bundle's output names"


class Engine(Protocol):
    """What the batcher needs from an engine."""

    name: str
    max_batch: int

    def infer(self, images: Array, text: Array | None = None) -> EngineOutput:
        """Run one batch (`text`: the zero_shot_text input, None for zeros)."""
        ...


class Feeds:
    """The graph's inputs for a batch, and its outputs as an EngineOutput."""

    def __init__(self, zero_shot: ZeroShotInfo | None) -> None:
        self.slots = 0 if zero_shot is None else zero_shot.slots
        self.blank = (
            None
            if zero_shot is None
            else np.zeros((zero_shot.slots, 2, zero_shot.width), np.float32)
        )
        self.outputs = (*OUTPUT_NAMES, ZERO_SHOT_OUTPUT) if self.slots else OUTPUT_NAMES

    def __call__(self, images: Array, text: Array | None) -> dict[str, Array]:
        """The inputs by name."""
        if self.blank is None:
            return {"images": images}
        return {"images": images, ZERO_SHOT_INPUT: self.blank if text is None else text}

    def output(self, arrays: Sequence[Any]) -> EngineOutput:
        """The engine's arrays, in `outputs` order, as float32."""
        out = [np.asarray(a, np.float32) for a in arrays]
        if not self.slots:
            n, _, g, _ = out[0].shape
            out.append(np.zeros((n, 0, g, g), np.float32))
        return EngineOutput(*out)


class EngineError(RuntimeError):
    """The requested engine cannot run here; the message says why and what to do."""


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def ort_session(path: Path, device: str = "auto", threads: int = 0) -> Any:
    """An ONNX Runtime session on `path`: CUDA when asked (or auto) and available, else CPU.

    EngineError when device is cuda and onnxruntime has no CUDA provider.
    """
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
    return ort.InferenceSession(str(path), options, providers=providers)


class OnnxRuntimeEngine:
    """ONNX Runtime with the CUDA provider when asked and available, else the CPU."""

    def __init__(
        self,
        path: Path,
        device: str = "auto",
        threads: int = 0,
        max_batch: int = 32,
        feeds: Feeds | None = None,
    ) -> None:
        self.path = path
        self.feeds = feeds or Feeds(None)
        self.session = ort_session(path, device, threads)
        self.device = (
            "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        )
        self.name = f"onnxruntime-{self.device}"
        self.max_batch = max_batch

    def infer(self, images: Array, text: Array | None = None) -> EngineOutput:
        """Run one batch."""
        f = self.feeds
        return f.output(self.session.run(list(f.outputs), f(images, text)))


_OPENVINO_HINTS: Final = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


class OpenVinoEngine:
    """OpenVINO on the CPU, at fp32 or, when it keeps parity, at a lower precision."""

    def __init__(
        self,
        path: Path,
        threads: int = 0,
        max_batch: int = 32,
        precision: str = "auto",
        feeds: Feeds | None = None,
    ) -> None:
        self.feeds = feeds or Feeds(None)
        try:
            import openvino as ov
        except ImportError:
            raise EngineError(
                "engine openvino: the openvino package is not installed (pip install "
                "'scrapscan[serve,cpu]'), or choose SCRAPSCAN_ENGINE=onnxruntime"
            ) from None
        self._core = ov.Core()
        self._threads = threads
        self.model = self._core.read_model(str(path))
        capable = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        wanted = "bf16" if precision == "auto" else precision
        if wanted not in _OPENVINO_HINTS or (wanted != "fp32" and wanted.upper() not in capable):
            log.info("openvino: no %s on this CPU; fp32", wanted)
            wanted = "fp32"
        self.compiled = self._compile("fp32")
        self.precision = "fp32"
        if wanted != "fp32":
            self._lower(wanted)
        self.request = self.compiled.create_infer_request()
        self.name = f"openvino-cpu-{self.precision}"
        self.max_batch = max_batch
        self.path = path

    def _compile(self, precision: str) -> Any:
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _OPENVINO_HINTS[precision],
        }
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = self._threads
        return self._core.compile_model(self.model, "CPU", config)

    def _run(
        self, request: Any, compiled: Any, images: Array, text: Array | None = None
    ) -> EngineOutput:
        out = request.infer(self.feeds(images, text))
        by_name = {o.get_any_name(): out[o] for o in compiled.outputs}
        return self.feeds.output([by_name[n] for n in self.feeds.outputs])

    def _lower(self, precision: str) -> None:
        """Serve `precision` if its answers on check inputs keep parity with fp32's."""
        lower = self._compile(precision)
        size = self.model.inputs[0].get_partial_shape()[2].get_length()
        images = parity_check_inputs(size)
        ref = self._run(self.compiled.create_infer_request(), self.compiled, images)
        got = self._run(lower.create_infer_request(), lower, images)
        worst = max(float(np.abs(r - g).max()) for r, g in zip(ref, got, strict=True))
        agree = float((ref.class_probs.argmax(1) == got.class_probs.argmax(1)).mean())
        limit = PARITY_TOLERANCE["fp16"]
        kept = worst <= limit and agree >= MIN_ARGMAX_AGREEMENT
        log.log(
            logging.INFO if kept else logging.WARNING,
            "openvino %s against fp32 on %d check tiles: max abs difference %.2e (limit "
            "%.0e), argmax agreement %.4f (limit %.3f): serving %s",
            precision,
            len(images),
            worst,
            limit,
            agree,
            MIN_ARGMAX_AGREEMENT,
            precision if kept else "fp32",
        )
        if kept:
            self.compiled, self.precision = lower, precision

    def infer(self, images: Array, text: Array | None = None) -> EngineOutput:
        """Run one batch."""
        return self._run(self.request, self.compiled, images, text)


def parity_check_inputs(size: int, count: int = 4, seed: int = 0) -> Array:
    """(count, 3, size, size) CLIP-normalised tiles to compare precisions on.

    Half Gaussian noise, half smooth random fields (blobs and edges, more like a
    photograph's). The same every time.
    """
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((count - count // 2, 3, size, size)).astype(np.float32)
    smooth = [
        cv2.GaussianBlur(rng.standard_normal((size, size, 3)).astype(np.float32), (0, 0), 8)
        for _ in range(count // 2)
    ]
    fields = np.stack([f.transpose(2, 0, 1) / max(float(f.std()), 1e-6) for f in smooth])
    return np.ascontiguousarray(np.concatenate([noise, fields]), np.float32)


class TorchEngine:
    """The bundle's torch.export program (model.pt2) on the CPU or a CUDA GPU."""

    def __init__(
        self,
        path: Path,
        device: str = "auto",
        threads: int = 0,
        max_batch: int = 32,
        feeds: Feeds | None = None,
    ) -> None:
        import torch

        self.feeds = feeds or Feeds(None)
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineError("device cuda: torch sees no CUDA GPU; set SCRAPSCAN_DEVICE=cpu")
        self.device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        if threads:
            torch.set_num_threads(threads)
        self.module: Any = torch.export.load(str(path)).module().to(self.device)
        self.name = f"torch-{self.device}"
        self.max_batch = max_batch
        self._torch = torch

    def infer(self, images: Array, text: Array | None = None) -> EngineOutput:
        """Run one batch."""
        torch = self._torch
        inputs = [torch.from_numpy(a).to(self.device) for a in self.feeds(images, text).values()]
        with torch.inference_mode():
            out = self.module(*inputs)
        return self.feeds.output([o.float().cpu().numpy() for o in out])


class TensorRTEngine:
    """A serialized TensorRT engine built for this GPU and TensorRT version (CUDA only)."""

    def __init__(self, path: Path, max_batch: int, feeds: Feeds | None = None) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self.feeds = feeds or Feeds(None)
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineError(f"{path}: TensorRT cannot deserialize it")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.name = "tensorrt"
        self.max_batch = max_batch

    def infer(self, images: Array, text: Array | None = None) -> EngineOutput:
        """Run one batch."""
        torch = self._torch
        inputs = {k: torch.from_numpy(a).cuda() for k, a in self.feeds(images, text).items()}
        for name, x in inputs.items():
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
        outs = {}
        for name in self.feeds.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed")
        stream.synchronize()
        return self.feeds.output([outs[n].cpu().numpy() for n in self.feeds.outputs])


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


EngineFactory = Callable[[Bundle, str, int], Engine]
"""Makes an engine for a bundle, a device and a thread count."""
PLUGGED: dict[str, EngineFactory] = {}
"""Engines a launcher plugs in before the service starts: `scrapscan-iap-as` (tools/) adds
"iap-as", whose code (torch, transformers) the service itself never imports."""


def plug_engine(kind: str, factory: EngineFactory) -> None:
    """Serve `kind` (SCRAPSCAN_ENGINE) with `factory`, in this process."""
    PLUGGED[kind] = factory


_MIRRORED: Final[dict[Flip, tuple[int, ...]]] = {
    "horizontal": (-1,),
    "vertical": (-2,),
    "both": (-2, -1),
}
"""The image axes each flip reverses (the tiles' and the maps' last two axes: rows, columns)."""


class Flipped:
    """An engine whose maps are the mean over a tile and its mirrored views (manifest `flips`).

    Each view is one batch of the inner engine (so `max_batch` stays the inner one's, and
    the time a batch grows with the views); a flip undoes itself, so each view's maps are
    mirrored back the way its tiles were and every cell averages the same pixels. The
    scores, one row a tile, are averaged as they come.
    """

    def __init__(self, inner: Engine, flips: Sequence[Flip]) -> None:
        self.inner = inner
        self.axes = [_MIRRORED[f] for f in flips]
        self.name = f"{inner.name}+flips"
        self.max_batch = inner.max_batch

    def infer(self, images: Array, text: Array | None = None) -> EngineOutput:
        """The batch in every view, each view's maps mirrored back, averaged."""
        first = self.inner.infer(images, text)
        total = [np.array(a, np.float32) for a in first]  # own copies: summed in place
        for axes in self.axes:
            out = self.inner.infer(np.ascontiguousarray(np.flip(images, axes)), text)
            for name, acc, part in zip(EngineOutput._fields, total, out, strict=True):
                acc += part if name == "scores" else np.flip(part, axes)
        views = np.float32(1 + len(self.axes))
        return EngineOutput(*(acc / views for acc in total))


def open_engine(
    bundle: Bundle,
    kind: str = "auto",
    device: str = "auto",
    threads: int = 0,
    precision: str = "auto",
) -> Engine:
    """The engine `kind` for `bundle`: auto, onnxruntime, openvino, torch, tensorrt, or one plugged.

    `precision`: which ONNX file ONNX Runtime loads (fp16 where the bundle has one, else
    fp32), and for OpenVINO the precision it runs at if parity holds ("auto": bf16 where
    the CPU has it). With the manifest's test-time flips, the engine is `Flipped`.
    """
    engine = _open(bundle, kind, device, threads, precision)
    flips = bundle.manifest.postprocess.flips
    return Flipped(engine, flips) if flips else engine


def _open(bundle: Bundle, kind: str, device: str, threads: int, precision: str) -> Engine:
    if kind in PLUGGED:
        return PLUGGED[kind](bundle, device, threads)
    if kind == "iap-as":
        raise EngineError(
            "engine iap-as is the zero-shot IAP-AS pipeline (torch and transformers): start "
            "the service with scrapscan-iap-as serve (or worker) --config CONFIG --report REPORT"
        )
    m = bundle.manifest
    feeds = Feeds(m.zero_shot)
    if kind in ("auto", "tensorrt") and device != "cpu":
        found = _tensorrt_file(bundle)
        if found is not None:
            return TensorRTEngine(*found, feeds=feeds)
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
        return TorchEngine(bundle.path(torch_file), device, threads, limit, feeds)
    file_precision: Precision = "fp16" if precision == "fp16" else "fp32"
    onnx_file = m.file("onnx", file_precision) or m.file("onnx", "fp32")
    fp32_file = m.file("onnx", "fp32")
    if kind == "openvino":
        if fp32_file is None:
            raise EngineError(f"{bundle.root}: the bundle has no fp32 ONNX file for OpenVINO")
        if device == "cuda":
            raise EngineError("engine openvino runs on the CPU; set SCRAPSCAN_DEVICE=cpu or auto")
        return OpenVinoEngine(bundle.path(fp32_file), threads, precision=precision, feeds=feeds)
    if onnx_file is None:
        raise EngineError(f"{bundle.root}: the bundle has no ONNX file")
    ort = OnnxRuntimeEngine(bundle.path(onnx_file), device, threads, feeds=feeds)
    if kind != "auto" or ort.device != "cpu" or fp32_file is None:
        return ort
    try:
        ov = OpenVinoEngine(bundle.path(fp32_file), threads, precision=precision, feeds=feeds)
    except EngineError:  # not installed: ONNX Runtime it is
        return ort
    return _faster(ort, ov, size=m.input_size)


def _faster(*engines: Engine, size: int, batch: int = 2, runs: int = 2) -> Engine:
    """The engine that runs a batch of `batch` tiles fastest (best of `runs`, after one)."""
    images = np.zeros((batch, 3, size, size), np.float32)
    rates = {}
    for engine in engines:
        engine.infer(images)
        best = float("inf")
        for _ in range(runs):
            t = time.perf_counter()
            engine.infer(images)
            best = min(best, time.perf_counter() - t)
        rates[engine.name] = batch / best
    chosen = max(engines, key=lambda e: rates[e.name])
    log.info(
        "engine auto on the CPU: %s; chose %s",
        ", ".join(f"{name} {rate:.1f} tiles/s" for name, rate in rates.items()),
        chosen.name,
    )
    return chosen
