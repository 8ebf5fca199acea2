"""Operators' feedback back into training: the judged frames as a labelled COCO folder.

    OUT/images/<frame_id>.jpg|png   the uploads, as the cameras sent them
    OUT/masks/<frame_id>.png        class index per pixel (0 normal, 1..3, 255 unknown)
    OUT/annotations.json            COCO: an instance per confirmed or reclassified region
    OUT/feedback.json               every feedback item exported, as given (the audit trail)

What each judgement becomes (the latest judgement of an instance counts):
- confirmed: its region, with the class the service gave; for a class defined by text
  (no category of the training data yet) its box is 255 and listed under `to_label`;
- other_class: its region, with the class the operator gave;
- false_alarm: nothing; its pixels stay normal (0), what the model must learn;
- missed: its box is 255 (not known pixel by pixel) and the image entry lists it under
  `to_label` with the class given, for a person to outline before it teaches anything;
- an instance nobody judged: 255, neither a contaminant nor normal.
Pixels outside every region are normal; the bed polygon is the one the service used.
`scrapscan-data check` and `scrapscan-train` read the folder as it is. A frame whose
upload is no longer kept is listed in the summary and left out.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from common.classes import CLASS_NAMES, IGNORE_INDEX
from service.feedback import FrameFeedback, latest_labels
from service.result import FrameResult
from service.store import Store

JPEG_START = b"\xff\xd8"
"""The first bytes of a JPEG (the uploads are JPEG or PNG)."""


@dataclass(slots=True)
class ExportSummary:
    """What an export wrote."""

    frames: int = 0
    instances: int = 0
    to_label: int = 0
    left_out: list[str] = field(default_factory=list)
    """Frames with feedback whose upload or result is no longer kept."""
    items: int = 0


def _region(
    polygon: Sequence[tuple[float, float]], height: int, width: int
) -> npt.NDArray[np.bool_]:
    """The pixels whose centres lie in a served outline (frame pixels, as COCO reads it)."""
    out = np.zeros((height, width), np.uint8)
    pts = np.round((np.asarray(polygon, np.float64) - 0.5) * 4).astype(np.int32)
    cv2.fillPoly(out, [pts.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=2)
    return out.astype(bool)


def _frame_labels(
    result: FrameResult, items: Sequence[FrameFeedback], image_id: int, first_ann: int
) -> tuple[npt.NDArray[np.uint8], list[dict[str, Any]], list[dict[str, Any]]]:
    """The frame's mask, its COCO annotations and its boxes to label."""
    h, w = result.image.height, result.image.width
    mask = np.zeros((h, w), np.uint8)
    judged = latest_labels(items)
    annotations: list[dict[str, Any]] = []
    to_label: list[dict[str, Any]] = []
    # unjudged regions first, so that a judged region drawn over them wins
    order = sorted(range(len(result.instances)), key=lambda i: i in judged)
    for i in order:
        inst = result.instances[i]
        region = _region(inst.polygon, h, w)
        item = judged.get(i)
        if item is None:
            mask[region] = IGNORE_INDEX
        elif item.label == "false_alarm":
            mask[region] = 0
        else:
            name = item.class_name if item.label == "other_class" else inst.class_name
            assert name is not None
            if name not in CLASS_NAMES:  # defined by text: no category in the data yet
                mask[region] = IGNORE_INDEX
                to_label.append({"box": list(inst.bbox), "class": name, "by": item.by})
                continue
            k = CLASS_NAMES.index(name)
            mask[region] = k
            x, y, bw, bh = inst.bbox
            annotations.append(
                {
                    "id": first_ann + len(annotations),
                    "image_id": image_id,
                    "category_id": k,
                    "segmentation": [[float(v) for xy in inst.polygon for v in xy]],
                    "bbox": [x, y, bw, bh],
                    "area": int(region.sum()),
                    "iscrowd": 0,
                    "feedback": item.label,
                }
            )
    for item in items:
        if item.label == "missed" and item.box is not None:
            x, y, bw, bh = item.box
            mask[y : y + bh, x : x + bw] = IGNORE_INDEX
            to_label.append({"box": list(item.box), "class": item.class_name, "by": item.by})
    return mask, annotations, to_label


def write_export(
    store: Store, out: Path, since: float | None = None, until: float | None = None
) -> ExportSummary:
    """Write the frames judged in [since, until) to `out` (a new folder; all or nothing).

    ValueError when `out` exists.
    """
    if out.exists():
        raise ValueError(f"{out} exists; choose a new folder")
    everything = store.feedback_between(since, until)
    frame_ids = list(dict.fromkeys(i.frame_id for i in everything if isinstance(i, FrameFeedback)))
    summary = ExportSummary(items=len(everything))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (work / "images").mkdir()
        (work / "masks").mkdir()
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for frame_id in frame_ids:
            record = store.get(frame_id)
            try:
                data = store.image(frame_id)
            except (KeyError, FileNotFoundError):
                data = None
            if record is None or not isinstance(record.result, FrameResult) or data is None:
                summary.left_out.append(frame_id)
                continue
            items = [i for i in store.feedback("frame", frame_id) if isinstance(i, FrameFeedback)]
            image_id = len(images) + 1
            mask, anns, to_label = _frame_labels(
                record.result, items, image_id, len(annotations) + 1
            )
            name = frame_id + (".jpg" if data[:2] == JPEG_START else ".png")
            (work / "images" / name).write_bytes(data)
            ok, png = cv2.imencode(".png", mask)
            assert ok
            (work / "masks" / f"{frame_id}.png").write_bytes(png.tobytes())
            result = record.result
            images.append(
                {
                    "id": image_id,
                    "file_name": name,
                    "width": result.image.width,
                    "height": result.image.height,
                    "frame_id": frame_id,
                    "camera_id": record.camera_id,
                    "truck_id": record.truck_id,
                    "captured_at": record.captured_at,
                    "bed_polygon": [float(v) for xy in result.bed.polygon for v in xy],
                    "model": result.model.model_dump(),
                    "to_label": to_label,
                }
            )
            annotations += anns
            summary.frames += 1
            summary.instances += len(anns)
            summary.to_label += len(to_label)
        coco = {
            "info": {"description": "scrapscan: frames judged by operators"},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k, "name": name} for k, name in enumerate(CLASS_NAMES) if k > 0],
        }
        (work / "annotations.json").write_text(json.dumps(coco, indent=1) + "\n")
        (work / "feedback.json").write_text(
            json.dumps([i.model_dump(mode="json") for i in everything], indent=1) + "\n"
        )
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def zip_export(store: Store, since: float | None, until: float | None) -> Path:
    """The export as a zip file in a temporary folder (the caller removes its parent)."""
    tmp = Path(tempfile.mkdtemp(prefix="scrapscan-export-"))
    folder = tmp / "feedback"
    write_export(store, folder, since, until)
    archive = tmp / "feedback.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:  # JPEGs do not compress
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(tmp))
    shutil.rmtree(folder)
    return archive
