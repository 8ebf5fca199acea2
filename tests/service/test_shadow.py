"""Shadow scoring's comparison: frames picked, instances matched, figures counted."""

from __future__ import annotations

import numpy as np

from service.result import FrameResult, ModelRef
from service.shadow import ShadowFrame, compare, picked, summarise
from service.stages import Findings, Instance

from .conftest import frame_result

CANDIDATE = ModelRef(name="test", version="candidate")


def square(x: int, y: int, side: int, class_name: str, score: float) -> Instance:
    return Instance(
        class_name=class_name,
        score=score,
        class_scores={class_name: 1.0},
        bbox=(x, y, side, side),
        area=side * side,
        polygon=[(x, y), (x + side, y), (x + side, y + side), (x, y + side)],
    )


def served_with(*instances: Instance, verdict: str = "inspect") -> FrameResult:
    result = frame_result([], verdict)
    return result.model_copy(update={"instances": [i.result() for i in instances]})


def test_a_fixed_share_of_frame_ids_is_picked_the_same_way_each_time():
    ids = [f"{k:032x}" for k in range(4000)]
    quarter = [i for i in ids if picked(i, 0.25)]
    assert 0.22 < len(quarter) / len(ids) < 0.28
    assert quarter == [i for i in ids if picked(i, 0.25)]
    assert set(quarter) <= {i for i in ids if picked(i, 0.5)}  # a larger share adds frames
    assert all(picked(i, 1.0) for i in ids) and not any(picked(i, 0.0) for i in ids)


def test_instances_are_matched_reclassified_added_and_dropped():
    served = served_with(
        square(0, 0, 20, "motor", 0.99),  # found again as a motor
        square(40, 0, 20, "cable", 0.97),  # found again as a spray can
        square(0, 30, 10, "motor", 0.96),  # not found
    )
    findings = Findings(
        [
            square(2, 2, 20, "motor", 0.98),
            square(40, 2, 18, "spray_can", 0.95),
            square(30, 30, 10, "cable", 0.9),  # nothing served there
        ],
        np.zeros((48, 64), np.uint8),
    )
    frame = compare("f1", "cam", 1.0, served, CANDIDATE, "reject", findings)
    assert (frame.served_verdict, frame.candidate_verdict) == ("inspect", "reject")
    assert [(m.served.class_name, m.candidate.class_name) for m in frame.matched] == [
        ("motor", "motor"),
        ("cable", "spray_can"),
    ]
    assert 0.6 < frame.matched[0].iou < 0.9
    assert [(i.class_name, i.bbox) for i in frame.added] == [("cable", (30, 30, 10, 10))]
    assert [(i.class_name, i.bbox) for i in frame.dropped] == [("motor", (0, 30, 10, 10))]


def test_a_region_overlapping_too_little_is_no_match():
    served = served_with(square(0, 0, 20, "motor", 0.99))
    findings = Findings([square(15, 15, 20, "motor", 0.99)], np.zeros((48, 64), np.uint8))
    frame = compare("f1", "cam", 1.0, served, CANDIDATE, "inspect", findings)
    assert frame.matched == [] and len(frame.added) == len(frame.dropped) == 1


def test_the_summary_counts_one_candidate_by_verdict_pair_and_class():
    def frame(fid, served_verdict, candidate_verdict, candidate=CANDIDATE):
        return ShadowFrame(
            frame_id=fid,
            camera_id="cam",
            at=float(len(fid)),
            served_model=ModelRef(name="test", version="0"),
            candidate_model=candidate,
            served_verdict=served_verdict,
            candidate_verdict=candidate_verdict,
            matched=[],
            added=[{"class": "cable", "score": 0.9, "bbox": (0, 0, 1, 1)}],
            dropped=[],
        )

    frames = [
        frame("a", "clean", "clean"),
        frame("bb", "clean", "inspect"),
        frame("ccc", "reject", "reject"),
        frame("x", "clean", "reject", ModelRef(name="test", version="other")),
    ]
    s = summarise(CANDIDATE, frames, ("motor", "cable", "spray_can"))
    assert (s.frames, s.verdicts_agree, s.agreement) == (3, 2, 0.6667)
    assert s.verdicts["clean"] == {"clean": 1, "inspect": 1, "reject": 0}
    assert s.verdicts["reject"]["reject"] == 1
    assert s.instances.added == 3 and s.per_class["cable"].added == 3
    assert s.per_class["motor"].model_dump() == dict.fromkeys(
        ("matched", "reclassified", "added", "dropped"), 0
    )
    assert (s.first_at, s.last_at) == (1.0, 3.0)
    empty = summarise(ModelRef(name="test", version="none"), frames, ("motor",))
    assert empty.frames == 0 and empty.agreement is None
