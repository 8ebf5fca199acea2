"""Labelled frames on disk, COCO segmentations and training patches.

`load_frames` reads a data folder into a `FrameSet`; `PatchSet` cuts it into model-sized
patches; `training.data.dataset.PatchDataset` (needs torch) feeds them to a DataLoader.
"""

from training.data.frames import DataError, FrameRecord, FrameSet, Problem, load_frames
from training.data.patches import ClassStats, Patch, PatchSet

__all__ = [
    "ClassStats",
    "DataError",
    "FrameRecord",
    "FrameSet",
    "Patch",
    "PatchSet",
    "Problem",
    "load_frames",
]
