"""The region encoder into the bundle: region.onnx and its descriptions (common.bundle).

The trained encoder (scrapscan-region) is exported as one graph over a four-channel
input, the CLIP-normalised crop and the instance's mask, and checked against PyTorch
on crops cut from synthetic frames; the descriptions go through the text tower here, so
the service needs no text model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.regions import cut_region
from model_export.onnx_export import export_onnx
from model_export.parity import single_output

REGION_FILE = "region.onnx"
PARITY_LIMIT = 1e-4


class RegionGraph(torch.nn.Module):
    """(N, 4, S, S) crop and mask -> (N, D) L2-normalised embedding."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, region: torch.Tensor) -> torch.Tensor:
        """The encoder on the crop (first three channels) and mask (the fourth)."""
        return self.encoder.encode_region(region[:, :3], region[:, 3:])  # type: ignore[no-any-return]


def region_inputs(size: int, context: float, min_crop: int, count: int = 6) -> np.ndarray[Any, Any]:
    """(count, 4, S, S) crops of synthetic frames around boxes of several sizes."""
    from training.region.train import to_inputs
    from training.synth import render_frame

    frame = render_frame(9, 0, 1280, 720).image
    rgb: list[np.ndarray[Any, Any]] = []
    alpha: list[np.ndarray[Any, Any]] = []
    for k in range(count):
        side = 20 + 30 * k
        box = (200 + 90 * k, 250, side, side // 2 + 10)
        pixels = np.ones((box[3], box[2]), bool)
        pixels[: box[3] // 3] = False
        c, a = cut_region(frame, box, pixels, size, context, min_crop)
        rgb.append(c)
        alpha.append(a)
    images, masks = to_inputs(np.stack(rgb), np.stack(alpha), torch.device("cpu"))
    return torch.cat([images, masks], dim=1).numpy()


@dataclass(frozen=True)
class RegionSource:
    """A scrapscan-region checkpoint as read: its encoder, config and descriptions."""

    checkpoint: Path
    encoder: Any
    cfg: Any
    descriptions: Any


def read_region_encoder(checkpoint: Path) -> RegionSource:
    """Read a scrapscan-region checkpoint.

    ValueError names a wrong file; read before an export's slow part.
    """
    from training.model import WeightsError
    from training.region.describe import load_descriptions
    from training.region.train import load_encoder

    try:
        encoder, cfg = load_encoder(checkpoint)
        descriptions = load_descriptions(cfg.descriptions)
    except (WeightsError, ValueError) as err:
        raise ValueError(str(err)) from None
    return RegionSource(checkpoint, encoder, cfg, descriptions)


def export_region_encoder(source: Path | RegionSource, out: Path, max_batch: int) -> dict[str, Any]:
    """Write region.onnx for a scrapscan-region checkpoint; returns the manifest's region.

    `source`: the checkpoint's path, or `read_region_encoder`'s reading of it. Raises
    ValueError (not a checkpoint, or parity over PARITY_LIMIT) naming the file.
    """
    if not isinstance(source, RegionSource):
        source = read_region_encoder(source)
    encoder, m = source.encoder, source.cfg.model
    graph = RegionGraph(encoder).eval()
    export_onnx(
        graph,
        out,
        (4, m.input_size, m.input_size),
        max_batch,
        input_names=("region",),
        output_names=("embedding",),
    )
    x = region_inputs(m.input_size, m.context, m.min_crop)
    _, _, diff = single_output(out, graph, "region", x)
    if diff > PARITY_LIMIT:
        raise ValueError(f"{out.name}: max abs difference {diff:.2e} against PyTorch")
    from common.classes import CLASS_NAMES

    flat = source.descriptions.flat
    texts = encoder.encode_texts([t for _, t in flat]).numpy()
    return {
        "file": REGION_FILE,
        "input_size": m.input_size,
        "context": m.context,
        "min_crop": m.min_crop,
        "descriptions": [{"text": t, "class_name": CLASS_NAMES[k]} for k, t in flat],
        "embeddings": [[round(float(v), 7) for v in row] for row in texts],
        "metrics": {"checkpoint": str(source.checkpoint)},
        "parity": {"max_abs": diff, "inputs": len(x)},
    }
