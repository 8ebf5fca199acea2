"""Operators' feedback: their judgement of a frame's instances, and a truck's decision.

For each instance of a done frame an operator says `confirmed` (a contaminant of the
class the service gave), `false_alarm` (no contaminant there) or `other_class` (a
contaminant of another class, named); for a frame, `missed` marks a contaminant the
service did not find, with a box drawn on the frame. For a truck the decision taken is
`accepted`, `rejected` or `manual_inspection`. Each item records who (the caller's role)
and when; the items of a target are kept in the order given and the latest about an
instance is the one that counts (`latest_labels`). Stores keep them (service/store.py),
and a frame with feedback stays out of the retention's reach: its upload is what
`scrapscan-data export-feedback` turns into a labelled frame for the next finetune.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from service.errors import Conflict, InvalidInput
from service.result import FrameResult, Summary

Label = Literal["confirmed", "false_alarm", "other_class", "missed"]
Decision = Literal["accepted", "rejected", "manual_inspection"]
COMMENT_CHARS = 500


class _Model(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, serialize_by_alias=True, extra="forbid", frozen=True
    )


class FrameFeedbackIn(_Model):
    """An operator's judgement of one instance, or of a contaminant the frame missed."""

    label: Label = Field(
        description="confirmed, false_alarm or other_class (about `instance`); missed (`box`)"
    )
    instance: int | None = Field(
        None, ge=0, description="the instance's index in the frame's result (not with missed)"
    )
    class_name: str | None = Field(
        None,
        alias="class",
        description="the true class: required with other_class, optional with missed",
        examples=["cable"],
    )
    box: tuple[int, int, int, int] | None = Field(
        None, description="missed only: x, y, width, height in frame pixels"
    )
    comment: str = Field("", max_length=COMMENT_CHARS)


class FrameFeedback(FrameFeedbackIn):
    """Feedback as stored."""

    kind: Literal["frame"] = "frame"
    id: str
    frame_id: str
    by: str = Field(description="the role of the key that gave it (anonymous without keys)")
    at: float = Field(description="when, in seconds since the epoch")


class TruckDecisionIn(_Model):
    """What was done with a truck."""

    decision: Decision
    comment: str = Field("", max_length=COMMENT_CHARS)


class TruckDecision(TruckDecisionIn):
    """A truck's decision as stored."""

    kind: Literal["truck"] = "truck"
    id: str
    truck_id: str
    by: str
    at: float


Feedback = Annotated[FrameFeedback | TruckDecision, Field(discriminator="kind")]
FEEDBACK: TypeAdapter[FrameFeedback | TruckDecision] = TypeAdapter(Feedback)


def frame_feedback(
    given: FrameFeedbackIn,
    frame_id: str,
    result: FrameResult | Summary | None,
    classes: Sequence[str],
    by: str,
) -> FrameFeedback:
    """The stored item for `given` about a frame, or InvalidInput / Conflict saying why not.

    The frame must be done with its full result (the instances and the frame size that
    the feedback refers to); `classes` are the contaminant classes a class may name.
    """
    if not isinstance(result, FrameResult):
        raise Conflict(
            "frame_not_judgeable",
            "feedback needs a done frame whose result is still kept"
            + ("" if result is None else " (this one's has passed its retention)"),
        )
    if given.class_name is not None and given.class_name not in classes:
        raise InvalidInput("invalid_class", f"class is one of {', '.join(classes)}")
    if given.label == "missed":
        if given.box is None or given.instance is not None:
            raise InvalidInput("invalid_feedback", "missed takes a box and no instance")
        x, y, w, h = given.box
        width, height = result.image.width, result.image.height
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
            raise InvalidInput(
                "invalid_box", f"the box lies inside the {width}x{height} frame, not empty"
            )
    else:
        if given.instance is None or given.box is not None:
            raise InvalidInput("invalid_feedback", f"{given.label} takes an instance and no box")
        if given.instance >= len(result.instances):
            raise InvalidInput(
                "invalid_instance", f"the frame has {len(result.instances)} instances"
            )
        if (given.label == "other_class") != (given.class_name is not None):
            raise InvalidInput("invalid_feedback", "a class goes with other_class (and missed)")
        if given.class_name == result.instances[given.instance].class_name:
            raise InvalidInput("invalid_class", "other_class names a class other than its own")
    return FrameFeedback(
        **given.model_dump(by_alias=False),
        id=uuid.uuid4().hex,
        frame_id=frame_id,
        by=by,
        at=time.time(),
    )


def truck_decision(given: TruckDecisionIn, truck_id: str, by: str) -> TruckDecision:
    """The stored item for a truck's decision."""
    return TruckDecision(
        **given.model_dump(), id=uuid.uuid4().hex, truck_id=truck_id, by=by, at=time.time()
    )


def latest_labels(items: Sequence[FrameFeedback]) -> dict[int, FrameFeedback]:
    """Per instance index, the latest judgement of it (an operator may change their mind)."""
    out: dict[int, FrameFeedback] = {}
    for item in sorted(items, key=lambda i: i.at):
        if item.instance is not None:
            out[item.instance] = item
    return out


def metric_class(item: FrameFeedback, result: FrameResult) -> str:
    """The class a feedback counter is labelled with: the class the item is about."""
    if item.class_name is not None:
        return item.class_name
    if item.instance is not None:
        return result.instances[item.instance].class_name
    return "unknown"
