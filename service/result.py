"""A frame's result, typed: what the pipeline makes, the stores keep and the API answers.

`FrameResult` is the whole answer for one frame. `Summary` is the part a truck report
needs (verdict, scores, each instance's class, score and area); a store keeps only that
once a frame's retention for results has passed. The verdict rules of a frame and of a
truck are here and nowhere else.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.bundle import Flips, Refine

Verdict = Literal["clean", "inspect", "reject"]
VERDICTS: tuple[Verdict, ...] = ("clean", "inspect", "reject")
"""Frame and truck verdicts, mildest first."""


def frame_verdict(scores: Sequence[float], reject_score: float) -> Verdict:
    """Clean (no instance), reject (an instance at or over `reject_score`), else inspect."""
    if not scores:
        return "clean"
    return "reject" if max(scores) >= reject_score else "inspect"


def gravest(verdicts: Iterable[Verdict]) -> Verdict:
    """The gravest verdict of several (a truck's from its frames'); clean when there is none."""
    return max(verdicts, key=VERDICTS.index, default="clean")


class _Model(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, serialize_by_alias=True, extra="forbid", frozen=True
    )


class InstanceSummary(_Model):
    """An instance as a truck report counts it."""

    class_name: str = Field(alias="class", examples=["motor"])
    score: float = Field(description="the instance's anomaly score, 0 to 1")
    area: int = Field(description="pixels of the full frame")
    zero_shot: bool = Field(
        False,
        description="of a class defined by text at run time (POST /v1/classes), not one the "
        "model learned; its score is its highest probability of that class",
    )


class Instance(InstanceSummary):
    """One contaminant found in a frame."""

    class_scores: dict[str, float] = Field(description="mean probability of each class")
    bbox: tuple[int, int, int, int] = Field(description="x, y, width, height in frame pixels")
    polygon: list[tuple[float, float]] = Field(description="its outline in frame pixels")
    description: str | None = Field(
        None,
        description="what the bundle's region encoder says it is (null without one)",
        examples=["a small electric motor with copper windings"],
    )
    description_class: str | None = Field(
        None, description="the class of that description (normal: plain scrap)"
    )
    verification: float | None = Field(
        None,
        description="the region encoder's best contaminant description's similarity minus "
        "its best plain-scrap one's",
    )
    verified: bool | None = Field(
        None,
        description="verification at or over the bundle's margin (null when it sets none); "
        "an unverified instance does not count towards the verdict when the bundle says so",
    )


class ModelRef(_Model):
    """The model that made a result."""

    name: str
    version: str


class ImageSize(_Model):
    """The frame's size in pixels, upright."""

    width: int
    height: int


class BedUsed(_Model):
    """The truck bed the frame was cropped to."""

    strategy: str = Field(examples=["learned"], description="how the bed was found")
    polygon: list[tuple[float, float]]


class Thresholds(_Model):
    """The thresholds that turned the model's maps into instances and the verdict."""

    text_classes: dict[str, float] = Field(
        default_factory=dict,
        description="per class defined by text that the frame was scored with, its threshold",
    )

    pixel: float
    classes: list[float] | None = Field(description="per anomaly class, in the bundle's order")
    min_area_px: int
    max_bed_fraction: float
    min_score: float | None
    reject_score: float
    verify_margin: float | None = Field(
        None, description="the region encoder's margin for a verified instance (null: none)"
    )
    drop_unverified: bool = Field(
        False, description="whether an unverified instance is left out of the verdict"
    )
    refine: Refine | None = Field(
        None,
        description="the guided filter the maps were refined with on the frame before these "
        "thresholds (null: none)",
    )
    flips: Flips = Field(
        (),
        description="the mirrored views each tile also ran as, its maps the mean over the views "
        "(empty: the tile alone)",
    )


class Summary(_Model):
    """What a truck report needs of a frame."""

    verdict: Verdict
    scores: dict[str, float] = Field(description="the frame's highest score per anomaly class")
    instances: Sequence[InstanceSummary]
    model: ModelRef | None = Field(None, description="the model that made it")

    def counted(self) -> Sequence[InstanceSummary]:
        """The instances that count towards the verdict (and a truck's report)."""
        return self.instances

    def summary(self) -> Summary:
        """What is kept for truck reports once the full result has expired."""
        return Summary(
            model=self.model,
            verdict=self.verdict,
            scores=self.scores,
            instances=[
                InstanceSummary(
                    class_name=i.class_name, score=i.score, area=i.area, zero_shot=i.zero_shot
                )
                for i in self.counted()
            ],
        )


class FrameResult(Summary):
    """A processed frame: the model, the bed, the verdict, instances, scores and timings."""

    model: ModelRef
    image: ImageSize
    bed: BedUsed
    instances: Sequence[Instance]
    thresholds: Thresholds
    settings_version: int | None = Field(
        None, description="the live settings' version it was made with (null: none set)"
    )
    tiles: int = Field(description="512 px tiles the bed was cut into")
    timings_ms: dict[str, float] = Field(description="milliseconds per stage, in order")

    def counted(self) -> Sequence[Instance]:
        """The instances that count towards the verdict (that_count)."""
        return that_count(self.instances, self.thresholds.drop_unverified)


def that_count(instances: Sequence[Instance], drop_unverified: bool) -> list[Instance]:
    """The instances that count towards a verdict.

    All but the unverified ones when the thresholds drop them (those are still listed,
    and drawn on the overlay).
    """
    return [i for i in instances if not (drop_unverified and i.verified is False)]


def pack_result(result: Summary) -> bytes:
    """A result as the stores keep it: its JSON, zlib-compressed (a third to a half)."""
    return zlib.compress(result.model_dump_json().encode(), 6)


def load_result(data: str | bytes) -> FrameResult | Summary:
    """A stored result: the full one, or the summary kept after retention.

    Packed (pack_result) or plain JSON, as stores kept it before packing.
    """
    if isinstance(data, bytes) and data[:1] == b"x":  # zlib's header; JSON opens with "{"
        data = zlib.decompress(data)
    try:
        return FrameResult.model_validate_json(data)
    except ValueError:
        return Summary.model_validate_json(data)
