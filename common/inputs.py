"""A region of a frame turned into the model's input batch: what export and service share.

The service tiles each frame's bed this way; the export checks its files on patches
made the same way, so that the parity it measures is the parity the service sees.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from common.imaging import CLIP_MEAN, CLIP_STD, PAD_RGB, normalize, resize_tile
from common.tiling import Box, Tile, cut_tile, tile_grid

_TILE_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tiles")


def make_tiles(
    frame_bgr: npt.NDArray[np.uint8],
    region: Box,
    tile_size: int,
    overlap: int,
    input_size: int,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> tuple[tuple[Tile, ...], npt.NDArray[np.float32]]:
    """The tiles over `region` (the bed's box) and their (N, 3, S, S) normalised inputs.

    Normalised with the RGB `mean` and `std` the model was trained with (a bundle's).
    """
    grid = tile_grid(region, tile_size, overlap)
    inputs = np.empty((len(grid.tiles), 3, input_size, input_size), np.float32)
    bgr_pad = PAD_RGB[::-1]

    def one(i: int) -> None:
        # resized in BGR (each channel on its own: the same values), normalised as RGB
        cut = np.asarray(cut_tile(frame_bgr, grid.tiles[i], fill=bgr_pad), np.uint8)
        normalize(resize_tile(cut, input_size), inputs[i], True, mean, std)

    # OpenCV and numpy let go of the GIL here: two threads halve the stage on two cores
    list(_TILE_POOL.map(one, range(len(grid.tiles))))
    return grid.tiles, inputs
