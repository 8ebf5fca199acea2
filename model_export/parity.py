"""Parity of an exported model with the PyTorch one, on random and synthetic patches.

Limits (the model-bundle issue): max abs difference of the probabilities <= 1e-4 for
fp32 and <= 1e-2 for fp16, and the same argmax class on >= 99.9% of the cells.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from common.bundle import MIN_ARGMAX_AGREEMENT, PARITY_TOLERANCE
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


def torch_runner(graph: InferenceGraph | torch.nn.Module) -> Runner:
    """Run a PyTorch graph (the module or a loaded torch.export program) on CPU."""

    def run(x: npt.NDArray[np.float32]) -> Outputs:
        with torch.no_grad():
            return tuple(o.numpy() for o in graph(torch.from_numpy(x)))

    return run


def onnx_runner(path: Path) -> Runner:
    """Run an ONNX file with ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: npt.NDArray[np.float32]) -> Outputs:
        return tuple(np.asarray(o) for o in session.run(list(OUTPUT_NAMES), {"images": x}))

    return run


def compare(reference: Runner, candidate: Runner, inputs: npt.NDArray[np.float32]) -> Parity:
    """Run both on `inputs` in batches of 4 and measure the differences."""
    max_abs = dict.fromkeys(OUTPUT_NAMES, 0.0)
    agree = cells = 0
    for start in range(0, len(inputs), 4):
        x = np.ascontiguousarray(inputs[start : start + 4])
        ref, got = reference(x), candidate(x)
        for name, r, g in zip(OUTPUT_NAMES, ref, got, strict=True):
            if r.shape != g.shape:
                raise ParityError(f"output {name}: shape {g.shape}, expected {r.shape}")
            max_abs[name] = max(max_abs[name], float(np.abs(r - g).max()))
        agree += int((ref[0].argmax(axis=1) == got[0].argmax(axis=1)).sum())
        cells += ref[0].shape[0] * ref[0].shape[2] * ref[0].shape[3]
    return Parity(max_abs, agree / cells, len(inputs))
