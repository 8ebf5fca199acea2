"""A region of a frame as the region encoder sees it: a square crop and its alpha mask.

The crop is the region's box grown by `context` of its longer side on each side, made
square (at least `min_crop` pixels), at the encoder's input size; the alpha channel is
255 on the region's pixels and 0 elsewhere, also outside the frame (black there). The
same for training (training.region) and for the service's instances.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

Box = tuple[int, int, int, int]
"""x, y, width, height in frame pixels."""


def crop_box(box: Box, context: float, min_crop: int) -> tuple[int, int, int]:
    """The square crop of a region's box: its left, top and side in frame pixels."""
    x, y, w, h = box
    side = max(min_crop, math.ceil(max(w, h) * (1 + 2 * context)))
    return x + w // 2 - side // 2, y + h // 2 - side // 2, side


def cut_region(
    image: npt.NDArray[np.uint8],
    box: Box,
    pixels: npt.NDArray[np.bool_],
    size: int,
    context: float,
    min_crop: int,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """(size, size, 3) crop of `image` and (size, size) alpha of the region.

    `pixels`: (h, w) the region's pixels inside `box`.
    """
    left, top, side = crop_box(box, context, min_crop)
    h, w = image.shape[:2]
    canvas = np.zeros((side, side, *image.shape[2:]), np.uint8)
    alpha = np.zeros((side, side), np.uint8)
    sx0, sy0 = max(0, left), max(0, top)
    sx1, sy1 = min(w, left + side), min(h, top + side)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[sy0:sy1, sx0:sx1]
    x, y, rw, rh = box
    ax, ay = x - left, y - top  # the box lies inside the crop: side >= its longer side
    alpha[ay : ay + rh, ax : ax + rw][pixels] = 255
    rgb = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    a = cv2.resize(alpha, (size, size), interpolation=cv2.INTER_AREA)
    return np.asarray(rgb, np.uint8), np.asarray(a, np.uint8)
