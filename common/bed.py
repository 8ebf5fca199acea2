"""The learned bed cropper's input and output geometry, shared by training and service."""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

BED_INPUT: Final[tuple[int, int]] = (224, 384)
"""(height, width) of the downscaled frame the bed model sees."""


def bed_input(frame_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(3, 224, 384) float32 in [-1, 1], RGB, from a BGR frame of any size."""
    h, w = BED_INPUT
    small = cv2.resize(frame_bgr, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[..., ::-1].transpose(2, 0, 1), dtype=np.float32) / 127.5 - 1


def mask_polygon(
    prob: npt.NDArray[np.float32], frame_w: int, frame_h: int, threshold: float = 0.5
) -> npt.NDArray[np.float64] | None:
    """The outline of the largest region of a (224, 384) bed probability map, in frame pixels.

    The region's convex hull, simplified to a few corners, in COCO convention; None when
    no pixel reaches the threshold.
    """
    binary = (prob >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    contours, _ = cv2.findContours(
        (labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    corners = cv2.approxPolyDP(hull, 0.01 * cv2.arcLength(hull, True), True).reshape(-1, 2)
    h, w = prob.shape
    scaled: npt.NDArray[np.float64] = (corners.astype(np.float64) + 0.5) * [
        frame_w / w,
        frame_h / h,
    ]
    return scaled
