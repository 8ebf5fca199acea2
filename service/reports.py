"""Per-truck reports: what every frame of one truck says, aggregated for an operator.

Per anomaly class: the highest instance score, the number of frames it was seen in, the
number of distinct instances (estimated as the most seen in any one frame: the same
motor seen by several frames counts once, two motors in one frame count twice), and the
contaminated area (the largest total instance area in one frame, in frame pixels).
Verdict: "reject" when an instance scores at or above the reject score, "inspect" when
any instance was found, else "clean". Evidence: the frames with instances, strongest
first.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from service.store import FrameRecord

ANOMALY_CLASSES = ("motor", "cable", "spray_can")
EVIDENCE_FRAMES = 5


def frame_links(frame_id: str) -> dict[str, str]:
    """The URLs of a frame's status, mask and overlay."""
    base = f"/v1/frames/{frame_id}"
    return {"self": base, "mask": f"{base}/mask.png", "overlay": f"{base}/overlay.jpg"}


def _seen(record: FrameRecord) -> str:
    if record.captured_at:
        return record.captured_at
    return datetime.fromtimestamp(record.received_at, UTC).isoformat()


VERDICTS = ("clean", "inspect", "reject")
"""Frame and truck verdicts, mildest first."""


def truck_report(truck_id: str, frames: Iterable[FrameRecord]) -> dict[str, Any]:
    """The report of one truck from its frames (any status; only done frames count).

    The truck's verdict is the gravest of its frames' verdicts: each frame's was given by
    the thresholds of the model that made it (its result says which).
    """
    frames = list(frames)
    done = [f for f in frames if f.status == "done" and f.result is not None]
    classes: dict[str, dict[str, Any]] = {
        c: {"highest_score": None, "frames": 0, "instances": 0, "area_px": 0}
        for c in ANOMALY_CLASSES
    }
    evidence = []
    for f in done:
        assert f.result is not None
        instances = f.result.get("instances", [])
        for c, agg in classes.items():
            mine = [i for i in instances if i["class"] == c]
            if not mine:
                continue
            agg["frames"] += 1
            agg["instances"] = max(agg["instances"], len(mine))
            agg["area_px"] = max(agg["area_px"], sum(i["area"] for i in mine))
            best = max(i["score"] for i in mine)
            agg["highest_score"] = (
                best if agg["highest_score"] is None else max(agg["highest_score"], best)
            )
        if instances:
            top = max(instances, key=lambda i: i["score"])
            evidence.append(
                {
                    "frame_id": f.frame_id,
                    "score": top["score"],
                    "class": top["class"],
                    "overlay": frame_links(f.frame_id)["overlay"],
                }
            )
    evidence.sort(key=lambda e: e["score"], reverse=True)
    verdict = max(
        (f.result.get("verdict", "clean") for f in done if f.result is not None),
        key=VERDICTS.index,
        default="clean",
    )
    seen = sorted(_seen(f) for f in frames)
    return {
        "truck_id": truck_id,
        "verdict": verdict,
        "frames": len(done),
        "frames_failed": sum(f.status == "failed" for f in frames),
        "frames_pending": sum(f.status in ("queued", "processing") for f in frames),
        "first_seen": seen[0] if seen else None,
        "last_seen": seen[-1] if seen else None,
        "classes": classes,
        "evidence": evidence[:EVIDENCE_FRAMES],
    }


def report_csv(report: dict[str, Any]) -> str:
    """One row per class, the truck's facts repeated (pastes into a spreadsheet as is)."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "truck_id",
            "verdict",
            "frames",
            "first_seen",
            "last_seen",
            "class",
            "highest_score",
            "frames_with_class",
            "instances",
            "area_px",
        ]
    )
    for c, agg in report["classes"].items():
        w.writerow(
            [
                report["truck_id"],
                report["verdict"],
                report["frames"],
                report["first_seen"],
                report["last_seen"],
                c,
                "" if agg["highest_score"] is None else agg["highest_score"],
                agg["frames"],
                agg["instances"],
                agg["area_px"],
            ]
        )
    return out.getvalue()


def trucks_csv(reports: list[dict[str, Any]]) -> str:
    """One row per truck: verdict, frames, first and last seen, strongest class and score."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        ["truck_id", "verdict", "frames", "first_seen", "last_seen", "top_class", "top_score"]
    )
    for r in reports:
        scored = [
            (a["highest_score"], c)
            for c, a in r["classes"].items()
            if a["highest_score"] is not None
        ]
        score, cls = max(scored) if scored else ("", "")
        w.writerow(
            [r["truck_id"], r["verdict"], r["frames"], r["first_seen"], r["last_seen"], cls, score]
        )
    return out.getvalue()
