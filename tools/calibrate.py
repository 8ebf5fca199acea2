"""Thresholds chosen for the decisions a yard sees, on a labelled validation split.

The served path runs once per frame (tools.served_eval.run_frames); every choice below
re-reads the kept maps under another rule:

1. Per-class pixel thresholds: coordinate ascent on the served instances' F1 (the
   evaluation's matching rule) at its best minimum score, each class's threshold over a
   grid with the others fixed, two passes, from the bundle's own threshold for all, with
   no area limit yet. The F1 is taken at the best cut of the instances' scores because
   the minimum score of step 3 cuts them anyway: judged with every candidate served, a
   rule that proposes fewer regions wins even when its best regions are worse (on the
   demo bundle's validation frames that kept the minimum area at 817 px and the
   held-out recall at 0.35; BENCHMARKS.md).
2. The minimum instance area, from the sizes of the true contaminants and of the false
   regions (the size filter of IAP-AS, fitted to data rather than a constant): every area
   at which a false region could be cut is tried (and the bundle's own), no higher than
   the median true contaminant's area, and the one of best F1 (again at the best score
   cut) kept, the smaller on a tie.
3. The frame decisions: the frame score is the highest instance score, and two scores
   cut it. The minimum score (below it a frame is clean and its instances are not
   reported) depends on the frame rule:
   - `balanced` (the default): the score of the best balanced accuracy on these frames
     (the share of contaminated frames flagged less the share of clean ones flagged,
     Youden's J; ties go to the higher score). A validation split holds tens of clean
     frames, not the hundreds a false-alarm rate of a few percent needs: cut at a 5%
     rate, 16 clean frames leave the single highest false region as the cut, and the
     model's weaker finds all pass as clean.
   - `false-alarm`: the lowest score that flags at most `false_alarm_rate` of the clean
     frames. A model that cannot tell clean frames from contaminated ones pays for the
     target in misses; the report says how many.
   The reject score is the lowest that rejects at most `false_alarm_rate` of the clean
   frames under `balanced` (so INSPECT asks a person, REJECT is the confident call), a
   fifth of it under `false-alarm`; never below the minimum score, nor below the lowest
   score from which the instances found are right REJECT_PRECISION of the time (a
   validation split whose clean frames show no false region at all says nothing about
   how sure a find is; the instances do).
4. For the drift signals, the 10th, 50th and 90th percentiles of the frames' highest
   probabilities (anomaly and per class), which the service exports as its reference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from service.stages import InstanceRule
from tools.served_eval import Seen, count, outcome

GRID = tuple(
    round(float(t), 3)
    for t in (*np.arange(0.05, 0.851, 0.05), *np.arange(0.9, 0.991, 0.01), 0.995, 0.999)
)
"""Pixel thresholds tried: finer near 1, where a trained model's probabilities crowd."""
TRUE_AREA_PERCENTILE = 50.0
"""The minimum area never exceeds this percentile of the true contaminants' areas."""
REJECT_SHARE = 0.2
"""Under the false-alarm rule, the reject score's false-alarm rate as a share of it."""
REJECT_PRECISION = 0.9
"""The reject score is never below the lowest score from which the validation frames'
instances are right at least this share of the time (1.0 when they never are: every
find then asks a person)."""
FRAME_RULES = ("balanced", "false-alarm")
"""How the minimum frame score is chosen (module docstring, step 3)."""


class CalibrationError(ValueError):
    """The validation data cannot calibrate (no contaminant, or no clean frame)."""


def _f1(
    seen: Sequence[Seen],
    rule: InstanceRule,
    classes: tuple[str, ...],
    iou: float,
    min_score: float = 0.0,
) -> float:
    outcomes = [outcome(s, rule, classes, iou) for s in seen]
    return float(count(seen, outcomes, classes, min_score).figures()["f1"])


def _cuts(found: Sequence[tuple[float, bool]]) -> Iterator[tuple[float, int, int]]:
    """Each cut of the scores of `found` (score, true or not), highest first.

    Yields the lowest score kept, how many are kept and how many of those are true. A cut
    never splits a tie.
    """
    ranked = sorted(found, key=lambda f: -f[0])
    right = 0
    for n, (score, ok) in enumerate(ranked, start=1):
        right += ok
        if n == len(ranked) or ranked[n][0] != score:
            yield score, n, right


def _best_f1(found: Sequence[tuple[float, bool]], n_true: int) -> float:
    """The highest instance F1 over the cuts of the scores of `found` (score, true or not)."""
    return max((2 * right / (n_true + n) for _, n, right in _cuts(found)), default=0.0)


def _candidates(
    seen: Sequence[Seen], rule: InstanceRule, classes: tuple[str, ...], iou: float
) -> list[tuple[float, bool, int]]:
    """Every candidate instance of `rule` (minimum score aside): score, found, area."""
    return [
        (inst.score, t is not None, inst.area)
        for s in seen
        for o in (outcome(s, rule, classes, iou),)
        for inst, t in zip(o.candidates, o.matched, strict=True)
    ]


def _cut_f1(
    seen: Sequence[Seen], rule: InstanceRule, classes: tuple[str, ...], iou: float, n_true: int
) -> float:
    """`rule`'s instance F1 at its best minimum score."""
    return _best_f1([(sc, ok) for sc, ok, _ in _candidates(seen, rule, classes, iou)], n_true)


def _lowest_above(scores: Sequence[float], allowed: int) -> float:
    """The lowest threshold at which at most `allowed` of `scores` are at or over it."""
    ranked = sorted(scores, reverse=True)
    if allowed >= len(ranked) or ranked[allowed] <= 0.0:
        return 0.0
    return float(min(1.0, np.nextafter(ranked[allowed], 2.0)))


def _precise_from(found: Sequence[tuple[float, bool]], precision: float) -> float:
    """The lowest score from which the instances (score, true or not) reach `precision`."""
    return float(
        min((score for score, n, right in _cuts(found) if right / n >= precision), default=1.0)
    )


def _most_balanced(clean: Sequence[float], contaminated: Sequence[float]) -> float:
    """The minimum score of the highest Youden's J, the higher one on a tie."""
    scores = (s for s in (*clean, *contaminated) if s > 0)
    cuts = {0.0, *(float(np.nextafter(s, 2.0)) for s in scores)}
    c, d = np.asarray(clean), np.asarray(contaminated)

    def j(cut: float) -> float:
        # a frame without instances (score 0) is never flagged, whatever the cut
        flagged = (d >= cut) & (d > 0)
        false = (c >= cut) & (c > 0)
        return float(flagged.mean() if len(d) else 0.0) - float(false.mean())

    return min(1.0, max(cuts, key=lambda cut: (j(cut), cut)))


def calibrate(
    seen: Sequence[Seen],
    base: InstanceRule,
    classes: tuple[str, ...],
    match_iou: float,
    false_alarm_rate: float,
    log: Any = print,
    frame_rule: str = "balanced",
) -> tuple[InstanceRule, float, dict[str, Any]]:
    """The calibrated rule, reject score, and how they were chosen."""
    if frame_rule not in FRAME_RULES:
        raise ValueError(f"frame rule {frame_rule!r}: one of {', '.join(FRAME_RULES)}")
    true_areas = [a for s in seen for a in s.truth.areas]
    clean = [s for s in seen if not s.truth.contaminated]
    if not true_areas:
        raise CalibrationError("the validation frames hold no contaminant to calibrate on")
    if not clean:
        raise CalibrationError("the validation frames hold no clean frame to calibrate on")

    n_true = len(true_areas)
    rule = replace(
        base,
        class_thresholds=(base.pixel_threshold,) * (len(classes) - 1),
        min_area=0,
        min_score=0.0,
    )
    best = _cut_f1(seen, rule, classes, match_iou, n_true)
    log(f"calibrate: F1 {best:.3f} at the bundle's threshold {base.pixel_threshold:.3f}")
    for _ in range(2):
        for k in range(len(classes) - 1):
            for t in GRID:
                assert rule.class_thresholds is not None
                trial = list(rule.class_thresholds)
                trial[k] = t
                candidate = replace(rule, class_thresholds=tuple(trial))
                f1 = _cut_f1(seen, candidate, classes, match_iou, n_true)
                if f1 > best:
                    best, rule = f1, candidate
            chosen = rule.class_thresholds[k] if rule.class_thresholds else base.pixel_threshold
            log(f"calibrate: {classes[k + 1]} threshold {chosen:.2f}, F1 {best:.3f}")

    # 2. minimum area: the candidates at no area limit, marked found or false
    cap = float(np.percentile(true_areas, TRUE_AREA_PERCENTILE))
    regions = _candidates(seen, rule, classes, match_iou)
    false_areas = sorted(a for _, ok, a in regions if not ok)
    options = sorted(
        {0, *(a + 1 for a in false_areas if a + 1 <= cap)} | {min(base.min_area, int(cap))}
    )

    def area_f1(limit: int) -> float:
        return _best_f1([(sc, ok) for sc, ok, a in regions if a >= limit], n_true)

    min_area = max(options, key=lambda a: (area_f1(a), -a))
    rule = replace(rule, min_area=int(min_area))
    log(
        f"calibrate: minimum area {min_area} px (true areas' p{TRUE_AREA_PERCENTILE:g} "
        f"{cap:.0f}), F1 {area_f1(min_area):.3f}"
    )

    # 3. frame decisions on the frames' scores
    outcomes = [outcome(s, rule, classes, match_iou) for s in seen]
    contaminated = [s.truth.contaminated for s in seen]
    scores = [o.frame_score for o, c in zip(outcomes, contaminated, strict=True) if not c]
    dirty = [o.frame_score for o, c in zip(outcomes, contaminated, strict=True) if c]
    flag_rate = false_alarm_rate
    if frame_rule == "balanced":
        min_score = _most_balanced(scores, dirty)
    else:
        min_score = _lowest_above(scores, int(np.floor(false_alarm_rate * len(clean))))
        flag_rate = false_alarm_rate * REJECT_SHARE
    found = [
        (inst.score, t is not None)
        for o in outcomes
        for inst, t in zip(o.candidates, o.matched, strict=True)
    ]
    precise = _precise_from(found, REJECT_PRECISION)
    reject = max(min_score, precise, _lowest_above(scores, int(np.floor(flag_rate * len(clean)))))
    rule = replace(rule, min_score=min_score)
    log(
        f"calibrate: minimum score {min_score:.4f} ({frame_rule}), reject score "
        f"{reject:.4f} (instances from {precise:.4f} are right {REJECT_PRECISION:.0%} of "
        f"the time or more; {len(clean)} clean frames, {len(dirty)} contaminated)"
    )
    details = {
        "frames": len(seen),
        "clean_frames": len(clean),
        "true_instances": n_true,
        "frame_rule": frame_rule,
        "target_false_alarm_rate": false_alarm_rate if frame_rule == "false-alarm" else None,
        "reject_false_alarm_rate": flag_rate,
        "reject_precision": REJECT_PRECISION,
        "reject_precise_from": precise,
        "match_iou": match_iou,
        "threshold_grid": [GRID[0], GRID[-1], len(GRID)],
        "instance_f1_before": _f1(seen, base, classes, match_iou, base.min_score),
        "instance_f1_thresholds": best,  # at its best minimum score, as steps 1 and 2 judge
        "instance_f1_after": _f1(seen, rule, classes, match_iou, rule.min_score),
        "true_area_percentiles": {
            str(p): float(np.percentile(true_areas, p)) for p in (5, 25, 50, 75, 95)
        },
        "false_area_percentiles": {
            str(p): float(np.percentile(false_areas, p)) for p in (5, 25, 50, 75, 95)
        }
        if false_areas
        else None,
        "clean_frame_scores": sorted((round(s, 4) for s in scores), reverse=True),
        "contaminated_frame_scores": sorted((round(s, 4) for s in dirty), reverse=True),
        "frame_score_quantiles": frame_score_quantiles(seen, classes),
    }
    return rule, reject, details


def frame_score_quantiles(seen: Sequence[Seen], classes: tuple[str, ...]) -> dict[str, Any]:
    """Percentiles (10, 50, 90) of the frames' highest probability in the bed.

    For the anomaly map and each class; the service's drift alert compares its live
    frames with them.
    """
    maps = {"anomaly": [s.merged.scoring[s.merged.bed_mask].max() for s in seen]}
    for k, name in enumerate(classes[1:], start=1):
        maps[name] = [s.merged.classes[k][s.merged.bed_mask].max() for s in seen]
    return {
        name: {f"{q / 100:g}": round(float(np.percentile(v, q)), 4) for q in (10, 50, 90)}
        for name, v in maps.items()
    }
