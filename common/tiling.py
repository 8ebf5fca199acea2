"""Tiling geometry: which square tiles cover a region of a frame, and how pixels map back.

Everything here is a pure function of integers. A region (usually the bed crop) is
covered by tiles of `tile_size` pixels that overlap by at least `overlap` pixels; the
last row and column are moved back so that they end on the region's border instead of
spilling over. A region narrower (or lower) than one tile gets a single tile along that
axis, covering the region and padded on the right (or bottom) up to `tile_size`.

Coordinates are integer pixel indices; frame pixel (x, y) is column x, row y. The model
sees a tile resized to `input_size`; `Tile.input_to_frame` maps those pixels back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.imaging import DEFAULT_OVERLAP, INPUT_SIZE, TILE_SIZE


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned rectangle of whole pixels: columns x..x+width-1, rows y..y+height-1."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"a box needs a positive size, got {self.width}x{self.height}")

    @property
    def x1(self) -> int:
        """One past the last column."""
        return self.x + self.width

    @property
    def y1(self) -> int:
        """One past the last row."""
        return self.y + self.height

    def slices(self) -> tuple[slice, slice]:
        """Row and column slices that cut this box out of an (H, W, ...) array."""
        return slice(self.y, self.y1), slice(self.x, self.x1)


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a grid, in frame pixel coordinates.

    `box` is the part of the frame the tile covers. It is `size` x `size` unless the
    region is smaller than a tile along an axis; the tile image is then padded on the
    right or bottom to `size`, and padded pixels map to no frame pixel.
    """

    row: int
    col: int
    box: Box
    size: int

    @property
    def padded(self) -> bool:
        """True when the tile covers less than size x size frame pixels."""
        return self.box.width < self.size or self.box.height < self.size

    def tile_to_frame(
        self, u: npt.ArrayLike, v: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Map tile pixels (column u, row v) to frame pixels.

        Returns (x, y, valid): valid is False for padded pixels, which have no frame pixel.
        """
        uu = np.asarray(u, dtype=np.int64)
        vv = np.asarray(v, dtype=np.int64)
        valid = (uu >= 0) & (vv >= 0) & (uu < self.box.width) & (vv < self.box.height)
        return uu + self.box.x, vv + self.box.y, valid

    def frame_to_tile(
        self, x: npt.ArrayLike, y: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Map frame pixels to this tile's pixels; valid is False outside the tile's box."""
        xx = np.asarray(x, dtype=np.int64)
        yy = np.asarray(y, dtype=np.int64)
        inside = (xx >= self.box.x) & (xx < self.box.x1) & (yy >= self.box.y) & (yy < self.box.y1)
        return xx - self.box.x, yy - self.box.y, inside

    def input_to_frame(
        self, p: npt.ArrayLike, q: npt.ArrayLike, input_size: int = INPUT_SIZE
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Map model-input pixel centres (column p, row q) to frame coordinates (floats).

        The padded `size` x `size` tile is resized to `input_size`; pixel centres scale
        about their centres, so input pixel p sits at tile coordinate
        (p + 0.5) * size / input_size - 0.5.
        """
        scale = self.size / input_size
        pp = (np.asarray(p, dtype=np.float64) + 0.5) * scale - 0.5
        qq = (np.asarray(q, dtype=np.float64) + 0.5) * scale - 0.5
        return pp + self.box.x, qq + self.box.y


@dataclass(frozen=True, slots=True)
class TileGrid:
    """The tiles covering `region`, row-major, with `rows` x `cols` tiles."""

    region: Box
    tile_size: int
    overlap: int
    rows: int
    cols: int
    tiles: tuple[Tile, ...]


def axis_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of `length` pixels.

    Consecutive starts are `tile_size - overlap` apart; the last start is `length -
    tile_size` so that the last tile ends on the border. A length up to one tile gives
    the single start 0.
    """
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for tile {tile_size}")
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if length <= tile_size:
        return [0]
    stride = tile_size - overlap
    starts = list(range(0, length - tile_size, stride))
    starts.append(length - tile_size)
    return starts


def tile_grid(region: Box, tile_size: int = TILE_SIZE, overlap: int = DEFAULT_OVERLAP) -> TileGrid:
    """Cover `region` with tiles of `tile_size` pixels overlapping by at least `overlap`."""
    xs = axis_starts(region.width, tile_size, overlap)
    ys = axis_starts(region.height, tile_size, overlap)
    tile_w = min(tile_size, region.width)
    tile_h = min(tile_size, region.height)
    tiles = tuple(
        Tile(
            row=r,
            col=c,
            box=Box(region.x + x0, region.y + y0, tile_w, tile_h),
            size=tile_size,
        )
        for r, y0 in enumerate(ys)
        for c, x0 in enumerate(xs)
    )
    return TileGrid(region, tile_size, overlap, len(ys), len(xs), tiles)


def polygon_box(
    points: Sequence[Sequence[float]] | npt.NDArray[np.floating],
    image_width: int,
    image_height: int,
    margin: int = 0,
) -> Box:
    """The whole-pixel bounding box of a polygon, grown by `margin` and clipped to the image.

    `points` are (x, y) vertices in COCO convention (pixel i spans [i, i + 1)). Raises
    ValueError when the polygon lies entirely outside the image.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise ValueError("a polygon needs at least one vertex")
    x0 = max(int(np.floor(pts[:, 0].min())) - margin, 0)
    y0 = max(int(np.floor(pts[:, 1].min())) - margin, 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + margin, image_width)
    y1 = min(int(np.ceil(pts[:, 1].max())) + margin, image_height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"polygon lies outside the {image_width}x{image_height} image")
    return Box(x0, y0, x1 - x0, y1 - y0)


def cut_tile(
    image: npt.NDArray[np.generic], tile: Tile, fill: float | tuple[int, ...] = 0
) -> npt.NDArray[np.generic]:
    """Cut `tile` out of an (H, W) or (H, W, C) frame array, padding it to size x size.

    `fill` is the padding's value, or one value per channel.
    """
    crop = image[tile.box.slices()]
    if not tile.padded:
        return crop
    out = np.full((tile.size, tile.size, *image.shape[2:]), fill, dtype=image.dtype)
    out[: tile.box.height, : tile.box.width] = crop
    return out
