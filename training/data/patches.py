"""Training patches: each frame cropped to its truck bed and cut into model-sized tiles.

This follows the paper: frame -> bed crop -> 512 px tiles -> resized to 518 (bicubic for
the image, nearest for the class mask) -> OpenAI CLIP normalisation. The tiling is the
one the service uses (common.tiling), so training and serving see the same patches.
Tiles that are mostly outside the bed polygon (yard, cab) are left out. This module
needs no torch; `training.data.dataset` wraps it for a DataLoader.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from common.imaging import (
    DEFAULT_OVERLAP,
    INPUT_SIZE,
    PAD_RGB,
    TILE_SIZE,
    polygon_mask,
    resize_mask,
    resize_tile,
)
from common.tiling import Tile, cut_tile, tile_grid
from training.config import RunConfig
from training.data.frames import FrameRecord, FrameSet

_COVERAGE_SCALE = 4  # the bed polygon is rasterised at 1/4 resolution to measure coverage


@dataclass(frozen=True, slots=True)
class PatchRef:
    """Where a patch comes from: frame index in the FrameSet, its tile, bed coverage."""

    frame: int
    tile: Tile
    bed_fraction: float


@dataclass(frozen=True, slots=True)
class Patch:
    """A model input and its labels.

    image: (input_size, input_size, 3) uint8 RGB.
    mask: (input_size, input_size) uint8 class indices, IGNORE_INDEX on padding.
    """

    ref: PatchRef
    image: npt.NDArray[np.uint8]
    mask: npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class ClassStats:
    """Per class (normal first): labelled pixels at input size, and patches containing it.

    A patch counts as "normal" when it holds no anomaly pixel at all.
    """

    pixels: tuple[int, ...]
    patches: tuple[int, ...]
    total_patches: int

    def table(self) -> str:
        """Plain-text table for people."""
        rows = [f"{'class':<10} {'pixels':>14} {'patches':>8}"]
        rows += [
            f"{n:<10} {p:>14,} {c:>8}"
            for n, p, c in zip(CLASS_NAMES, self.pixels, self.patches, strict=True)
        ]
        rows.append(f"{'all':<10} {sum(self.pixels):>14,} {self.total_patches:>8}")
        return "\n".join(rows)


def bed_coverage(frame: FrameRecord, tiles: tuple[Tile, ...]) -> list[float]:
    """Fraction of each tile's frame pixels that lie inside the frame's bed polygon."""
    if frame.bed_polygon is None:
        return [1.0] * len(tiles)
    s = _COVERAGE_SCALE
    h, w = -(-frame.height // s), -(-frame.width // s)
    bed = polygon_mask(frame.bed_polygon, h, w, (1 / s, 1 / s)).astype(np.uint8)
    out = []
    for t in tiles:
        b = t.box
        cell = bed[b.y // s : -(-b.y1 // s), b.x // s : -(-b.x1 // s)]
        out.append(float(cell.mean()) if cell.size else 0.0)
    return out


class PatchSet:
    """All training patches of a FrameSet, in frame order.

    Frames are decoded on demand and the last `cache_frames` are kept, so reading the
    patches of one frame one after another decodes it once.
    """

    def __init__(
        self,
        frames: FrameSet,
        tile_size: int = TILE_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        input_size: int = INPUT_SIZE,
        min_bed_fraction: float = 0.25,
        cache_frames: int = 4,
    ) -> None:
        if not 0.0 <= min_bed_fraction <= 1.0:
            raise ValueError(f"min_bed_fraction must be in [0, 1], got {min_bed_fraction}")
        self.frames = frames
        self.input_size = input_size
        self._cache: OrderedDict[int, tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]] = (
            OrderedDict()
        )
        self._cache_frames = cache_frames
        refs = []
        for i, frame in enumerate(frames.frames):
            grid = tile_grid(frame.bed_box(), tile_size, overlap)
            for tile, frac in zip(grid.tiles, bed_coverage(frame, grid.tiles), strict=True):
                if frac >= min_bed_fraction and frac > 0.0:
                    refs.append(PatchRef(i, tile, frac))
        self.refs: tuple[PatchRef, ...] = tuple(refs)

    @classmethod
    def for_config(cls, frames: FrameSet, cfg: RunConfig) -> PatchSet:
        """The patches a run with configuration `cfg` trains and is evaluated on."""
        return cls(
            frames,
            cfg.data.tile_size,
            cfg.data.overlap,
            cfg.model.input_size,
            cfg.data.min_bed_fraction,
        )

    def __len__(self) -> int:
        return len(self.refs)

    def _frame(self, i: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        record = self.frames.frames[i]
        image, mask = record.load_image(), record.load_mask()
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"{record.image_path}: image {image.shape[1]}x{image.shape[0]} and "
                f"mask {mask.shape[1]}x{mask.shape[0]} differ in size"
            )
        self._cache[i] = (image, mask)
        while len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return image, mask

    def __getitem__(self, index: int) -> Patch:
        ref = self.refs[index]
        image, mask = self._frame(ref.frame)
        tile_rgb = cut_tile(image, ref.tile, fill=PAD_RGB)
        tile_mask = cut_tile(mask, ref.tile, fill=IGNORE_INDEX)
        return Patch(
            ref,
            resize_tile(np.ascontiguousarray(tile_rgb), self.input_size),
            resize_mask(np.ascontiguousarray(tile_mask), self.input_size),
        )

    def holding(self, boxes: dict[int, list[tuple[int, int, int, int]]]) -> list[int]:
        """Indices of the patches holding at least half of one of the boxes.

        `boxes`: per frame index, (x, y, width, height) boxes in frame pixels. A box on
        the overlap of two tiles can be held by both.
        """
        out = []
        for i, ref in enumerate(self.refs):
            t = ref.tile.box
            for x, y, w, h in boxes.get(ref.frame, ()):
                inside = max(0, min(x + w, t.x1) - max(x, t.x)) * max(
                    0, min(y + h, t.y1) - max(y, t.y)
                )
                if w > 0 and h > 0 and 2 * inside >= w * h:
                    out.append(i)
                    break
        return out

    def pixel_counts(self) -> npt.NDArray[np.int64]:
        """(patches, NUM_CLASSES) labelled pixels of each class per patch; reads the masks only."""
        counts = np.zeros((len(self.refs), NUM_CLASSES), dtype=np.int64)
        current, mask = -1, np.zeros((0, 0), dtype=np.uint8)
        for i, ref in enumerate(self.refs):
            if ref.frame != current:
                current, mask = ref.frame, self.frames.frames[ref.frame].load_mask()
            m = resize_mask(
                np.ascontiguousarray(cut_tile(mask, ref.tile, fill=IGNORE_INDEX)), self.input_size
            )
            counts[i] = np.bincount(m.ravel(), minlength=256)[:NUM_CLASSES]
        return counts

    def class_stats(self, counts: npt.NDArray[np.int64] | None = None) -> ClassStats:
        """Count labelled pixels and patches per class (from `pixel_counts()` if given)."""
        if counts is None:
            counts = self.pixel_counts()
        present = counts > 0
        present[:, 0] = ~present[:, 1:].any(axis=1)
        return ClassStats(
            tuple(int(v) for v in counts.sum(axis=0)),
            tuple(int(v) for v in present.sum(axis=0)),
            len(self.refs),
        )
