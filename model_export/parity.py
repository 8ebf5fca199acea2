"""Parity of an exported model with the PyTorch one, on random and synthetic patches.

Limits (the model-bundle issue): max abs difference of the probabilities <= 1e-4 for
fp32 and <= 1e-2 for fp16, and the same argmax class on >= 99.9% of the cells.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from common.bundle import (
    MIN_ARGMAX_AGREEMENT,
    PARITY_TOLERANCE,
    ZERO_SHOT_INPUT,
    ZERO_SHOT_OUTPUT,
)
from common.imaging import DEFAULT_OVERLAP, TILE_SIZE
from common.inputs import make_tiles
from common.tiling import polygon_box
from model_export.graph import OUTPUT_NAMES, InferenceGraph

Outputs = tuple[npt.NDArray[np.float32], ...]
Runner = Callable[[npt.NDArray[np.float32]], Outputs]

TOLERANCE = PARITY_TOLERANCE


class ParityError(RuntimeError):
    """An exported file disagrees with the PyTorch model beyond the limits."""


@dataclass(frozen=True, slots=True)
class Parity:
    """How far an exported file is from the PyTorch model."""

    max_abs: dict[str, float]
    argmax_agreement: float
    inputs: int

    def check(self, precision: str, what: str) -> None:
        """Raise ParityError naming `what` when a limit is exceeded."""
        limit = TOLERANCE[precision]
        worst = max(self.max_abs.values())
        if worst > limit or self.argmax_agreement < MIN_ARGMAX_AGREEMENT:
            raise ParityError(
                f"{what}: max abs difference {worst:.2e} (limit {limit:.0e}), argmax "
                f"agreement {self.argmax_agreement:.4%} (limit {MIN_ARGMAX_AGREEMENT:.1%})"
            )

    def as_dict(self) -> dict[str, object]:
        """For the manifest."""
        return {
            "max_abs": {k: float(f"{v:.3g}") for k, v in self.max_abs.items()},
            "argmax_agreement": round(self.argmax_agreement, 6),
            "inputs": self.inputs,
        }


def parity_inputs(
    input_size: int, random: int = 4, synthetic: int = 4, seed: int = 0
) -> npt.NDArray[np.float32]:
    """(N, 3, S, S) CLIP-normalised inputs: Gaussian noise, then synthetic crane-frame tiles."""
    from training.synth import render_frame

    rng = np.random.default_rng(seed)
    out = [rng.standard_normal((random, 3, input_size, input_size)).astype(np.float32)]
    index = 0
    while synthetic > 0:  # cut as the service cuts: bed box, 512 px tiles, 64 px overlap
        frame = render_frame(seed, index, 1280, 720)
        h, w = frame.image.shape[:2]
        box = polygon_box(frame.bed_polygon, w, h)
        _, inputs = make_tiles(frame.image, box, TILE_SIZE, DEFAULT_OVERLAP, input_size)
        out.append(inputs[:synthetic])
        synthetic -= len(out[-1])
        index += 1
    return np.concatenate(out)


def zero_shot_check_text(slots: int, width: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """(slots, 2, width) unit vectors to check the text-class maps with (the same every time)."""
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((slots, 2, width)).astype(np.float32)
    return np.asarray(text / np.linalg.norm(text, axis=-1, keepdims=True), np.float32)


def torch_runner(
    graph: InferenceGraph | torch.nn.Module, text: npt.NDArray[np.float32] | None = None
) -> Runner:
    """Run a PyTorch graph (the module or a loaded torch.export program) on CPU.

    `text`: the zero_shot_text fed with every batch, for a graph with text-class slots.
    """
    extra = () if text is None else (torch.from_numpy(text),)

    def run(x: npt.NDArray[np.float32]) -> Outputs:
        with torch.no_grad():
            return tuple(o.numpy() for o in graph(torch.from_numpy(x), *extra))

    return run


def onnx_runner(path: Path, text: npt.NDArray[np.float32] | None = None) -> Runner:
    """Run an ONNX file with ONNX Runtime's CPU provider (`text` as for torch_runner)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    extra = {} if text is None else {ZERO_SHOT_INPUT: text}

    def run(x: npt.NDArray[np.float32]) -> Outputs:
        return tuple(np.asarray(o) for o in session.run(outputs, {"images": x, **extra}))

    return run


def single_output(
    path: Path, module: torch.nn.Module, name: str, x: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]:
    """A one-input, one-output ONNX file (bed, region, text) against its PyTorch module.

    Returns ONNX Runtime's answer for `x` (fed as input `name`), PyTorch's, and their
    largest absolute difference.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.asarray(session.run(None, {name: x})[0], np.float32)
    with torch.no_grad():
        ref = np.asarray(module(torch.from_numpy(x)).numpy(), np.float32)
    return got, ref, float(np.abs(got - ref).max())


def compare(reference: Runner, candidate: Runner, inputs: npt.NDArray[np.float32]) -> Parity:
    """Run both on `inputs` in batches of 4 and measure the differences of every output."""
    max_abs: dict[str, float] = {}
    agree = cells = 0
    for start in range(0, len(inputs), 4):
        x = np.ascontiguousarray(inputs[start : start + 4])
        ref, got = reference(x), candidate(x)
        if len(ref) != len(got):
            raise ParityError(f"{len(got)} outputs, expected {len(ref)}")
        names = (*OUTPUT_NAMES, ZERO_SHOT_OUTPUT)[: len(ref)]
        for name, r, g in zip(names, ref, got, strict=True):
            if r.shape != g.shape:
                raise ParityError(f"output {name}: shape {g.shape}, expected {r.shape}")
            max_abs[name] = max(max_abs.get(name, 0.0), float(np.abs(r - g).max()))
        agree += int((ref[0].argmax(axis=1) == got[0].argmax(axis=1)).sum())
        cells += ref[0].shape[0] * ref[0].shape[2] * ref[0].shape[3]
    return Parity(max_abs, agree / cells, len(inputs))
