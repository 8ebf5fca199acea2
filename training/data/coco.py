"""COCO segmentations: masks to polygons and back.

COCO puts pixel i in [i, i + 1): a polygon vertex (x, y) is a point in the image plane,
and a pixel belongs to a polygon when its centre (i + 0.5, j + 0.5) lies inside. The
polygons written here run a quarter pixel inside the region's outer pixel edges, so any
centre-sampling rasteriser (pycocotools', CVAT's) gives back exactly the same pixels.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

Polygon = list[float]
"""A flat COCO polygon: [x0, y0, x1, y1, ...]."""


def mask_to_polygons(
    region: npt.NDArray[np.bool_ | np.uint8], offset: tuple[int, int] = (0, 0)
) -> list[Polygon]:
    """Outer outlines of the connected parts of a binary (H, W) `region`, as COCO polygons.

    Each part gives one polygon (holes are not described: COCO polygons cannot express
    them). `offset` (x, y) is added to every vertex, for a region cut out of a frame.
    """
    # On a twice-upsampled grid the traced outline passes through the centres of the
    # boundary sub-pixels, i.e. a quarter pixel inside the original pixel edges.
    up = np.repeat(np.repeat(region.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        pts = (c.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0 + np.asarray(
            offset, dtype=np.float64
        )
        if len(pts) < 3:  # cannot happen on the upsampled grid; guard against degenerate input
            continue
        polygons.append([round(float(v), 2) for v in pts.ravel()])
    return polygons


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> npt.NDArray[np.bool_]:
    """Rasterise a COCO segmentation (list of polygons, or RLE, compressed or not) to (H, W) bool.

    Raises ValueError for a segmentation of no known form or the wrong size.
    """
    out: npt.NDArray[np.bool_] = mask_utils.decode(segmentation_to_rle(segmentation, height, width))
    return out.astype(bool)


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A COCO segmentation (polygons, or RLE compressed or not) as one compressed RLE.

    Raises ValueError for a segmentation of no known form or the wrong size.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if len(polygons) != len(segmentation):
            raise ValueError("a polygon needs at least three (x, y) vertices")
        if not polygons:
            raise ValueError("empty segmentation")
        rles = mask_utils.frPyObjects(polygons, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(
                f"RLE size {segmentation['size']} differs from the image's [{height}, {width}]"
            )
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
    else:
        raise ValueError("segmentation is neither a list of polygons nor an RLE dict")
    return dict(rle)
