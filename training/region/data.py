"""Regions to train and judge the region encoder on, cut from labelled frames.

A region is a class and an outline in a frame:
- each labelled contaminant: a COCO instance as it is (one instance, one region, its
  visible parts together); in an images/ + masks/ folder, each class mask split into
  individual regions, by connected components or, where touching objects share one
  component, by DBSCAN over the class's pixels (the paper's way);
- plain scrap (class normal): ellipses inside the bed, sized like the contaminants, on
  no contaminant pixel, drawn once per frame with a fixed seed;
- hard negatives (class normal): the regions a served model reported where nothing was
  (`scrapscan-eval` writes them as false_regions.json);
- served finds: the regions a served model reported on a contaminant, as its true class
  in the served outline, as the service will describe them (found_regions.json).

`RegionCrops` cuts every region once (each frame decoded once), as the service cuts an
instance (common.regions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from common.classes import CLASS_NAMES
from common.imaging import polygon_mask
from common.regions import cut_region
from training.data.coco import segmentation_to_mask
from training.data.frames import FrameRecord, FrameSet

NEGATIVES_FILE = "false_regions.json"
FINDS_FILE = "found_regions.json"


@dataclass(frozen=True, slots=True)
class Region:
    """One region of a frame: its class (0 normal) and where it is."""

    frame: FrameRecord
    class_index: int
    box: tuple[int, int, int, int]
    """x, y, width, height in frame pixels."""
    source: str
    """label, normal (plain scrap drawn from the bed), negative (a served false region) or
    served (a served find)."""
    segmentation: Any = None
    """A COCO segmentation (polygons or RLE) in frame pixels, or None with `mask`."""
    mask: npt.NDArray[np.bool_] | None = None
    """The region's pixels inside `box`, when there is no segmentation."""
    score: float = 1.0
    """A served region's score as the service's rule compared it (1 for others)."""

    def pixels(self) -> npt.NDArray[np.bool_]:
        """(h, w) the region's pixels inside its box."""
        if self.mask is not None:
            return self.mask
        x, y, w, h = self.box
        full = segmentation_to_mask(self.segmentation, self.frame.height, self.frame.width)
        return np.asarray(full[y : y + h, x : x + w], bool)


def _box(xs: npt.NDArray[np.int64], ys: npt.NDArray[np.int64]) -> tuple[int, int, int, int]:
    x0, y0 = int(xs.min()), int(ys.min())
    return x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1


def split_mask(
    class_mask: npt.NDArray[np.bool_], how: str = "components", eps: float = 4.0
) -> list[tuple[tuple[int, int, int, int], npt.NDArray[np.bool_]]]:
    """A class mask's individual regions: (box, pixels in the box) each.

    "components": 8-connected components; "dbscan": DBSCAN over the pixels (eps in
    pixels, a point with 8 neighbours within eps is a core point), which also splits
    objects that touch along a thin bridge.
    """
    if how == "components":
        n, labels = cv2.connectedComponents(class_mask.astype(np.uint8), connectivity=8)
    elif how == "dbscan":
        from sklearn.cluster import DBSCAN

        ys, xs = np.nonzero(class_mask)
        labels = np.zeros(class_mask.shape, np.int32)
        if len(xs):
            found = DBSCAN(eps=eps, min_samples=9).fit_predict(np.stack([xs, ys], axis=1))
            labels[ys, xs] = found + 1  # noise (-1) becomes 0: left out
        n = int(labels.max()) + 1
    else:
        raise ValueError(f"split {how!r}: components or dbscan")
    out = []
    for k in range(1, n):
        ys, xs = np.nonzero(labels == k)
        if len(xs) == 0:
            continue
        x, y, w, h = _box(xs, ys)
        out.append(((x, y, w, h), labels[y : y + h, x : x + w] == k))
    return out


def labelled_regions(frames: FrameSet, split: str = "components") -> list[Region]:
    """Every labelled contaminant of the folder as a region."""
    out = []
    for f in frames.frames:
        if f.instances:
            for inst in f.instances:
                x, y, w, h = (round(v) for v in inst.bbox)
                if w <= 0 or h <= 0:
                    continue
                out.append(Region(f, inst.class_index, (x, y, w, h), "label", inst.segmentation))
        elif f.mask_path is not None and frames.layout == "folders":
            mask = f.load_mask()
            for k in np.unique(mask):
                if 0 < k < 255:
                    for box, pixels in split_mask(mask == k, split):
                        out.append(Region(f, int(k), box, "label", mask=pixels))
    return out


def normal_regions(
    frames: FrameSet, per_frame: int, sizes: Sequence[int], seed: int
) -> list[Region]:
    """Plain-scrap ellipses inside each frame's bed: `per_frame` each, sized like `sizes`."""
    rng = np.random.default_rng(seed)
    sizes = list(sizes) or [64]
    out = []
    for f in frames.frames:
        if per_frame == 0:
            break
        taken = f.load_mask() > 0
        bed = (
            polygon_mask(f.bed_polygon, f.height, f.width)
            if f.bed_polygon is not None
            else np.ones((f.height, f.width), bool)
        )
        made = 0
        for _ in range(per_frame * 20):
            if made == per_frame:
                break
            side = int(rng.choice(sizes))
            w = max(8, int(side * rng.uniform(0.6, 1.4)))
            h = max(8, int(side * rng.uniform(0.6, 1.4)))
            box = f.bed_box()
            if box.width <= w or box.height <= h:
                continue
            x = int(rng.integers(box.x, box.x1 - w))
            y = int(rng.integers(box.y, box.y1 - h))
            ellipse = np.zeros((h, w), np.uint8)
            cv2.ellipse(ellipse, (w // 2, h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
            pixels = ellipse.astype(bool)
            inside = bed[y : y + h, x : x + w]
            if not inside[pixels].all() or taken[y : y + h, x : x + w][pixels].any():
                continue
            out.append(Region(f, 0, (x, y, w, h), "normal", mask=pixels))
            made += 1
    return out


def _served_regions(path: Path, frames: FrameSet, listing: str, finds: bool) -> list[Region]:
    """The regions `path` (a `listing` of scrapscan-eval) gives on the frames of `frames`."""
    by_name = {f.image_path.name: f for f in frames.frames}
    out = []
    try:
        listed = json.loads(path.read_text())["frames"]
        for name, regions in listed.items():
            f = by_name.get(Path(name).name)
            if f is None:
                continue
            for r in regions:
                x, y, w, h = (int(v) for v in r["bbox"])
                if w > 0 and h > 0:
                    flat = [float(v) for xy in r["polygon"] for v in xy]
                    seg = [flat] if len(flat) >= 6 else [[x, y, x + w, y, x + w, y + h, x, y + h]]
                    score = float(r.get("score", 1.0))
                    k = CLASS_NAMES.index(r["class"]) if finds else 0
                    source = "served" if finds else "negative"
                    out.append(Region(f, k, (x, y, w, h), source, seg, score=score))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise ValueError(f"{path}: not a {listing} of scrapscan-eval ({err!r})") from None
    return out


def negative_regions(path: Path, frames: FrameSet) -> list[Region]:
    """The served false regions of `path` (false_regions.json) on the frames of `frames`.

    ValueError naming the file when it is not one; frames the folder does not hold are
    left out.
    """
    return _served_regions(path, frames, NEGATIVES_FILE, finds=False)


def found_regions(path: Path, frames: FrameSet) -> list[Region]:
    """The served instances of `path` (found_regions.json) that found a true one.

    Each as the true instance's class in the outline the service gave it. ValueError
    naming the file when it is not one (or names a class that is not a contaminant's);
    frames the folder does not hold are left out.
    """
    regions = _served_regions(path, frames, FINDS_FILE, finds=True)
    if any(r.class_index == 0 for r in regions):
        raise ValueError(f"{path}: not a {FINDS_FILE} of scrapscan-eval (a find of class normal)")
    return regions


def cut(
    image: npt.NDArray[np.uint8],
    region: Region,
    size: int,
    context: float,
    min_crop: int,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """(size, size, 3) RGB crop and (size, size) alpha of one region (common.regions)."""
    return cut_region(image, region.box, region.pixels(), size, context, min_crop)


@dataclass(slots=True)
class RegionCrops:
    """Every region cut once: (N, S, S, 3) RGB, (N, S, S) alpha, (N,) classes."""

    rgb: npt.NDArray[np.uint8]
    alpha: npt.NDArray[np.uint8]
    classes: npt.NDArray[np.int64]
    regions: list[Region]

    @classmethod
    def cut(cls, regions: list[Region], size: int, context: float, min_crop: int) -> RegionCrops:
        """Cut the regions, decoding each frame once."""
        rgb = np.zeros((len(regions), size, size, 3), np.uint8)
        alpha = np.zeros((len(regions), size, size), np.uint8)
        by_frame: dict[Path, list[int]] = {}
        for k, r in enumerate(regions):
            by_frame.setdefault(r.frame.image_path, []).append(k)
        for indices in by_frame.values():
            image = regions[indices[0]].frame.load_image()
            for k in indices:
                rgb[k], alpha[k] = cut(image, regions[k], size, context, min_crop)
        classes = np.asarray([r.class_index for r in regions], np.int64)
        return cls(rgb, alpha, classes, regions)

    def __len__(self) -> int:
        return len(self.regions)
