"""The report folder of scrapscan-eval --bundle: figures, curves, the worst frames, negatives.

REPORT_DIR/report.json          every figure of tools/served_eval.py
REPORT_DIR/pr.png, roc.png      instance precision-recall and frame-score ROC curves
REPORT_DIR/false_alarms_*.jpg, misses_*.jpg   the worst frames: served overlay | truth
REPORT_DIR/false_regions.json   served instances that matched no label (for
                                scrapscan-region train --negatives)
REPORT_DIR/found_regions.json   served instances that matched one, with its class (for
                                scrapscan-region train --finds)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

from service.pipeline import render_overlay
from service.stages import Findings, InstanceRule, find_instances
from tools.served_eval import Scored, Seen, served


def plot_curves(out: Path, scored: Scored) -> None:
    """roc.png (pixels and frames) and pr.png (pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, frames = scored.curves, scored.report["frames"]["frame_score_roc"]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if c:
        ax.plot(c["fpr"], c["tpr"], label=f"pixels (AUROC {scored.report['pixel']['auroc']:.3f})")
    if frames:
        ax.plot(frames["fpr"], frames["tpr"], label=f"frame score (AUROC {frames['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, served path")
    ax.legend(loc="lower right")
    fig.savefig(out / "roc.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if c:
        ax.plot(
            c["recall"], c["precision"], label=f"pixels (AP {scored.report['pixel']['ap']:.3f})"
        )
        ax.legend(loc="upper right")
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title="Precision-recall, served path",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    fig.savefig(out / "pr.png")
    plt.close(fig)


def side_by_side(
    seen: Seen, rule: InstanceRule, classes: tuple[str, ...], max_side: int = 1280
) -> npt.NDArray[np.uint8]:
    """The served overlay (left) beside the truth drawn the same way (right)."""
    frame = cv2.imread(str(seen.record.image_path), cv2.IMREAD_COLOR)
    if frame is None:
        raise OSError(f"{seen.record.image_path}: cannot decode image")
    found = find_instances(seen.merged, seen.bed, classes, rule)
    left = render_overlay(np.asarray(frame, np.uint8), found, seen.bed, classes, max_side)
    h, w = seen.record.height, seen.record.width
    mask = np.zeros((h, w), np.uint8)
    for k, rle in zip(seen.truth.classes, seen.truth.rles, strict=True):
        mask[mask_utils.decode(rle).astype(bool)] = k
    truth = Findings([], mask)
    right = render_overlay(np.asarray(frame, np.uint8), truth, seen.bed, classes, max_side)
    return np.concatenate([left, np.full((left.shape[0], 8, 3), 255, np.uint8), right], axis=1)


def worst_frames(seen: Sequence[Seen], scored: Scored, keep: int) -> dict[str, list[int]]:
    """The false alarms with the highest frame scores, and the misses.

    Misses: contaminated frames passed as clean first, then those with the most true
    instances left unfound.
    """
    alarms = [
        k
        for k, (s, v) in enumerate(zip(seen, scored.verdicts, strict=True))
        if not s.truth.contaminated and v != "clean"
    ]
    alarms.sort(key=lambda k: -scored.outcomes[k].frame_score)

    def unfound(k: int) -> int:
        return len(seen[k].truth.classes) - sum(t is not None for t in scored.outcomes[k].matched)

    misses = [
        k
        for k, s in enumerate(seen)
        if s.truth.contaminated and (scored.verdicts[k] == "clean" or unfound(k))
    ]
    misses.sort(key=lambda k: (scored.verdicts[k] != "clean", -unfound(k)))
    return {"false_alarms": alarms[:keep], "misses": misses[:keep]}


def write_report(
    out: Path,
    seen: Sequence[Seen],
    scored: Scored,
    rule: InstanceRule,
    classes: tuple[str, ...],
    header: dict[str, Any],
    keep: int = 4,
) -> None:
    """report.json, roc.png, pr.png and the worst frames' overlays into `out` (which exists)."""
    worst = worst_frames(seen, scored, keep)
    files: dict[str, list[str]] = {}
    for kind, ks in worst.items():
        files[kind] = []
        for k in ks:
            name = f"{kind}_{len(files[kind]) + 1}_{seen[k].record.name}.jpg"
            image = side_by_side(seen[k], rule, classes)
            if not cv2.imwrite(str(out / name), image, [cv2.IMWRITE_JPEG_QUALITY, 85]):
                raise OSError(f"{out / name}: could not write")
            files[kind].append(name)
    per_frame = [
        {
            "frame": s.record.name,
            "truck": s.truck,
            "contaminated": s.truth.contaminated,
            "verdict": v,
            "frame_score": round(o.frame_score, 4),
            "true_instances": len(s.truth.classes),
            "served_instances": len(served(o, rule.min_score)),
            "tiles": s.tiles,
            "bed_iou": None if s.bed_iou is None else round(s.bed_iou, 4),
            "timings_ms": s.timings_ms,
        }
        for s, o, v in zip(seen, scored.outcomes, scored.verdicts, strict=True)
    ]
    body = {**header, **scored.report, "worst_frames": files, "per_frame": per_frame}
    (out / "report.json").write_text(json.dumps(body, indent=2) + "\n")
    (out / "false_regions.json").write_text(json.dumps(false_regions(seen, scored, classes)) + "\n")
    (out / "found_regions.json").write_text(json.dumps(found_regions(seen, scored, classes)) + "\n")
    plot_curves(out, scored)


def _served_regions(
    seen: Sequence[Seen], scored: Scored, found: bool, classes: tuple[str, ...]
) -> dict[str, list[dict[str, Any]]]:
    """Per frame (image file name), the candidates that found a true instance or none."""
    frames: dict[str, list[dict[str, Any]]] = {}
    for s, o in zip(seen, scored.outcomes, strict=True):
        picked = [
            {
                "bbox": list(i.bbox),
                "polygon": [[round(x, 1), round(y, 1)] for x, y in i.polygon],
                # a find: the class of the true instance, the served one beside it
                "class": i.class_name if m is None else classes[s.truth.classes[m]],
                **({"served_class": i.class_name} if found else {}),
                "score": float(i.score),  # as the rule compares it
            }
            for i, m in zip(o.candidates, o.matched, strict=True)
            if (m is not None) == found
        ]
        if picked:
            frames[s.record.image_path.name] = picked
    return frames


def false_regions(seen: Sequence[Seen], scored: Scored, classes: tuple[str, ...]) -> dict[str, Any]:
    """Per frame, the candidate instances that found nothing true (any score).

    What the region encoder learns as plain scrap (scrapscan-region train --negatives):
    keyed by the image's file name, each with its box, outline, class and score.
    """
    return {
        "description": "candidate instances of the served path that matched no label",
        "frames": _served_regions(seen, scored, False, classes),
    }


def found_regions(seen: Sequence[Seen], scored: Scored, classes: tuple[str, ...]) -> dict[str, Any]:
    """Per frame, the candidate instances that found a true one (any score).

    What the region encoder learns as the true class in the outline the service gives it
    (scrapscan-region train --finds): as false_regions, with the true instance's class as
    `class` and the served one as `served_class`.
    """
    return {
        "description": "candidate instances of the served path that matched a label, with "
        "the label's class",
        "frames": _served_regions(seen, scored, True, classes),
    }
