"""The pure stages of a frame's path, each a function of arrays (no I/O, no engine).

bed_crop -> (common.inputs.make_tiles) -> (engine, through the batcher) -> merge ->
find_instances

Coordinates are frame pixels in COCO convention (pixel i spans [i, i + 1)).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from common.bundle import Refine
from common.imaging import polygon_mask
from common.tiling import Box, Tile, polygon_box
from service import result
from service.settings import CameraBed
from service.zeroshot import TextRule

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

    "auto" is learned when there is a bed model (`finder`), else the full frame. When the
    learned model finds no bed, the whole frame is used and the strategy says so
    ("learned-none-full").
    """
    h, w = frame_bgr.shape[:2]
    full = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    kind = camera.bed
    if kind == "auto":
        kind = "full" if finder is None else "learned"
    strategy: str = kind
    if kind == "polygon" and camera.polygon is not None:
        polygon = np.asarray(camera.polygon, dtype=np.float64) * [w, h]
    elif kind == "learned":
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


# --- merge -----------------------------------------------------------------------------------


def _ramp(u: npt.NDArray[np.floating[Any]], size: int, ramp: int) -> npt.NDArray[np.float32]:
    """The blend weights' 1-D profile at tile-local pixel positions u (pixel i at i)."""
    ramp = max(1, min(ramp, size // 2))
    edge = np.minimum(u + 0.5, size - u - 0.5) / ramp
    return np.asarray(np.clip(edge, 1.0 / (2 * ramp), 1.0), np.float32)


@functools.lru_cache(maxsize=8)
def blend_weights(size: int, ramp: int) -> npt.NDArray[np.float32]:
    """(size, size) weights: 1 inside, falling linearly to a small positive value at the border.

    Overlapping tiles are averaged with these weights, so a tile's border (where the
    model sees least context) counts less than its neighbour's centre, and the sum of
    weights is never zero (no division by zero, no double counting).
    """
    w1 = _ramp(np.arange(size, dtype=np.float64), size, ramp)
    weights = np.outer(w1, w1).astype(np.float32)
    weights.flags.writeable = False  # cached: shared by every merge
    return weights


@dataclass(slots=True)
class Merged:
    """Maps over the frame at 1/stride of its resolution, and the bed's mask on that grid.

    Cell i covers frame pixels [i * stride, (i + 1) * stride): anomaly (H', W') and class
    probabilities (C, H', W'), float32.
    """

    anomaly: npt.NDArray[np.float32]
    classes: npt.NDArray[np.float32]
    bed_mask: npt.NDArray[np.bool_]
    stride: int = 1
    zero_shot: npt.NDArray[np.float32] | None = None
    """(K, H', W') the text-defined classes' maps (0 outside the bed), when scored."""
    blended: npt.NDArray[np.float32] | None = None
    """With refined maps, the anomaly map as blended before: what the scores are read from."""

    @property
    def scoring(self) -> npt.NDArray[np.float32]:
        """The map instance and frame scores are read from: the model's own probabilities.

        Refinement moves where a map is lit (the outlines), not how sure the model is; the
        guided filter can also overshoot, and clipped scores would tie at 1.
        """
        return self.anomaly if self.blended is None else self.blended


def _cells(n: int, stride: int) -> int:
    return -(-n // stride)


def _interpolation(pos: npt.NDArray[np.floating[Any]], n: int) -> npt.NDArray[np.float32]:
    """(len(pos), n) linear interpolation weights: row k samples position pos[k].

    Positions are clamped to the border, as cv2.resize does.
    """
    pos = np.clip(pos, 0, n - 1)
    i0 = np.minimum(np.floor(pos).astype(np.intp), max(n - 2, 0))
    frac = pos - i0
    out = np.zeros((len(pos), n), np.float32)
    rows = np.arange(len(pos))
    out[rows, i0] = 1 - frac
    out[rows, np.minimum(i0 + 1, n - 1)] += frac
    return out


def _bilinear_at(
    grid: npt.NDArray[np.float32],
    ys: npt.NDArray[np.floating[Any]],
    xs: npt.NDArray[np.floating[Any]],
) -> npt.NDArray[np.float32]:
    """(g, g, C) sampled bilinearly at grid positions ys x xs: (len(ys), len(xs), C)."""
    ay = _interpolation(ys, grid.shape[0])
    ax = _interpolation(xs, grid.shape[1])
    out = ay @ grid.transpose(2, 0, 1) @ ax.T  # (C, len(ys), len(xs))
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def refined(
    maps: npt.NDArray[np.float32],
    guide: npt.NDArray[np.uint8],
    refine: Refine,
    stride: int,
) -> npt.NDArray[np.float32]:
    """(H', W', C) maps guided-filtered with the BGR `guide` (the frame pixels they cover).

    The guide is shrunk to the maps' grid (one cell per `stride` x `stride` pixels, fewer
    in a last partial cell); the window's radius is `refine.radius_px` in frame pixels, at
    least one cell; `refine.eps` is for colours in [0, 1]. The filtered maps are clipped
    back to [0, 1].
    """
    h, w = maps.shape[:2]
    small = cv2.resize(guide, (w, h), interpolation=cv2.INTER_AREA)
    radius = max(1, round(refine.radius_px / stride))
    # the 8-bit guide is filtered in its own units, where eps is 255^2 times as large
    out = cv2.ximgproc.guidedFilter(small, maps, radius, refine.eps * 255.0**2)
    return np.asarray(np.clip(out.reshape(maps.shape), 0.0, 1.0), np.float32)


def merge(
    frame_shape: tuple[int, ...],
    bed: Bed,
    tiles: tuple[Tile, ...],
    anomaly: npt.NDArray[np.float32],
    class_probs: npt.NDArray[np.float32],
    overlap: int,
    sigma: float = 0.0,
    stride: int = 1,
    zero_shot: npt.NDArray[np.float32] | None = None,
    refine: Refine | None = None,
    frame: npt.NDArray[np.uint8] | None = None,
) -> Merged:
    """Blend per-tile (N, g, g) anomaly and (N, C, g, g) class maps into maps of the frame.

    `zero_shot` (N, K, g, g), the text-defined classes' maps, are blended the same way.
    With `refine`, the anomaly and class maps are then guided-filtered with `frame` (BGR,
    the frame the tiles were cut from) as the guide (`refined`), and the anomaly map as
    blended is kept to score from (`Merged.scoring`); the text-defined classes' maps are
    left as blended, their thresholds being the operator's.

    Each map is resized (bilinear) from the g x g grid to the tile's cells, weighted with
    `blend_weights`, and accumulated over the bed's box; `sigma` (frame pixels) smooths
    the result as the model was evaluated. Outside the bed: anomaly 0, class normal.

    With stride s > 1 the maps have one cell per s x s frame pixels, sampled at the
    cell's centre: the model sees a 512 px tile as 37 x 37 cells (about 14 px each), so
    s = 4 keeps what it saw at s^2 less work. The tiles are where they are at s = 1 (the
    model sees the same inputs): a tile whose origin lies on the cell grid is resized in
    one call, any other is sampled at its cells' centres.
    """
    h, w = frame_shape[:2]
    box = bed.box
    c = class_probs.shape[1]
    if zero_shot is not None:  # blended as further channels, split off at the end
        class_probs = np.concatenate([class_probs, zero_shot], axis=1)
    k_text = class_probs.shape[1] - c
    c = class_probs.shape[1]
    g = anomaly.shape[-1]
    # the box's cells on the global grid (cell i covers frame pixels [i*s, (i+1)*s))
    cy0, cx0 = box.y // stride, box.x // stride
    bh, bw = _cells(box.y1, stride) - cy0, _cells(box.x1, stride) - cx0
    # channels last while accumulating: each tile adds one contiguous block
    acc = np.zeros((bh, bw, c + 1), np.float32)
    total = np.zeros((bh, bw, 1), np.float32)
    maps = np.concatenate([anomaly[:, None], class_probs], axis=1).transpose(0, 2, 3, 1)
    for k, tile in enumerate(tiles):
        ty, tx = tile.box.y // stride, tile.box.x // stride
        ny, nx = _cells(tile.box.y1, stride) - ty, _cells(tile.box.x1, stride) - tx
        aligned = tile.size % stride == 0 and tile.box.y % stride == 0 and tile.box.x % stride == 0
        if aligned:
            size = tile.size // stride
            up = cv2.resize(maps[k], (size, size), interpolation=cv2.INTER_LINEAR)
            up = up.reshape(size, size, c + 1)[:ny, :nx]
            wt = blend_weights(size, max(1, overlap // stride))[:ny, :nx, None]
        else:  # cell centres in tile pixels, then in the g x g grid
            uy = np.arange(ty, ty + ny) * stride + (stride - 1) / 2 - tile.box.y
            ux = np.arange(tx, tx + nx) * stride + (stride - 1) / 2 - tile.box.x
            scale = g / tile.size
            up = _bilinear_at(maps[k], (uy + 0.5) * scale - 0.5, (ux + 0.5) * scale - 0.5)
            wt = np.outer(_ramp(uy, tile.size, overlap), _ramp(ux, tile.size, overlap))[..., None]
        y0, x0 = ty - cy0, tx - cx0
        acc[y0 : y0 + ny, x0 : x0 + nx] += up * wt
        total[y0 : y0 + ny, x0 : x0 + nx] += wt
    acc /= total
    if sigma > 0:
        acc = cv2.GaussianBlur(acc, (0, 0), sigma / stride).reshape(acc.shape)
    raw = None
    if refine is not None:
        if frame is None:
            raise ValueError("refining the maps needs the frame as their guide")
        raw = acc[..., 0].copy()
        channels = slice(0, c + 1 - k_text)  # the anomaly and learned class maps
        window = (
            slice(cy0 * stride, (cy0 + bh) * stride),
            slice(cx0 * stride, (cx0 + bw) * stride),
        )
        acc[..., channels] = refined(acc[..., channels], frame[window], refine, stride)
    gh, gw = _cells(h, stride), _cells(w, stride)
    scaled = np.asarray(bed.polygon) / stride
    bed_mask = bed.mask if stride == 1 else polygon_mask(scaled, gh, gw)
    out_anomaly = np.zeros((gh, gw), np.float32)
    out_classes = np.zeros((c, gh, gw), np.float32)
    out_classes[0] = 1.0
    rows, cols = slice(cy0, cy0 + bh), slice(cx0, cx0 + bw)
    inside = bed_mask[rows, cols]
    np.copyto(out_anomaly[rows, cols], acc[..., 0], where=inside)
    np.copyto(out_classes[:, rows, cols], acc[..., 1:].transpose(2, 0, 1), where=inside)
    blended = None
    if raw is not None:
        blended = np.zeros((gh, gw), np.float32)
        np.copyto(blended[rows, cols], raw, where=inside)
    if zero_shot is None:
        return Merged(out_anomaly, out_classes, bed_mask, stride, blended=blended)
    learned = c - k_text
    texts = out_classes[learned:]
    texts[:, ~bed_mask] = 0.0
    return Merged(out_anomaly, out_classes[:learned], bed_mask, stride, texts, blended)


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
    zero_shot: bool = False
    """Of a class defined by text (service.zeroshot), not a learned one."""

    def result(self) -> result.Instance:
        """As a frame's result states it (scores to 4 places, outline to 0.1 px)."""
        return result.Instance(
            zero_shot=self.zero_shot,
            class_name=self.class_name,
            score=round(self.score, 4),
            class_scores={k: round(v, 4) for k, v in self.class_scores.items()},
            bbox=self.bbox,
            area=self.area,
            polygon=[(round(x, 1), round(y, 1)) for x, y in self.polygon],
        )


@dataclass(slots=True)
class Findings:
    """What postprocessing found in a frame."""

    instances: list[Instance]
    class_mask: npt.NDArray[np.uint8]
    frame_scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InstanceRule:
    """What makes a region of the merged maps an instance (the bundle's postprocess).

    A cell is on when its anomaly probability reaches the threshold of its most likely
    contaminant class (`class_thresholds`, in the bundle's class order, else
    `pixel_threshold` for all). A connected region of on cells is an instance when its
    area lies between `min_area` frame pixels and `max_bed_fraction` of the bed, and its
    score (its highest anomaly probability, in `Merged.scoring`) reaches `min_score`.
    """

    pixel_threshold: float
    min_area: int
    max_bed_fraction: float
    class_thresholds: tuple[float, ...] | None = None
    min_score: float = 0.0

    def cell_thresholds(self, classes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32] | float:
        """The threshold of each cell of (C, H, W) class probabilities (normal first)."""
        if self.class_thresholds is None:
            return self.pixel_threshold
        table = np.asarray(self.class_thresholds, np.float32)
        return np.asarray(table[classes[1:].argmax(axis=0)], np.float32)

    def describe(self, reject_score: float) -> dict[str, Any]:
        """The thresholds as a result states them."""
        return {
            "pixel": self.pixel_threshold,
            "classes": list(self.class_thresholds) if self.class_thresholds else None,
            "min_area_px": self.min_area,
            "max_bed_fraction": self.max_bed_fraction,
            "min_score": self.min_score,
            "reject_score": reject_score,
        }


@dataclass(frozen=True, slots=True)
class _Region:
    """A connected region of on cells, in frame pixels."""

    cells: tuple[slice, slice]
    """Its bounding box on the map's grid."""
    on: npt.NDArray[np.bool_]
    """Its cells within that box."""
    bbox: tuple[int, int, int, int]
    area: int
    polygon: list[tuple[float, float]]


def _regions(
    on: npt.NDArray[np.bool_], merged: Merged, bed: Bed, rule: InstanceRule
) -> list[_Region]:
    """The connected regions of `on` (inside the bed) of an instance's size (`rule`)."""
    s = merged.stride
    fh, fw = bed.mask.shape[:2]
    binary = (on & merged.bed_mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    gh, gw = on.shape[:2]
    # frame pixels per cell: s x s, fewer in the last row and column of a frame whose
    # size is not a multiple of s
    row_px = np.minimum(s, fh - np.arange(gh) * s).astype(np.int64)
    col_px = np.minimum(s, fw - np.arange(gw) * s).astype(np.int64)
    largest = rule.max_bed_fraction * bed.area
    out = []
    for label in range(1, count):
        x, y, bw, bh, _ = (int(v) for v in stats[label])
        region = labels[y : y + bh, x : x + bw] == label
        area = int((region * row_px[y : y + bh, None] * col_px[None, x : x + bw]).sum())
        if area < rule.min_area or area > largest:
            continue
        # outlined at frame resolution (each cell its s x s pixels), so that a region one
        # cell wide still has an area, as at stride 1
        pixels = region.astype(np.uint8)
        if s > 1:
            pixels = cv2.resize(pixels, (bw * s, bh * s), interpolation=cv2.INTER_NEAREST_EXACT)
        contours, _ = cv2.findContours(pixels, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float32)
        outline = cv2.approxPolyDP(outline, 1.0, True).reshape(-1, 2)
        polygon = [
            (min(float(px) + x * s + 0.5, fw), min(float(py) + y * s + 0.5, fh))
            for px, py in outline
        ]
        x0, y0 = x * s, y * s
        bbox = (x0, y0, min((x + bw) * s, fw) - x0, min((y + bh) * s, fh) - y0)
        out.append(_Region((slice(y, y + bh), slice(x, x + bw)), region, bbox, area, polygon))
    return out


def find_instances(
    merged: Merged,
    bed: Bed,
    classes: tuple[str, ...],
    rule: InstanceRule,
    text: TextRule | None = None,
) -> Findings:
    """Threshold the anomaly map inside the bed, keep the regions `rule` accepts.

    Each kept component becomes an instance whose class is the argmax of the anomaly
    classes' probabilities averaged over its cells; the class-index mask (full frame size)
    marks its pixels with that class. Components over `max_bed_fraction` of the bed are
    not a contaminant (a whole-bed false alarm), those under `min_area` frame pixels are
    noise, those scoring under `min_score` are below what the frame verdict counts.
    Boxes, areas and polygons are in frame pixels whatever the map's stride.

    With `text` (and merged.zero_shot), each text-defined class's map is cut the same way
    at its own threshold: its instances are marked zero-shot and scored by their highest
    probability of the class; the mask marks them len(classes) + k, drawn over the
    learned classes' where both claim a cell.
    """
    s = merged.stride
    fh, fw = bed.mask.shape[:2]
    gh, gw = merged.anomaly.shape[:2]
    cells = np.zeros((gh, gw), np.uint8)
    instances: list[Instance] = []
    names = classes[1:]
    on = merged.anomaly >= rule.cell_thresholds(merged.classes)
    for r in _regions(on, merged, bed, rule):
        score = float(merged.scoring[r.cells][r.on].max())
        if score < rule.min_score:
            continue
        per_class = merged.classes[(slice(1, None), *r.cells)][:, r.on].mean(axis=1)
        best = int(per_class.argmax())
        cells[r.cells][r.on] = best + 1
        by_class = {n: float(v) for n, v in zip(names, per_class, strict=True)}
        instances.append(Instance(names[best], score, by_class, r.bbox, r.area, r.polygon))
    texts = merged.zero_shot
    if text is not None and texts is not None:
        for k, (name, threshold) in enumerate(zip(text.names, text.thresholds, strict=True)):
            for r in _regions(texts[k] >= threshold, merged, bed, rule):
                score = float(texts[k][r.cells][r.on].max())
                if score < rule.min_score:
                    continue
                cells[r.cells][r.on] = len(classes) + k
                mean = float(texts[k][r.cells][r.on].mean())
                instances.append(
                    Instance(name, score, {name: mean}, r.bbox, r.area, r.polygon, True)
                )
    instances.sort(key=lambda i: i.score, reverse=True)
    if s == 1:
        class_mask = cells
    else:  # each cell becomes its s x s block of frame pixels
        up = cv2.resize(cells, (gw * s, gh * s), interpolation=cv2.INTER_NEAREST_EXACT)
        class_mask = np.ascontiguousarray(up[:fh, :fw])
    inside = merged.bed_mask
    scores = {"anomaly": float(merged.scoring[inside].max())}
    for i, name in enumerate(names, start=1):
        scores[name] = float(merged.classes[i][inside].max())
    if text is not None and texts is not None:
        for k, name in enumerate(text.names):
            scores[name] = float(texts[k][inside].max())
    return Findings(instances, class_mask, scores)
