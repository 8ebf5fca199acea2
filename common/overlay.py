"""Draw class maps over a frame, for people: previews, the service's overlay.jpg."""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

CLASS_COLORS_BGR: Final[tuple[tuple[int, int, int], ...]] = (
    (0, 0, 0),  # normal: not drawn
    (40, 40, 230),  # motor: red
    (20, 210, 240),  # cable: yellow
    (220, 60, 220),  # spray_can: magenta
)
TEXT_CLASS_COLOR_BGR: Final[tuple[int, int, int]] = (0, 140, 255)
"""Every class defined by text at run time (mask indices after the learned classes): orange."""
BED_COLOR_BGR: Final[tuple[int, int, int]] = (60, 220, 60)


def class_color(index: int) -> tuple[int, int, int]:
    """The colour of a class-mask index: a learned class's own, else the text classes'."""
    return CLASS_COLORS_BGR[index] if index < len(CLASS_COLORS_BGR) else TEXT_CLASS_COLOR_BGR


def draw_overlay(
    image_bgr: npt.NDArray[np.uint8],
    class_mask: npt.NDArray[np.uint8],
    bed_polygon: npt.NDArray[np.float64] | None = None,
    alpha: float = 0.55,
) -> npt.NDArray[np.uint8]:
    """Tint each anomaly class in its colour, outline its regions and the bed polygon.

    image_bgr: (H, W, 3) uint8; class_mask: (H, W) class indices (the learned classes, then
    the text-defined ones in their order); bed_polygon: (N, 2) COCO
    coordinates. Returns a new (H, W, 3) uint8 image.
    """
    out = image_bgr.copy()
    thickness = max(1, round(min(out.shape[:2]) / 540))
    for cls in range(1, max(len(CLASS_COLORS_BGR), int(class_mask.max(initial=0)) + 1)):
        region = class_mask == cls
        if not region.any():
            continue
        color = np.asarray(class_color(cls), dtype=np.float32)
        out[region] = (out[region] * (1 - alpha) + color * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(
            region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, class_color(cls), thickness, cv2.LINE_AA)
    if bed_polygon is not None:
        pts = np.round((np.asarray(bed_polygon) - 0.5) * 16).astype(np.int32)
        cv2.polylines(out, [pts], True, BED_COLOR_BGR, thickness, cv2.LINE_AA, 4)
    return out
