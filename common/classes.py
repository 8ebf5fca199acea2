"""The classes a frame is segmented into.

A class index is the value stored per pixel in a mask PNG and the position of the class
in a model's output maps. Index 0 is the normal scrap; COCO category ids of the anomaly
classes equal their class index.
"""

from __future__ import annotations

from typing import Final

CLASS_NAMES: Final[tuple[str, ...]] = ("normal", "motor", "cable", "spray_can")
"""Class names in index order: mask value i means CLASS_NAMES[i]."""

ANOMALY_CLASSES: Final[tuple[str, ...]] = CLASS_NAMES[1:]
"""The contaminants, in index order (class index = position + 1)."""

NORMAL: Final[int] = 0
IGNORE_INDEX: Final[int] = 255
"""Mask value for pixels that carry no label (padding of tiles smaller than a tile)."""

NUM_CLASSES: Final[int] = len(CLASS_NAMES)


def class_index(name: str) -> int:
    """Return the class index of an anomaly class name.

    Accepts the spellings annotation tools produce for the same class ("spray can",
    "Spray_Can", "spray-can"). Raises KeyError naming the known classes otherwise.
    """
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key in ANOMALY_CLASSES:
        return CLASS_NAMES.index(key)
    raise KeyError(f"unknown class {name!r}; known classes: {', '.join(ANOMALY_CLASSES)}")
