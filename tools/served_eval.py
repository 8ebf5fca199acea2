"""The served path judged where a yard judges it: instances, frame verdicts, trucks, pixels.

Labelled full frames go through the service's own pipeline (service.serving.open_pipeline
and Pipeline.analyse: decode, bed crop per the camera setting, tiles, engine through the
batcher, merge, instances), with no HTTP in between and no second copy of any stage. What
the service would answer is then compared with the labels:

- instances: COCO mask AP per class and overall at IoU 0.25 and 0.5 (pycocotools'
  COCOeval over the served instances' polygons, scored by the instance score), and
  recall, precision and class accuracy at the bundle's thresholds. Matching rule: within
  a frame, served instances in descending score each take the unmatched true instance of
  highest mask IoU, of any class, when that IoU is at least `match_iou` (0.25); a matched
  served instance is found, its class is right when it equals the true one.
  Each true instance left unfound is given the first cause that holds (`missed`).
- frames: the verdict (clean, inspect, reject) against the truth (a frame holding a true
  instance is contaminated): a confusion table, the share of clean frames flagged (false
  alarms), the share of contaminated frames passed as clean (misses), and the ROC of the
  frame score (the highest instance score before the verdict's minimum score, 0 without).
- trucks: frames grouped by the COCO image's `truck_id` (one truck per frame without):
  a truck is flagged when any of its frames is, contaminated when any of its frames is.
- pixels: AUROC, AP, AUPRO and F1-max of the served anomaly map on the full frame
  (at the map's stride, the truth sampled at each cell's centre).
- the bed: IoU of the bed the service cropped with the labelled bed polygon.

Stage one (`run_frames`) runs the engine once per frame and keeps each frame's merged
maps; stage two (`score`) turns maps into instances under a rule. Calibration
(tools.calibrate) repeats stage two under many rules without running the model again.

Longer than the project's 400 lines for a module: its one job is the figures above over
the same matched outcomes; the verifier's figures are tools/verifier_eval.py and the
report folder tools/eval_report.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from common.classes import CLASS_NAMES, IGNORE_INDEX
from common.imaging import polygon_mask
from service.matching import match_regions, polygon_rle, region_iou
from service.pipeline import Pipeline
from service.result import VERDICTS, Verdict, frame_verdict
from service.stages import (
    Bed,
    Instance,
    InstanceRule,
    Merged,
    find_instances,
)
from training.data import FrameRecord
from training.data.coco import segmentation_to_rle
from training.metrics import PixelMetricAccumulator

IOUS = (0.25, 0.5)


@dataclass(slots=True)
class Truth:
    """A frame's labels: its true instances (class index, compressed RLE, area)."""

    classes: list[int]
    rles: list[dict[str, Any]]
    areas: list[int]

    @property
    def contaminated(self) -> bool:
        """Whether the frame holds a contaminant."""
        return bool(self.classes)


@dataclass(slots=True)
class Seen:
    """One labelled frame after the engine: what stage two needs, and where it came from."""

    record: FrameRecord
    truck: str
    bed: Bed
    merged: Merged
    truth: Truth
    truth_cells: npt.NDArray[np.uint8]
    """The class mask sampled at the merged maps' cell centres."""
    tiles: int
    timings_ms: dict[str, float]
    bed_iou: float | None = None
    """IoU of the bed the service used with the labelled bed, when the frame has one."""


def bed_iou(bed: Bed, record: FrameRecord) -> float | None:
    """IoU of the served bed's pixels with the labelled bed polygon's (None without one)."""
    if record.bed_polygon is None:
        return None
    truth = polygon_mask(record.bed_polygon, record.height, record.width)
    union = int((truth | bed.mask).sum())
    return float((truth & bed.mask).sum() / union) if union else None


def truth_of(record: FrameRecord) -> Truth:
    """The true instances of a labelled frame.

    COCO annotations give them; a frame labelled by its mask alone (the folder layout)
    has one instance per connected region of each class.
    """
    h, w = record.height, record.width
    if record.instances or record.mask_path is None:
        classes = [i.class_index for i in record.instances]
        rles = [segmentation_to_rle(i.segmentation, h, w) for i in record.instances]
    else:
        mask = record.load_mask()
        classes, rles = [], []
        for k in range(1, len(CLASS_NAMES)):
            count, labels = cv2.connectedComponents((mask == k).astype(np.uint8), connectivity=8)
            for label in range(1, count):
                classes.append(k)
                rles.append(dict(mask_utils.encode(np.asfortranarray(labels == label, np.uint8))))
    return Truth(classes, rles, [int(mask_utils.area(r)) for r in rles])


def _cells(mask: npt.NDArray[np.uint8], stride: int) -> npt.NDArray[np.uint8]:
    """The mask at each stride x stride cell's centre pixel (the merged maps' grid)."""
    if stride == 1:
        return mask
    c = stride // 2
    return np.ascontiguousarray(mask[c::stride, c::stride])


async def run_frames(
    pipeline: Pipeline,
    records: Sequence[FrameRecord],
    trucks: dict[Path, str],
    camera: str = "eval",
    in_flight: int = 2,
) -> list[Seen]:
    """Every frame through the served path up to its merged maps, `in_flight` at a time."""
    gate = asyncio.Semaphore(in_flight)
    stride = pipeline.settings.map_stride

    async def one(record: FrameRecord) -> Seen:
        async with gate:
            data = await asyncio.to_thread(record.image_path.read_bytes)
            a = await pipeline.analyse(data, camera)
            if a.frame.shape[:2] != (record.height, record.width):
                raise ValueError(
                    f"{record.image_path}: decoded {a.frame.shape[1]}x{a.frame.shape[0]}, the "
                    f"labels say {record.width}x{record.height}"
                )
            cells = _cells(await asyncio.to_thread(record.load_mask), stride)
            # the merged maps have ceil(H / stride) rows; centre sampling may give one fewer
            gh, gw = a.merged.anomaly.shape
            padded = np.full((gh, gw), IGNORE_INDEX, np.uint8)
            padded[: cells.shape[0], : cells.shape[1]] = cells[:gh, :gw]
            return Seen(
                record,
                trucks.get(record.image_path, record.name),
                a.bed,
                a.merged,
                truth_of(record),
                padded,
                a.tiles,
                a.timer.ms,
                await asyncio.to_thread(bed_iou, a.bed, record),
            )

    return list(await asyncio.gather(*(one(r) for r in records)))


# --- stage two: a rule's instances against the truth ------------------------------------------


@dataclass(slots=True)
class FrameOutcome:
    """One frame under a rule: the candidate instances and how they matched."""

    candidates: list[Instance]
    """Instances before the minimum score (the frame score is their highest)."""
    rles: list[dict[str, Any]]
    matched: list[int | None]
    """Per candidate: the index of the true instance it found, or None."""

    @property
    def frame_score(self) -> float:
        """The highest candidate score, 0 without candidates."""
        return max((i.score for i in self.candidates), default=0.0)


def match(
    scores: Sequence[float],
    rles: list[dict[str, Any]],
    truth: Truth,
    match_iou: float,
) -> list[int | None]:
    """Greedy matching by score (the rule in the module docstring)."""
    return match_regions(scores, region_iou(rles, truth.rles), match_iou)


def outcome(
    seen: Seen, rule: InstanceRule, classes: tuple[str, ...], match_iou: float
) -> FrameOutcome:
    """The frame's candidate instances under `rule` (minimum score aside), matched."""
    found = find_instances(seen.merged, seen.bed, classes, replace(rule, min_score=0.0))
    h, w = seen.record.height, seen.record.width
    rles = [polygon_rle(i, h, w) for i in found.instances]
    return FrameOutcome(
        found.instances,
        rles,
        match([i.score for i in found.instances], rles, seen.truth, match_iou),
    )


@dataclass(slots=True)
class Counts:
    """Instance counts over frames: true, served, found (matched), class right."""

    true: int = 0
    served: int = 0
    found: int = 0
    class_right: int = 0
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        """Recall, precision, F1 and class accuracy, with the counts."""
        recall = self.found / self.true if self.true else None
        precision = self.found / self.served if self.served else None
        f1 = (
            2 * recall * precision / (recall + precision)
            if recall is not None and precision is not None and recall + precision > 0
            else 0.0
        )
        return {
            "recall": recall,
            "precision": precision,
            "f1": f1,
            "class_accuracy": self.class_right / self.found if self.found else None,
            "true": self.true,
            "served": self.served,
            "found": self.found,
            "per_class": self.per_class,
        }


def count(
    seen: Sequence[Seen],
    outcomes: Sequence[FrameOutcome],
    classes: tuple[str, ...],
    min_score: float,
) -> Counts:
    """Instance counts of the served instances (those at or over `min_score`)."""
    c = Counts(per_class={n: {"true": 0, "found": 0, "served": 0, "right": 0} for n in classes[1:]})
    for s, o in zip(seen, outcomes, strict=True):
        c.true += len(s.truth.classes)
        for k in s.truth.classes:
            c.per_class[classes[k]]["true"] += 1
        for inst, t in zip(o.candidates, o.matched, strict=True):
            if inst.score < min_score:
                continue
            c.served += 1
            c.per_class[inst.class_name]["served"] += 1
            if t is None:
                continue
            c.found += 1
            true_class = classes[s.truth.classes[t]]
            c.per_class[true_class]["found"] += 1
            if true_class == inst.class_name:
                c.class_right += 1
                c.per_class[true_class]["right"] += 1
    return c


MISS_CAUSES = (
    "outside_bed",
    "not_lit",
    "dropped_by_size",
    "poor_fit",
    "below_min_score",
    "taken",
)
"""Why a true instance was not found, the first that holds (module `missed`)."""


def _miss_cause(
    seen: Seen,
    o: FrameOutcome,
    t: int,
    on: npt.NDArray[np.bool_],
    iou: npt.NDArray[np.float64],
    rule: InstanceRule,
    match_iou: float,
) -> str:
    """Why true instance `t` of a frame went unfound (MISS_CAUSES).

    `on`: the frame's cells over the rule's thresholds; `iou`: each candidate's IoU with
    the instance.
    """
    merged, st = seen.merged, seen.merged.stride
    pixels = mask_utils.decode(seen.truth.rles[t]).astype(bool)
    if not (pixels & seen.bed.mask).any():
        return "outside_bed"
    # its cells as the pixel figures sample them (at their centres), or the cells it
    # touches when it covers no cell's centre
    gh, gw = on.shape
    padded = np.zeros((gh * st, gw * st), np.uint8)
    padded[: pixels.shape[0], : pixels.shape[1]] = pixels[: gh * st, : gw * st]
    cells = (_cells(padded, st) > 0) & merged.bed_mask
    if not cells.any():
        cells = padded.reshape(gh, st, gw, st).any(axis=(1, 3)) & merged.bed_mask
    if not on[cells].any():
        return "not_lit"
    if not (iou > 0).any():
        return "dropped_by_size"
    fitting = [i for i, v in zip(o.candidates, iou, strict=True) if v >= match_iou]
    if not fitting:
        return "poor_fit"
    if all(i.score < rule.min_score for i in fitting):
        return "below_min_score"
    return "taken"


def missed(
    seen: Sequence[Seen],
    outcomes: Sequence[FrameOutcome],
    rule: InstanceRule,
    classes: tuple[str, ...],
    match_iou: float,
) -> dict[str, Any]:
    """Per cause, the true instances the served ones did not find, in all and per class.

    The causes, the first that holds: the instance lies outside the bed the service
    cropped (`outside_bed`); the map stays under the rule's threshold on all its cells
    (`not_lit`); its cells are on but their region fell outside the area limits
    (`dropped_by_size`); a region overlaps it, at an IoU under `match_iou` (`poor_fit`:
    merged with its neighbours, or a fragment of it); a region fits it but scores under
    the minimum score (`below_min_score`); a served region fits it but found another true
    instance first (`taken`). The first asks for a better bed cropper, the second for a
    better model, the next three for other thresholds.
    """
    out: dict[str, Any] = {c: {"total": 0, **dict.fromkeys(classes[1:], 0)} for c in MISS_CAUSES}
    for s, o in zip(seen, outcomes, strict=True):
        found = {
            t
            for i, t in zip(o.candidates, o.matched, strict=True)
            if t is not None and i.score >= rule.min_score
        }
        if len(found) == len(s.truth.classes):
            continue
        on = s.merged.anomaly >= rule.cell_thresholds(s.merged.classes)
        ious = region_iou(o.rles, s.truth.rles)
        for t, k in enumerate(s.truth.classes):
            if t in found:
                continue
            cause = _miss_cause(s, o, t, on, ious[:, t], rule, match_iou)
            out[cause]["total"] += 1
            out[cause][classes[k]] += 1
    return out


def served(o: FrameOutcome, min_score: float) -> list[Instance]:
    """The instances the service reports: candidates at or over the minimum score."""
    return [i for i in o.candidates if i.score >= min_score]


def coco_ap(
    seen: Sequence[Seen],
    outcomes: Sequence[FrameOutcome],
    classes: tuple[str, ...],
    min_score: float,
) -> dict[str, Any]:
    """COCO mask AP per class and overall (mean over classes with true instances) at IOUS."""
    images = [
        {"id": k, "width": s.record.width, "height": s.record.height} for k, s in enumerate(seen)
    ]
    gts: list[dict[str, Any]] = []
    dts: list[dict[str, Any]] = []
    for k, (s, o) in enumerate(zip(seen, outcomes, strict=True)):
        for cls, rle, area in zip(s.truth.classes, s.truth.rles, s.truth.areas, strict=True):
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": k,
                    "category_id": cls,
                    "segmentation": rle,
                    "area": area,
                    "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": 0,
                }
            )
        for inst, rle in zip(o.candidates, o.rles, strict=True):
            if inst.score >= min_score:
                cls = classes.index(inst.class_name)
                dts.append(
                    {"image_id": k, "category_id": cls, "segmentation": rle, "score": inst.score}
                )
    out: dict[str, Any] = {}
    if not gts:
        return {f"iou_{t}": None for t in IOUS}
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": gts,
        "categories": [{"id": k, "name": n} for k, n in enumerate(classes) if k > 0],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress
        gt.createIndex()
        dt = gt.loadRes(dts) if dts else COCO()
        if not dts:
            dt.dataset = {
                "images": images,
                "annotations": [],
                "categories": gt.dataset["categories"],
            }
            dt.createIndex()
        ev = COCOeval(gt, dt, "segm")
        ev.params.iouThrs = np.asarray(IOUS)
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # [iou, recall, class, area range, max dets]
    for ti, t in enumerate(IOUS):
        per: dict[str, float | None] = {}
        for ki, k in enumerate(ev.params.catIds):
            p = precision[ti, :, ki, 0, -1]
            has_truth = any(g["category_id"] == k for g in gts)
            per[classes[k]] = float(p[p > -1].mean()) if has_truth and (p > -1).any() else None
        known = [v for v in per.values() if v is not None]
        out[f"iou_{t}"] = {"ap": float(np.mean(known)) if known else None, "per_class": per}
    return out


def frame_table(
    seen: Sequence[Seen], outcomes: Sequence[FrameOutcome], min_score: float, reject: float
) -> tuple[dict[str, Any], list[Verdict]]:
    """Frame verdicts against the truth, and each frame's verdict."""
    verdicts = [frame_verdict([i.score for i in served(o, min_score)], reject) for o in outcomes]
    table = {truth: dict.fromkeys(VERDICTS, 0) for truth in ("clean", "contaminated")}
    for s, v in zip(seen, verdicts, strict=True):
        table["contaminated" if s.truth.contaminated else "clean"][v] += 1
    clean, dirty = sum(table["clean"].values()), sum(table["contaminated"].values())
    right = table["clean"]["clean"] + dirty - table["contaminated"]["clean"]
    scores = np.asarray([o.frame_score for o in outcomes], np.float64)
    truth = np.asarray([s.truth.contaminated for s in seen])
    roc = None
    if clean and dirty:
        acc = PixelMetricAccumulator(bins=10_000)
        acc.update(scores[None], truth[None])
        roc = {
            "auroc": acc.compute()["auroc"],
            **{k: v.tolist() for k, v in acc.curves().items() if k in ("fpr", "tpr")},
        }
    figures = {
        "frames": len(seen),
        "clean_frames": clean,
        "contaminated_frames": dirty,
        "confusion": table,
        "accuracy": right / len(seen) if seen else None,
        "false_alarm_rate": (clean - table["clean"]["clean"]) / clean if clean else None,
        "miss_rate": table["contaminated"]["clean"] / dirty if dirty else None,
        "frame_score_roc": roc,
    }
    return figures, verdicts


def truck_table(seen: Sequence[Seen], verdicts: Sequence[str]) -> dict[str, Any]:
    """Trucks flagged (any frame not clean) against trucks that carried a contaminant."""
    flagged: dict[str, bool] = {}
    carried: dict[str, bool] = {}
    for s, v in zip(seen, verdicts, strict=True):
        flagged[s.truck] = flagged.get(s.truck, False) or v != "clean"
        carried[s.truck] = carried.get(s.truck, False) or s.truth.contaminated
    pairs = [(carried[t], flagged[t]) for t in flagged]
    return {
        "trucks": len(pairs),
        "carried_and_flagged": sum(c and f for c, f in pairs),
        "carried_not_flagged": sum(c and not f for c, f in pairs),
        "clean_and_flagged": sum(f and not c for c, f in pairs),
        "clean_not_flagged": sum(not c and not f for c, f in pairs),
    }


def pixel_figures(seen: Sequence[Seen]) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """Pixel metrics of the served anomaly maps over the full frames, and their curves."""
    acc = PixelMetricAccumulator()
    anomalous = False
    for s in seen:
        valid = s.truth_cells != IGNORE_INDEX
        truth = (s.truth_cells > 0) & valid
        anomalous |= bool(truth.any())
        acc.update(s.merged.anomaly, truth, valid)
    if not anomalous:
        return None, {}
    return acc.compute(), acc.curves()


@dataclass(slots=True)
class Scored:
    """Everything stage two measured under one rule."""

    report: dict[str, Any]
    outcomes: list[FrameOutcome]
    verdicts: list[Verdict]
    curves: dict[str, Any]


def score(
    seen: Sequence[Seen],
    rule: InstanceRule,
    reject: float,
    classes: tuple[str, ...],
    match_iou: float,
) -> Scored:
    """The served path's figures under `rule` and `reject` (see the module docstring)."""
    outcomes = [outcome(s, rule, classes, match_iou) for s in seen]
    instances = count(seen, outcomes, classes, rule.min_score).figures()
    frames, verdicts = frame_table(seen, outcomes, rule.min_score, reject)
    pixel, curves = pixel_figures(seen)
    tiles = [s.tiles for s in seen]
    report = {
        "instances": {
            **instances,
            "match": f"mask IoU >= {match_iou}, greedy by score",
            "missed": missed(seen, outcomes, rule, classes, match_iou),
        },
        "instance_ap": coco_ap(seen, outcomes, classes, rule.min_score),
        "frames": frames,
        "trucks": truck_table(seen, verdicts),
        "pixel": pixel,
        "thresholds": rule.describe(reject),
        "tiles_per_frame": float(np.mean(tiles)) if tiles else None,
        "bed_iou": _spread([s.bed_iou for s in seen if s.bed_iou is not None]),
        "bed_strategies": sorted({s.bed.strategy for s in seen}),
    }
    return Scored(report, outcomes, verdicts, curves)


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, lowest and median of some figures (None without any)."""
    if not values:
        return None
    return {
        "mean": float(np.mean(values)),
        "min": float(min(values)),
        "median": float(np.median(values)),
    }
