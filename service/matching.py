"""Which instance is which: two sets of regions of one frame matched by mask IoU.

What the shadow comparison (served vs candidate, service/shadow.py) and the served-path
evaluation (served vs truth, tools/served_eval.py) share: each region's outline as a
COCO RLE, the IoU of every pair, and a greedy one-to-one match, highest score first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils


class Outlined(Protocol):
    """An instance as found or as a result states it: an outline and a box."""

    @property
    def polygon(self) -> list[tuple[float, float]]:
        """Its outline in frame pixels."""
        ...

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """x, y, width, height in frame pixels."""
        ...


def polygon_rle(instance: Outlined, height: int, width: int) -> dict[str, Any]:
    """An instance's outline as a compressed RLE (the pixels the overlay shows)."""
    flat = [float(v) for xy in instance.polygon for v in xy]
    if len(flat) < 6:  # a region one cell wide: its box
        x, y, w, h = instance.bbox
        flat = [x, y, x + w, y, x + w, y + h, x, y + h]
    return dict(mask_utils.merge(mask_utils.frPyObjects([flat], height, width)))


def region_iou(rles: list[dict[str, Any]], others: list[dict[str, Any]]) -> npt.NDArray[np.float64]:
    """(len(rles), len(others)) mask IoU of every pair of regions."""
    if not rles or not others:
        return np.zeros((len(rles), len(others)))
    return np.asarray(mask_utils.iou(rles, others, [0] * len(others)), np.float64)


def match_regions(
    scores: Sequence[float], iou: npt.NDArray[np.float64], min_iou: float
) -> list[int | None]:
    """Per region scored by `scores`, the index of the other region it matches, or None.

    `iou` is region_iou(regions, others). Regions in descending score each take the
    unmatched other region of highest IoU, when that IoU is at least `min_iou`.
    """
    out: list[int | None] = [None] * iou.shape[0]
    taken: set[int] = set()
    for p in np.argsort(-np.asarray(scores), kind="stable"):
        for t in np.argsort(-iou[p], kind="stable"):
            if iou[p, t] < min_iou:
                break
            if int(t) not in taken:
                taken.add(int(t))
                out[p] = int(t)
                break
    return out
