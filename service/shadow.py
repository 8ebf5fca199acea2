"""Shadow scoring: how a candidate model would have answered the live frames.

A yard that retrained puts the new version in shadow (PUT /v1/admin/bundles/shadow) before it
serves it: of the frames the served model answers, the share picked (`picked`: by the
frame id, so a frame tried again is picked again, and every process picks the same) are
scored by the candidate too, right after their result is stored, with the same bed
setting and live settings. Its answer is never served; per frame the two verdicts and
the instances matched are kept (`ShadowFrame`, in the store), and `summarise` counts
them: how often the verdicts agree, and the instances the candidate finds as well, finds
in another class, adds or drops.

Matching rule: within a frame, the candidate's instances in descending score each take
the served instance of highest mask IoU not yet taken, when that IoU is at least
MATCH_IOU (service.matching.match_regions; tools/served_eval matches with the truth the
same way).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from typing import Final, Literal

from pydantic import BaseModel, Field

from service.matching import match_regions, polygon_rle, region_iou
from service.result import VERDICTS, FrameResult, ModelRef, Verdict
from service.stages import Findings

MATCH_IOU: Final = 0.25
"""Mask IoU from which a candidate's instance is the served one found again."""

Change = Literal["matched", "reclassified", "added", "dropped"]
CHANGES: Final[tuple[Change, ...]] = ("matched", "reclassified", "added", "dropped")


def picked(frame_id: str, share: float) -> bool:
    """Whether the candidate scores this frame: a fixed `share` of frame ids."""
    digest = hashlib.sha256(frame_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


class ShadowInstance(BaseModel):
    """An instance of either model, as the comparison counts it."""

    class_name: str = Field(alias="class", examples=["cable"])
    score: float
    bbox: tuple[int, int, int, int] = Field(description="x, y, width, height in frame pixels")

    model_config = {"populate_by_name": True}


class ShadowMatch(BaseModel):
    """A candidate's instance that found a served one."""

    served: ShadowInstance
    candidate: ShadowInstance
    iou: float = Field(description="mask IoU of the two outlines")


class ShadowFrame(BaseModel):
    """One frame as both models answered it."""

    frame_id: str
    camera_id: str
    at: float = Field(description="when the candidate scored it (epoch seconds)")
    served_model: ModelRef
    candidate_model: ModelRef
    served_verdict: Verdict
    candidate_verdict: Verdict
    matched: list[ShadowMatch] = Field(description="instances both found (any class)")
    added: list[ShadowInstance] = Field(description="the candidate's, with no served match")
    dropped: list[ShadowInstance] = Field(description="served ones the candidate did not find")


class ClassChanges(BaseModel):
    """Instances of one class: found by both, found in another class, added, dropped.

    matched and reclassified count by the served class; added by the candidate's.
    """

    matched: int = 0
    reclassified: int = 0
    added: int = 0
    dropped: int = 0


class ShadowSummary(BaseModel):
    """A candidate's shadow frames counted."""

    candidate_model: ModelRef
    frames: int
    verdicts_agree: int = Field(description="frames both models gave the same verdict")
    agreement: float | None = Field(description="verdicts_agree / frames (None without frames)")
    verdicts: dict[Verdict, dict[Verdict, int]] = Field(
        description="frames per served verdict, then per candidate verdict"
    )
    instances: ClassChanges = Field(description="over every class")
    per_class: dict[str, ClassChanges]
    first_at: float | None = None
    last_at: float | None = None


def _instance(class_name: str, score: float, bbox: tuple[int, int, int, int]) -> ShadowInstance:
    return ShadowInstance(class_name=class_name, score=round(score, 4), bbox=bbox)


def compare(
    frame_id: str,
    camera_id: str,
    at: float,
    served: FrameResult,
    candidate: ModelRef,
    verdict: Verdict,
    findings: Findings,
) -> ShadowFrame:
    """The served result beside the candidate's verdict and instances on the same frame."""
    h, w = served.image.height, served.image.width
    ours = served.instances
    theirs = findings.instances
    iou = region_iou([polygon_rle(i, h, w) for i in theirs], [polygon_rle(i, h, w) for i in ours])
    found = match_regions([i.score for i in theirs], iou, MATCH_IOU)
    taken = {t for t in found if t is not None}
    return ShadowFrame(
        frame_id=frame_id,
        camera_id=camera_id,
        at=at,
        served_model=served.model,
        candidate_model=candidate,
        served_verdict=served.verdict,
        candidate_verdict=verdict,
        matched=[
            ShadowMatch(
                served=_instance(ours[t].class_name, ours[t].score, ours[t].bbox),
                candidate=_instance(theirs[c].class_name, theirs[c].score, theirs[c].bbox),
                iou=round(float(iou[c, t]), 4),
            )
            for c, t in enumerate(found)
            if t is not None
        ],
        added=[
            _instance(i.class_name, i.score, i.bbox)
            for i, t in zip(theirs, found, strict=True)
            if t is None
        ],
        dropped=[
            _instance(i.class_name, i.score, i.bbox) for k, i in enumerate(ours) if k not in taken
        ],
    )


def changes(frame: ShadowFrame) -> Iterable[tuple[Change, str]]:
    """Each instance change of a frame with the class it counts under."""
    for m in frame.matched:
        same = m.served.class_name == m.candidate.class_name
        yield ("matched" if same else "reclassified"), m.served.class_name
    for i in frame.added:
        yield "added", i.class_name
    for i in frame.dropped:
        yield "dropped", i.class_name


def summarise(
    candidate: ModelRef, frames: Iterable[ShadowFrame], classes: Iterable[str]
) -> ShadowSummary:
    """Count the candidate's shadow frames (those of other candidates are left out)."""
    mine = [f for f in frames if f.candidate_model == candidate]
    pairs = Counter((f.served_verdict, f.candidate_verdict) for f in mine)
    per_class = {c: Counter[str]() for c in classes}
    total: Counter[str] = Counter()
    for f in mine:
        for change, class_name in changes(f):
            per_class.setdefault(class_name, Counter())[change] += 1
            total[change] += 1
    agree = sum(n for (a, b), n in pairs.items() if a == b)
    return ShadowSummary(
        candidate_model=candidate,
        frames=len(mine),
        verdicts_agree=agree,
        agreement=round(agree / len(mine), 4) if mine else None,
        verdicts={a: {b: pairs[(a, b)] for b in VERDICTS} for a in VERDICTS},
        instances=ClassChanges(**total),
        per_class={c: ClassChanges(**n) for c, n in per_class.items()},
        first_at=min((f.at for f in mine), default=None),
        last_at=max((f.at for f in mine), default=None),
    )
