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
from service.result import Instance, ModelRef, Verdict, gravest
from service.store import FrameRecord

EVIDENCE_FRAMES = 5


def frame_links(frame_id: str) -> dict[str, str]:
    """The URLs of a frame's status, mask and overlay."""
    base = f"/v1/frames/{frame_id}"
    return {"self": base, "mask": f"{base}/mask.png", "overlay": f"{base}/overlay.jpg"}


class ClassFigures(BaseModel):
    """One anomaly class over a truck's frames."""

    highest_score: float | None = None
    zero_shot: bool = Field(False, description="a class defined by text, not a learned one")
    frames: int = Field(0, description="frames it was seen in")
    instances: int = Field(0, description="distinct instances (the most in any one frame)")
    area_px: int = Field(0, description="the largest total area in one frame")


class Evidence(BaseModel):
    """A frame with instances: its strongest one and where to see it."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    frame_id: str
    score: float
    class_name: str = Field(alias="class")
    description: str | None = Field(
        None,
        description="what the bundle's region encoder says that instance is (null without "
        "one, or once the frame's result has expired)",
    )
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
    models: list[ModelRef] = Field(
        default_factory=list,
        description="the models that made its frames, first used first: more than one when "
        "the model served changed while the truck was seen (its verdicts may differ by model)",
    )


class TruckReport(TruckSummary):
    """Every frame of a truck aggregated, with the evidence frames, strongest first."""

    evidence: list[Evidence]


class TruckList(BaseModel):
    """Trucks seen in a time range, most recent first, a page at a time."""

    trucks: list[TruckSummary]
    next: str | None = Field(
        None,
        description="pass as `after` for the next page of the same query; null on the last",
    )


def _seen(record: FrameRecord) -> str:
    if record.captured_at:
        return record.captured_at
    return datetime.fromtimestamp(record.received_at, UTC).isoformat()


def new_report(truck_id: str) -> TruckReport:
    """The report of a truck before any of its frames."""
    return TruckReport(
        truck_id=truck_id,
        verdict="clean",
        frames=0,
        frames_failed=0,
        frames_pending=0,
        first_seen=None,
        last_seen=None,
        classes={c: ClassFigures() for c in ANOMALY_CLASSES},
        evidence=[],
    )


def count_arrival(report: TruckReport, frame: FrameRecord) -> None:
    """A frame of the truck was accepted: it is pending until it ends."""
    report.frames_pending += 1
    seen = _seen(frame)
    report.first_seen = min(seen, report.first_seen or seen)
    report.last_seen = max(seen, report.last_seen or seen)


def count_end(report: TruckReport, frame: FrameRecord) -> None:
    """A frame of the truck ended (done with its result, or failed): fold it in.

    Every figure is a running maximum, count or top list, so a store can keep a truck's
    report up to date frame by frame without reading its other frames.
    """
    # never below 0: a Redis truck whose first frames came before reports were kept
    report.frames_pending = max(0, report.frames_pending - 1)
    if frame.status == "failed":
        report.frames_failed += 1
    if frame.status != "done" or frame.result is None:
        return
    result = frame.result
    report.frames += 1
    if result.model is not None and result.model not in report.models:
        report.models.append(result.model)
    report.verdict = gravest((report.verdict, result.verdict))
    instances = result.counted()
    for i in instances:  # a class defined by text gets its figures when first seen
        if i.class_name not in report.classes:
            report.classes[i.class_name] = ClassFigures(zero_shot=i.zero_shot)
    for c, agg in report.classes.items():
        mine = [i for i in instances if i.class_name == c]
        if not mine:
            continue
        agg.frames += 1
        agg.instances = max(agg.instances, len(mine))
        agg.area_px = max(agg.area_px, sum(i.area for i in mine))
        best = max(i.score for i in mine)
        agg.highest_score = best if agg.highest_score is None else max(agg.highest_score, best)
    if instances:
        top = max(instances, key=lambda i: i.score)
        report.evidence.append(
            Evidence(
                frame_id=frame.frame_id,
                score=top.score,
                class_name=top.class_name,
                description=top.description if isinstance(top, Instance) else None,
                overlay=frame_links(frame.frame_id)["overlay"],
            )
        )
        # stable: among equal scores the earlier frame stays first
        report.evidence.sort(key=lambda e: e.score, reverse=True)
        del report.evidence[EVIDENCE_FRAMES:]


def truck_report(truck_id: str, frames: Iterable[FrameRecord]) -> TruckReport:
    """The report of one truck from its frames (any status; only done frames count).

    The truck's verdict is the gravest of its frames' verdicts: each frame's was given by
    the thresholds of the model that made it (its result says which).
    """
    report = new_report(truck_id)
    for frame in frames:
        count_arrival(report, frame)
        if frame.status in ("done", "failed"):
            count_end(report, frame)
    return report


def summary_of(report: TruckReport) -> TruckSummary:
    """The listing's row of a truck's report (the report less its evidence)."""
    return TruckSummary.model_construct(
        **{k: getattr(report, k) for k in TruckSummary.model_fields}
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
