"""Write synthetic frames as a data folder: images/, masks/ and a COCO annotations.json."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.classes import ANOMALY_CLASSES
from common.overlay import draw_overlay
from common.tiling import polygon_box
from training.data.coco import mask_to_polygons
from training.synth.frame import COVER, SyntheticFrame, render_frame

JPEG_QUALITY = 92
PREVIEW_FRAMES = 8
PREVIEW_CELL = (960, 540)
OUTPUTS = ("images", "masks", "annotations.json", "preview.jpg")
"""What write_dataset creates in its folder, and all that --overwrite removes."""


@dataclass(frozen=True, slots=True)
class _FrameJob:
    out: Path
    seed: int
    index: int
    width: int
    height: int
    cover: float


@dataclass(slots=True)
class _FrameResult:
    image: dict[str, Any]
    annotations: list[dict[str, Any]]
    seconds: float
    preview: np.ndarray | None = None


@dataclass(slots=True)
class DatasetSummary:
    """What write_dataset wrote, and how long each frame took to render and encode."""

    out: Path
    frames: int
    frames_with_contaminants: int
    instances: dict[str, int]
    seconds_per_frame: list[float] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        """Median time per frame: rendering, encoding and writing the image and mask."""
        return statistics.median(self.seconds_per_frame)


def frame_name(index: int) -> str:
    """File stem of frame `index`."""
    return f"frame_{index:05d}"


def coco_categories() -> list[dict[str, Any]]:
    """COCO categories of the anomaly classes; a category id equals its class index."""
    return [
        {"id": i, "name": name, "supercategory": "contaminant"}
        for i, name in enumerate(ANOMALY_CLASSES, start=1)
    ]


def frame_annotations(frame: SyntheticFrame) -> list[dict[str, Any]]:
    """COCO annotations of a frame's instances (ids and image_id filled in by the caller)."""
    out = []
    for inst in frame.instances:
        region = frame.instance_map == inst.instance_id
        ys, xs = np.nonzero(region)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        polygons = mask_to_polygons(region[y0:y1, x0:x1], offset=(x0, y0))
        out.append(
            {
                "category_id": inst.class_index,
                "segmentation": polygons,
                "area": inst.area,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0,
                "attributes": {"occluded": inst.occluded},
            }
        )
    return out


def _write_frame(job: _FrameJob) -> _FrameResult:
    cv2.setNumThreads(1)
    start = time.perf_counter()
    frame = render_frame(job.seed, job.index, job.width, job.height, job.cover)
    name = frame_name(job.index)
    image_file = job.out / "images" / f"{name}.jpg"
    mask = frame.class_mask()
    if not cv2.imwrite(str(image_file), frame.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"cannot write {image_file}")
    mask_file = job.out / "masks" / f"{name}.png"
    if not cv2.imwrite(str(mask_file), mask, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"cannot write {mask_file}")
    annotations = frame_annotations(frame)
    seconds = time.perf_counter() - start
    image = {
        "id": job.index + 1,
        "file_name": f"{name}.jpg",
        "width": job.width,
        "height": job.height,
        "bed_polygon": [round(float(v), 2) for v in frame.bed_polygon.ravel()],
    }
    preview = None
    if job.index < PREVIEW_FRAMES:
        preview = _preview_cell(frame, mask)
    return _FrameResult(image, annotations, seconds, preview)


def _preview_cell(frame: SyntheticFrame, mask: np.ndarray) -> np.ndarray:
    """The frame's bed crop with labels drawn, letterboxed into a PREVIEW_CELL image."""
    h, w = mask.shape
    box = polygon_box(frame.bed_polygon, w, h, margin=round(0.02 * w))
    crop = draw_overlay(frame.image, mask, frame.bed_polygon)[box.slices()]
    cw, ch = PREVIEW_CELL
    scale = min(cw / box.width, ch / box.height)
    size = (max(1, round(box.width * scale)), max(1, round(box.height * scale)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    cell = np.zeros((ch, cw, 3), dtype=np.uint8)
    y, x = (ch - size[1]) // 2, (cw - size[0]) // 2
    cell[y : y + size[1], x : x + size[0]] = small
    return cell


def _run(jobs: list[_FrameJob], workers: int) -> Iterator[_FrameResult]:
    if workers == 1:
        yield from map(_write_frame, jobs)
        return
    # spawn, not fork: a process forked after torch or OpenCV started their thread pools
    # can deadlock in them
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(_write_frame, jobs, chunksize=1)


def prepare_folder(out: Path, overwrite: bool) -> None:
    """Create `out`, refusing to mix a new data set into an existing one.

    Raises FileExistsError when `out` already holds any of OUTPUTS and overwrite is
    False. With overwrite, only OUTPUTS are removed; other files in `out` stay.
    """
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and not overwrite:
        raise FileExistsError(
            f"{out} already holds {', '.join(present)}; pass --overwrite to replace them"
        )
    for name in present:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)


def write_dataset(
    out: Path,
    frames: int,
    seed: int,
    width: int = 3840,
    height: int = 2160,
    workers: int = 1,
    overwrite: bool = False,
    preview: bool = False,
    cover: float = COVER,
) -> DatasetSummary:
    """Render `frames` frames seeded with `seed` into `out` (layout: see DESIGN.md).

    Frame i depends only on (seed, i), so the result does not depend on `workers`.
    `cover` is the share of each bed's scrap laid over the contaminants
    (training.synth.frame.COVER). With `preview`, a contact sheet of the first frames
    with their labels drawn over them is written to out/preview.jpg.
    """
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not 0.0 <= cover <= 1.0:
        raise ValueError(f"cover must be in [0, 1], got {cover}")
    prepare_folder(out, overwrite)
    jobs = [_FrameJob(out, seed, i, width, height, cover) for i in range(frames)]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    sheet: list[np.ndarray] = []
    summary = DatasetSummary(out, frames, 0, dict.fromkeys(ANOMALY_CLASSES, 0))
    for result in _run(jobs, workers):
        images.append(result.image)
        for ann in result.annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": result.image["id"], **ann})
            summary.instances[ANOMALY_CLASSES[ann["category_id"] - 1]] += 1
        summary.frames_with_contaminants += bool(result.annotations)
        summary.seconds_per_frame.append(result.seconds)
        if result.preview is not None:
            sheet.append(result.preview)
    coco = {
        "info": {
            "description": "scrapscan synthetic crane frames",
            "seed": seed,
            "frame_size": [width, height],
            "cover": cover,
        },
        "licenses": [],
        "categories": coco_categories(),
        "images": images,
        "annotations": annotations,
    }
    tmp = out / "annotations.json.tmp"
    tmp.write_text(json.dumps(coco, separators=(",", ":")))
    os.replace(tmp, out / "annotations.json")
    if preview and sheet:
        _write_sheet(out / "preview.jpg", sheet)
    return summary


def _write_sheet(path: Path, tiles: list[np.ndarray]) -> None:
    cols = 2 if len(tiles) > 1 else 1
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    sheet = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = t
    cv2.imwrite(str(path), sheet, [cv2.IMWRITE_JPEG_QUALITY, 90])
