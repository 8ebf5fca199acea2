"""The pure stages of a frame's path, each a function of arrays (no I/O, no engine).

bed_crop -> make_tiles -> (engine, through the batcher) -> merge -> find_instances

Coordinates are frame pixels in COCO convention (pixel i spans [i, i + 1)).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from common.imaging import PAD_RGB, normalize, polygon_mask, resize_tile
from common.tiling import Box, Tile, cut_tile, polygon_box, tile_grid
from service.settings import CameraBed

# --- bed crop ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bed:
    """The bed used for a frame: its polygon, bounding box and pixel mask (full frame)."""

    polygon: npt.NDArray[np.float64]
    box: Box
    mask: npt.NDArray[np.bool_]
    strategy: str

    @property
    def area(self) -> int:
        """Bed pixels."""
        return int(self.mask.sum())


class BedFinder(Protocol):
    """A learned bed cropper (service.bedmodel.LearnedBed)."""

    def polygon(self, frame_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64] | None:
        """The bed outline in frame pixels, or None."""
        ...


def bed_crop(
    frame_bgr: npt.NDArray[np.uint8], camera: CameraBed, finder: BedFinder | None = None
) -> Bed:
    """The bed of a frame for a camera's strategy: full frame, fixed polygon or learned.

    When the learned model finds no bed, the whole frame is used and the strategy says so
    ("learned-none-full").
    """
    h, w = frame_bgr.shape[:2]
    full = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    strategy: str = camera.bed
    if camera.bed == "polygon" and camera.polygon is not None:
        polygon = np.asarray(camera.polygon, dtype=np.float64) * [w, h]
    elif camera.bed == "learned":
        if finder is None:
            raise ValueError("bed: learned needs the bundle's bed model")
        found = finder.polygon(frame_bgr)
        polygon = full if found is None else found
        strategy = "learned" if found is not None else "learned-none-full"
    else:
        polygon = full
    box = polygon_box(polygon, w, h)
    mask = polygon_mask(polygon, h, w)
    if not mask.any():
        raise ValueError("the bed polygon covers no pixel of the frame")
    return Bed(polygon, box, mask, strategy)


# --- tiles -----------------------------------------------------------------------------------


def make_tiles(
    frame_bgr: npt.NDArray[np.uint8], region: Box, tile_size: int, overlap: int, input_size: int
) -> tuple[tuple[Tile, ...], npt.NDArray[np.float32]]:
    """The tiles over `region` (the bed's box) and their (N, 3, S, S) CLIP-normalised inputs."""
    grid = tile_grid(region, tile_size, overlap)
    inputs = np.empty((len(grid.tiles), 3, input_size, input_size), np.float32)
    bgr_pad = PAD_RGB[::-1]
    for i, tile in enumerate(grid.tiles):
        rgb = np.ascontiguousarray(cut_tile(frame_bgr, tile, fill=bgr_pad)[..., ::-1])
        inputs[i] = normalize(resize_tile(rgb, input_size))
    return grid.tiles, inputs


# --- merge -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def blend_weights(size: int, ramp: int) -> npt.NDArray[np.float32]:
    """(size, size) weights: 1 inside, falling linearly to a small positive value at the border.

    Overlapping tiles are averaged with these weights, so a tile's border (where the
    model sees least context) counts less than its neighbour's centre, and the sum of
    weights is never zero (no division by zero, no double counting).
    """
    ramp = max(1, min(ramp, size // 2))
    i = np.arange(size, dtype=np.float32)
    edge = np.minimum(i + 0.5, size - i - 0.5) / ramp
    w1 = np.clip(edge, 1.0 / (2 * ramp), 1.0)
    weights = np.outer(w1, w1).astype(np.float32)
    weights.flags.writeable = False  # cached: shared by every merge
    return weights


@dataclass(slots=True)
class Merged:
    """Full-frame maps: anomaly (H, W) and class probabilities (C, H, W), float32."""

    anomaly: npt.NDArray[np.float32]
    classes: npt.NDArray[np.float32]


def merge(
    frame_shape: tuple[int, ...],
    bed: Bed,
    tiles: tuple[Tile, ...],
    anomaly: npt.NDArray[np.float32],
    class_probs: npt.NDArray[np.float32],
    overlap: int,
    sigma: float = 0.0,
) -> Merged:
    """Blend per-tile (N, g, g) anomaly and (N, C, g, g) class maps into full-frame maps.

    Each map is resized (bilinear) from the g x g grid to the tile's size, weighted with
    `blend_weights`, and accumulated over the bed's box; `sigma` (frame pixels) smooths
    the result as the model was evaluated. Outside the bed: anomaly 0, class normal.
    """
    h, w = frame_shape[:2]
    box = bed.box
    c = class_probs.shape[1]
    # channels last while accumulating: each tile adds one contiguous block
    acc = np.zeros((box.height, box.width, c + 1), np.float32)
    total = np.zeros((box.height, box.width, 1), np.float32)
    maps = np.concatenate([anomaly[:, None], class_probs], axis=1).transpose(0, 2, 3, 1)
    for k, tile in enumerate(tiles):
        weights = blend_weights(tile.size, overlap)[..., None]
        up = cv2.resize(maps[k], (tile.size, tile.size), interpolation=cv2.INTER_LINEAR)
        th, tw = tile.box.height, tile.box.width
        y0, x0 = tile.box.y - box.y, tile.box.x - box.x
        wt = weights[:th, :tw]
        acc[y0 : y0 + th, x0 : x0 + tw] += up.reshape(tile.size, tile.size, c + 1)[:th, :tw] * wt
        total[y0 : y0 + th, x0 : x0 + tw] += wt
    acc /= total
    if sigma > 0:
        acc = cv2.GaussianBlur(acc, (0, 0), sigma).reshape(acc.shape)
    out_anomaly = np.zeros((h, w), np.float32)
    out_classes = np.zeros((c, h, w), np.float32)
    out_classes[0] = 1.0
    rows, cols = box.slices()
    inside = bed.mask[rows, cols]
    np.copyto(out_anomaly[rows, cols], acc[..., 0], where=inside)
    np.copyto(out_classes[:, rows, cols], acc[..., 1:].transpose(2, 0, 1), where=inside)
    return Merged(out_anomaly, out_classes)


# --- instances -------------------------------------------------------------------------------


@dataclass(slots=True)
class Instance:
    """One contaminant region."""

    class_name: str
    score: float
    class_scores: dict[str, float]
    bbox: tuple[int, int, int, int]
    area: int
    polygon: list[tuple[float, float]]

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "class": self.class_name,
            "score": round(self.score, 4),
            "class_scores": {k: round(v, 4) for k, v in self.class_scores.items()},
            "bbox": list(self.bbox),
            "area": self.area,
            "polygon": [[round(x, 1), round(y, 1)] for x, y in self.polygon],
        }


@dataclass(slots=True)
class Findings:
    """What postprocessing found in a frame."""

    instances: list[Instance]
    class_mask: npt.NDArray[np.uint8]
    frame_scores: dict[str, float] = field(default_factory=dict)


def find_instances(
    merged: Merged,
    bed: Bed,
    classes: tuple[str, ...],
    threshold: float,
    min_area: int,
    max_bed_fraction: float,
) -> Findings:
    """Threshold the anomaly map inside the bed, keep components of plausible size.

    Each kept component becomes an instance whose class is the argmax of the anomaly
    classes' probabilities averaged over its pixels; the class-index mask marks its
    pixels with that class. Components over `max_bed_fraction` of the bed are not a
    contaminant (a whole-bed false alarm), those under `min_area` are noise.
    """
    h, w = merged.anomaly.shape
    binary = ((merged.anomaly >= threshold) & bed.mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    class_mask = np.zeros((h, w), np.uint8)
    instances: list[Instance] = []
    largest = max_bed_fraction * bed.area
    names = classes[1:]
    for label in range(1, count):
        x, y, bw, bh, area = (int(v) for v in stats[label])
        if area < min_area or area > largest:
            continue
        region = labels[y : y + bh, x : x + bw] == label
        per_class = merged.classes[1:, y : y + bh, x : x + bw][:, region].mean(axis=1)
        best = int(per_class.argmax())
        contours, _ = cv2.findContours(
            region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        outline = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
        outline = cv2.approxPolyDP(outline.astype(np.float32), 1.0, True).reshape(-1, 2)
        polygon = [(float(px) + x + 0.5, float(py) + y + 0.5) for px, py in outline]
        class_mask[y : y + bh, x : x + bw][region] = best + 1
        instances.append(
            Instance(
                names[best],
                float(merged.anomaly[y : y + bh, x : x + bw][region].max()),
                {n: float(s) for n, s in zip(names, per_class, strict=True)},
                (x, y, bw, bh),
                area,
                polygon,
            )
        )
    instances.sort(key=lambda i: i.score, reverse=True)
    inside = bed.mask
    scores = {"anomaly": float(merged.anomaly[inside].max())}
    for i, name in enumerate(names, start=1):
        scores[name] = float(merged.classes[i][inside].max())
    return Findings(instances, class_mask, scores)
