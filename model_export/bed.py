"""The bed cropper in a bundle: exported from its checkpoint and checked.

`bed.onnx` takes the frame scaled to common.bed.BED_INPUT and answers the bed's
probability per pixel (`bed_probs`); the service crops the truck bed with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_export import ExportError
from model_export.onnx_export import export_onnx
from model_export.parity import ParityError, single_output

BED_FILE = "bed.onnx"


def read_bed_model(path: Path) -> tuple[torch.nn.Module, dict[str, float]]:
    """The bed cropper of a scrapscan-train-bed file and its metrics.

    ExportError names a wrong file; read before an export's slow part.
    """
    from training.bedseg import load_bed_model

    try:
        return load_bed_model(path)
    except ValueError as err:
        raise ExportError(str(err)) from None


def export_bed_model(bed: tuple[torch.nn.Module, dict[str, float]], out: Path) -> dict[str, Any]:
    """Write the bed cropper (`read_bed_model`'s) as ONNX; check it on synthetic frames."""
    from common.bed import BED_INPUT, bed_input
    from training.synth import render_frame

    net, metrics = bed
    graph = torch.nn.Sequential(net, torch.nn.Sigmoid()).eval()
    h, w = BED_INPUT
    export_onnx(graph, out, (3, h, w), 16, output_names=("bed_probs",))
    x = np.stack([bed_input(render_frame(7, i, 768, 432).image) for i in range(4)])
    got, ref, diff = single_output(out, graph, "images", x)
    agree = float(((got > 0.5) == (ref > 0.5)).mean())
    if diff > 1e-4 or agree < 0.999:
        raise ParityError(f"{out.name}: max abs difference {diff:.2e}, mask agreement {agree:.4%}")
    return {
        "file": BED_FILE,
        "input_height": h,
        "input_width": w,
        "metrics": metrics,
        "parity": {"max_abs": diff, "mask_agreement": agree, "inputs": len(x)},
    }
