"""Labelled data folders joined into one folder to train on.

A yard's frames with its operators' judged frames (scrapscan-data export-feedback), the
frames of two cameras, plain and covered synthetic sets:

    OUT/images/<source>-<file>     the frames, hard-linked where the file system allows
    OUT/masks/<source>-<name>.png  a mask per frame when any source has masks/ (a frame
                                   whose source has none gets its instances drawn)
    OUT/annotations.json           COCO: every source's images and annotations with new ids,
                                   categories joined by name; each image keeps its own
                                   fields (bed_polygon, truck_id, ...) and gains "source"

<source> is the source folder's name (with its position added when two are alike). Every
source is checked as training loads it first; a source with problems stops the merge
before anything is written, and OUT appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from common.classes import CLASS_NAMES
from training.data.frames import FrameRecord, FrameSet


@dataclass(frozen=True, slots=True)
class MergeSummary:
    """What a merge wrote."""

    frames: int
    instances: int
    per_source: tuple[tuple[str, int], ...]
    """(prefix, frames) per source, in the order given."""


def _prefixes(roots: Sequence[Path]) -> list[str]:
    names = [r.resolve().name or "data" for r in roots]
    return [n if names.count(n) == 1 else f"{n}{k + 1}" for k, n in enumerate(names)]


def _place(src: Path, dst: Path) -> None:
    """Hard-link `src` at `dst`, or copy it when the file system cannot link."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _source_coco(frames: FrameSet) -> dict[str, Any]:
    """The source's COCO document; a folder-layout source as images without annotations."""
    if frames.layout == "coco":
        ann = frames.root / "annotations.json" if frames.root.is_dir() else frames.root
        coco: dict[str, Any] = json.loads(ann.read_text())
        return coco
    images = [
        {"id": k + 1, "file_name": f.image_path.name, "width": f.width, "height": f.height}
        for k, f in enumerate(frames.frames)
    ]
    return {"images": images, "annotations": [], "categories": []}


def merge_folders(sets: Sequence[FrameSet], out: Path) -> MergeSummary:
    """Write the frames of the loaded folders `sets` (load_frames) to the new folder `out`.

    ValueError when `out` exists or fewer than two folders are given.
    """
    if len(sets) < 2:
        raise ValueError("merge needs at least two data folders")
    if out.exists():
        raise ValueError(f"{out} exists; choose a new folder")
    prefixes = _prefixes([s.root for s in sets])
    with_masks = any(f.mask_path is not None for s in sets for f in s.frames)

    categories = [{"id": k, "name": n} for k, n in enumerate(CLASS_NAMES) if k > 0]
    by_name = {c["name"]: c["id"] for c in categories}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    per_source = []
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (work / "images").mkdir()
        if with_masks:
            (work / "masks").mkdir()
        for prefix, frames in zip(prefixes, sets, strict=True):
            coco = _source_coco(frames)
            category = {}
            for c in coco["categories"]:
                if c["name"] not in by_name:  # the bed category: kept, under a new id
                    by_name[c["name"]] = len(categories) + 1
                    categories.append({**c, "id": by_name[c["name"]]})
                category[c["id"]] = by_name[c["name"]]
            image_id = {}
            # load_frames kept every image, in the document's order, or raised
            for img, record in zip(coco["images"], frames.frames, strict=True):
                name = f"{prefix}-{record.image_path.name}"
                _place(record.image_path, work / "images" / name)
                if with_masks:
                    _write_mask(record, work / "masks" / f"{prefix}-{record.name}.png")
                image_id[img["id"]] = len(images) + 1
                images.append({**img, "id": len(images) + 1, "file_name": name, "source": prefix})
            for ann in coco["annotations"]:
                annotations.append(
                    {
                        **ann,
                        "id": len(annotations) + 1,
                        "image_id": image_id[ann["image_id"]],
                        "category_id": category[ann["category_id"]],
                    }
                )
            per_source.append((prefix, len(coco["images"])))
        doc = {
            "info": {"description": "scrapscan: merged data folders", "sources": prefixes},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (work / "annotations.json").write_text(json.dumps(doc) + "\n")
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    instances = sum(sum(s.instance_counts().values()) for s in sets)
    return MergeSummary(len(images), instances, tuple(per_source))


def _write_mask(record: FrameRecord, dst: Path) -> None:
    if record.mask_path is not None:
        _place(record.mask_path, dst)
        return
    ok, png = cv2.imencode(".png", record.load_mask())
    if not ok:
        raise OSError(f"{record.image_path}: cannot encode its mask as PNG")
    dst.write_bytes(png.tobytes())
