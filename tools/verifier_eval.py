"""The region encoder on the served instances, judged on labelled frames.

`descriptions` asks the bundle's region encoder (service.region.RegionCheck) about each
served candidate instance, as the service does; `description_figures` says how often
its description names the class of the true instance a candidate found. As a verifier,
each candidate has its verification score; a candidate scored below a margin is dropped.
`choose_margin` picks the margin of the highest instance precision at a recall at most
0.05 below the recall without the verifier; `verifier_figures` gives the instance and
frame figures without and with it (tools/served_eval.py counts them), and beside them
what a stricter minimum score alone gives at the verifier's recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from service.region import NORMAL, Described, RegionCheck
from tools.served_eval import FrameOutcome, Seen, count, frame_table


def descriptions(
    seen: Sequence[Seen], outcomes: Sequence[FrameOutcome], region: RegionCheck, min_score: float
) -> list[list[Described | None]]:
    """Per frame, what the region encoder says of each served candidate (None below `min_score`)."""
    out = []
    for s, o in zip(seen, outcomes, strict=True):
        said: list[Described | None] = [None] * len(o.candidates)
        picked = [k for k, i in enumerate(o.candidates) if i.score >= min_score]
        if picked:
            frame = cv2.imread(str(s.record.image_path), cv2.IMREAD_COLOR)
            if frame is None:
                raise OSError(f"{s.record.image_path}: cannot decode image")
            found = region.describe(np.asarray(frame, np.uint8), [o.candidates[k] for k in picked])
            for k, d in zip(picked, found, strict=True):
                said[k] = d
        out.append(said)
    return out


def verifications(said: Sequence[Sequence[Described | None]]) -> list[list[float | None]]:
    """The verification score of each of `descriptions`' regions."""
    return [[None if d is None else d.verification for d in row] for row in said]


def description_figures(
    seen: Sequence[Seen],
    outcomes: Sequence[FrameOutcome],
    said: Sequence[Sequence[Described | None]],
    classes: tuple[str, ...],
) -> dict[str, Any]:
    """How far the served instances' descriptions (the overlay's second line) can be trusted.

    Of the served instances that found a true one: the share whose description names its
    true class, and the share described as plain scrap, in all and per true class; of
    the false ones, the share described as plain scrap (the encoder right where the
    segmentation is wrong).
    """
    per_class = {c: {"found": 0, "right": 0, "plain": 0} for c in classes[1:]}
    false = false_plain = 0
    for s, o, row in zip(seen, outcomes, said, strict=True):
        for t, d in zip(o.matched, row, strict=True):
            if d is None:
                continue
            plain = d.description_class == NORMAL
            if t is None:
                false += 1
                false_plain += plain
                continue
            c = per_class[classes[s.truth.classes[t]]]
            c["found"] += 1
            c["right"] += d.description_class == classes[s.truth.classes[t]]
            c["plain"] += plain

    def share(n: int, of: int) -> float | None:
        return n / of if of else None

    found = sum(c["found"] for c in per_class.values())
    return {
        "found": found,
        "class_right": share(sum(c["right"] for c in per_class.values()), found),
        "said_plain_scrap": share(sum(c["plain"] for c in per_class.values()), found),
        "per_class": {
            name: {
                "found": c["found"],
                "class_right": share(c["right"], c["found"]),
                "said_plain_scrap": share(c["plain"], c["found"]),
            }
            for name, c in per_class.items()
        },
        "false": false,
        "false_said_plain_scrap": share(false_plain, false),
    }


def verified(
    outcomes: Sequence[FrameOutcome], scores: Sequence[Sequence[float | None]], margin: float
) -> list[FrameOutcome]:
    """The outcomes without the served candidates verified below `margin`."""
    out = []
    for o, vs in zip(outcomes, scores, strict=True):
        keep = [k for k, v in enumerate(vs) if v is None or v >= margin]
        out.append(
            FrameOutcome(
                [o.candidates[k] for k in keep],
                [o.rles[k] for k in keep],
                [o.matched[k] for k in keep],
            )
        )
    return out


@dataclass(frozen=True)
class Checked:
    """The served candidates of labelled frames and the verifier's score of each."""

    seen: Sequence[Seen]
    outcomes: Sequence[FrameOutcome]
    scores: Sequence[Sequence[float | None]]
    """verifications(descriptions(seen, outcomes, ...))"""
    classes: tuple[str, ...]
    min_score: float

    def at(self, margin: float | None) -> Sequence[FrameOutcome]:
        """The outcomes without the verifier, or with it at `margin`."""
        return self.outcomes if margin is None else verified(self.outcomes, self.scores, margin)

    def instances(self, margin: float | None = None) -> dict[str, Any]:
        """Instance figures without the verifier, or with it at `margin`."""
        return count(self.seen, self.at(margin), self.classes, self.min_score).figures()

    def score_at_recall(self, recall: float) -> dict[str, Any] | None:
        """What a stricter minimum score alone gives at `recall`.

        Without the verifier: the highest minimum score whose recall is still `recall` or
        more, and its instance figures.
        """
        best = None
        scores = {i.score for o in self.outcomes for i in o.candidates}
        for s in sorted(v for v in scores if v >= self.min_score):
            f = count(self.seen, self.outcomes, self.classes, s).figures()
            if f["recall"] is None or f["recall"] < recall:
                break
            best = {"min_score": round(s, 4), **f}
        return best


def choose_margin(checked: Checked, recall_drop: float = 0.05) -> float | None:
    """The verification margin of the highest instance precision.

    Among margins whose recall is at most `recall_drop` below the recall without the
    verifier; None when none is more precise than no verifier.
    """
    base = checked.instances()
    if base["recall"] is None:
        return None
    best, margin = base["precision"] or 0.0, None
    for m in sorted({v for vs in checked.scores for v in vs if v is not None}):
        f = checked.instances(m)
        near = f["recall"] is not None and f["recall"] >= base["recall"] - recall_drop
        if near and f["precision"] is not None and f["precision"] > best:
            best, margin = f["precision"], m
    return margin


def verifier_figures(checked: Checked, reject: float, margin: float) -> dict[str, Any]:
    """Instances and frames without and with the verifier at `margin`."""

    def figures(m: float | None) -> dict[str, Any]:
        o = checked.at(m)
        frames, _ = frame_table(checked.seen, o, checked.min_score, reject)
        frames.pop("frame_score_roc")
        counted = count(checked.seen, o, checked.classes, checked.min_score)
        return {"instances": counted.figures(), "frames": frames}

    kept = figures(margin)
    recall = kept["instances"]["recall"]
    return {
        "margin": margin,
        "without": figures(None),
        "with": kept,
        "score_at_same_recall": None if recall is None else checked.score_at_recall(recall),
    }
