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

from pydantic import BaseModel, ConfigDict, Field

from common.classes import ANOMALY_CLASSES
from service.result import Verdict, gravest
from service.store import FrameRecord

EVIDENCE_FRAMES = 5


def frame_links(frame_id: str) -> dict[str, str]:
    """The URLs of a frame's status, mask and overlay."""
    base = f"/v1/frames/{frame_id}"
    return {"self": base, "mask": f"{base}/mask.png", "overlay": f"{base}/overlay.jpg"}


class ClassFigures(BaseModel):
    """One anomaly class over a truck's frames."""

    highest_score: float | None = None
    frames: int = Field(0, description="frames it was seen in")
    instances: int = Field(0, description="distinct instances (the most in any one frame)")
    area_px: int = Field(0, description="the largest total area in one frame")


class Evidence(BaseModel):
    """A frame with instances: its strongest one and where to see it."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    frame_id: str
    score: float
    class_name: str = Field(alias="class")
    overlay: str


class TruckSummary(BaseModel):
    """A truck's verdict and figures (the truck listing's row)."""

    truck_id: str
    verdict: Verdict
    frames: int = Field(description="frames processed")
    frames_failed: int
    frames_pending: int = Field(description="frames queued or processing")
    first_seen: str | None
    last_seen: str | None
    classes: dict[str, ClassFigures]


class TruckReport(TruckSummary):
    """Every frame of a truck aggregated, with the evidence frames, strongest first."""

    evidence: list[Evidence]


class TruckList(BaseModel):
    """Trucks seen in a time range, most recent first."""

    trucks: list[TruckSummary]


def _seen(record: FrameRecord) -> str:
    if record.captured_at:
        return record.captured_at
    return datetime.fromtimestamp(record.received_at, UTC).isoformat()


def truck_report(truck_id: str, frames: Iterable[FrameRecord]) -> TruckReport:
    """The report of one truck from its frames (any status; only done frames count).

    The truck's verdict is the gravest of its frames' verdicts: each frame's was given by
    the thresholds of the model that made it (its result says which).
    """
    frames = list(frames)
    done = [(f.frame_id, f.result) for f in frames if f.status == "done" and f.result is not None]
    classes = {c: ClassFigures() for c in ANOMALY_CLASSES}
    evidence = []
    for frame_id, result in done:
        for c, agg in classes.items():
            mine = [i for i in result.instances if i.class_name == c]
            if not mine:
                continue
            agg.frames += 1
            agg.instances = max(agg.instances, len(mine))
            agg.area_px = max(agg.area_px, sum(i.area for i in mine))
            best = max(i.score for i in mine)
            agg.highest_score = best if agg.highest_score is None else max(agg.highest_score, best)
        if result.instances:
            top = max(result.instances, key=lambda i: i.score)
            evidence.append(
                Evidence(
                    frame_id=frame_id,
                    score=top.score,
                    class_name=top.class_name,
                    overlay=frame_links(frame_id)["overlay"],
                )
            )
    evidence.sort(key=lambda e: e.score, reverse=True)
    seen = sorted(_seen(f) for f in frames)
    return TruckReport(
        truck_id=truck_id,
        verdict=gravest(r.verdict for _, r in done),
        frames=len(done),
        frames_failed=sum(f.status == "failed" for f in frames),
        frames_pending=sum(f.status in ("queued", "processing") for f in frames),
        first_seen=seen[0] if seen else None,
        last_seen=seen[-1] if seen else None,
        classes=classes,
        evidence=evidence[:EVIDENCE_FRAMES],
    )


def report_csv(report: TruckReport) -> str:
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
    for c, agg in report.classes.items():
        w.writerow(
            [
                report.truck_id,
                report.verdict,
                report.frames,
                report.first_seen,
                report.last_seen,
                c,
                "" if agg.highest_score is None else agg.highest_score,
                agg.frames,
                agg.instances,
                agg.area_px,
            ]
        )
    return out.getvalue()


def trucks_csv(reports: Iterable[TruckSummary]) -> str:
    """One row per truck: verdict, frames, first and last seen, strongest class and score."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        ["truck_id", "verdict", "frames", "first_seen", "last_seen", "top_class", "top_score"]
    )
    for r in reports:
        scored = [(a.highest_score, c) for c, a in r.classes.items() if a.highest_score is not None]
        score, cls = max(scored) if scored else ("", "")
        w.writerow([r.truck_id, r.verdict, r.frames, r.first_seen, r.last_seen, cls, score])
    return out.getvalue()
