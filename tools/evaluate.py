"""scrapscan-eval: evaluate a checkpoint on patches, or a bundle on the served path.

    scrapscan-eval --checkpoint FILE --data DIR --out REPORT_DIR    (training.evaluate)
    scrapscan-eval --winclip CONFIG --data DIR --out REPORT_DIR     (training.evaluate)
    scrapscan-eval --bundle DIR --data DIR [DIR ...] --out REPORT_DIR [--calibrate]

With --bundle, labelled full frames go through the service's own pipeline and are judged
as a yard judges them (tools.served_eval): instance AP, recall and precision (and why
each true instance was missed), frame verdicts, trucks, full-frame pixel metrics. With
--calibrate the thresholds are chosen on those frames first (tools.calibrate), written
to REPORT_DIR/thresholds.json for `scrapscan-export --thresholds`, and the report gives
the figures under them. A bundle with a region encoder has its descriptions of the served
instances judged (report "descriptions": of the instances that found a true one, the share
whose description names its class or calls it plain scrap; of the false ones, the share
called plain scrap), and is also judged as a verifier: its verification score of each
served instance, and the instances and frames without and with the instances under the
margin (report "verifier"), beside the precision a stricter minimum score alone reaches
at the same recall; --calibrate chooses the margin (the
highest instance precision at a recall at most 0.05 below the recall without it).

REPORT_DIR/report.json     the figures, the thresholds that made them, per-frame rows
REPORT_DIR/roc.png, pr.png pixel and frame-score ROC, pixel precision-recall
REPORT_DIR/false_alarms_*.jpg, misses_*.jpg   the served overlay beside the truth
REPORT_DIR/thresholds.json (--calibrate) what scrapscan-export puts into the manifest
REPORT_DIR/false_regions.json  what matched no label, for scrapscan-region --negatives
REPORT_DIR/found_regions.json  what matched one (with its class), for scrapscan-region --finds

Nothing is written until every frame has gone through; REPORT_DIR appears whole or not
at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.bundle import BundleError, load_bundle
from common.classes import CLASS_NAMES
from common.cli import command
from service.pipeline import Pipeline
from service.serving import open_pipeline
from service.settings import CameraBed, Settings
from tools.calibrate import FRAME_RULES, CalibrationError, calibrate
from tools.eval_report import write_report
from tools.served_eval import Seen, run_frames, score
from tools.verifier_eval import (
    Checked,
    choose_margin,
    description_figures,
    descriptions,
    verifications,
    verifier_figures,
)
from training import evaluate as patch_evaluate
from training.data import DataError, FrameRecord, load_frames

THRESHOLDS = "thresholds.json"


class EvalError(ValueError):
    """The evaluation cannot run; the message names the file and the problem."""


def build_parser() -> argparse.ArgumentParser:
    """The arguments of the served-path form (--bundle)."""
    p = command("scrapscan-eval", __doc__)
    p.add_argument("--bundle", type=Path, required=True, metavar="DIR", help="model bundle")
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        metavar="DIR",
        help="labelled frame folders (as scrapscan-data check accepts), taken together",
    )
    p.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR", help="report folder")
    p.add_argument(
        "--bed",
        choices=("auto", "full", "learned"),
        default="auto",
        help="how the bed is found, as a camera setting (auto: the bundle's bed model when "
        "it has one, as the service does for a camera without a setting)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help=f"choose the thresholds on these frames and write {THRESHOLDS}",
    )
    p.add_argument(
        "--frame-rule",
        choices=FRAME_RULES,
        default="balanced",
        help="with --calibrate: how the minimum frame score is chosen: balanced (the best "
        "share of contaminated frames flagged less clean ones flagged), or false-alarm "
        "(at most --false-alarm-rate of clean frames flagged); default balanced",
    )
    p.add_argument(
        "--false-alarm-rate",
        type=float,
        default=0.05,
        metavar="R",
        help="with --calibrate: share of clean frames allowed to be rejected (balanced) or "
        "flagged (false-alarm) (0.05)",
    )
    p.add_argument(
        "--match-iou",
        type=float,
        default=0.25,
        metavar="IOU",
        help="mask IoU at which a served instance finds a true one (0.25)",
    )
    p.add_argument("--worst", type=int, default=4, metavar="N", help="overlays of each kind (4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing REPORT_DIR")
    return p


def _frames(folders: Sequence[Path]) -> tuple[list[FrameRecord], dict[Path, str]]:
    """The labelled frames of every folder, and the truck of each image that names one.

    load_frames refuses a folder without labels, naming it; a COCO image's `truck_id`
    (a field the loader does not keep) is read from annotations.json here.
    """
    records: list[FrameRecord] = []
    trucks: dict[Path, str] = {}
    for folder in folders:
        try:
            frames = load_frames(folder)
        except FileNotFoundError as err:
            raise EvalError(str(err)) from None
        if frames.layout == "coco":
            coco = json.loads((frames.root / "annotations.json").read_text())
            named = {
                (frames.root / "images" / i["file_name"]).resolve(): str(i["truck_id"])
                for i in coco["images"]
                if i.get("truck_id")
            }
            for r in frames.frames:
                if r.image_path.resolve() in named:
                    trucks[r.image_path] = named[r.image_path.resolve()]
        records += frames.frames
    if not records:
        raise EvalError(f"{', '.join(map(str, folders))}: no labelled frame")
    return records, trucks


async def _run(
    settings: Settings, records: list[FrameRecord], trucks: dict[Path, str]
) -> tuple[Pipeline, list[Seen], float]:
    pipeline = await open_pipeline(settings)
    try:
        start = time.perf_counter()
        seen = await run_frames(pipeline, records, trucks)
        return pipeline, seen, time.perf_counter() - start
    finally:
        await pipeline.stop()


def served_main(argv: Sequence[str]) -> int:
    """The --bundle form; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.match_iou <= 1 or not 0 <= args.false_alarm_rate < 1 or args.worst < 0:
        parser.error("--match-iou in (0, 1], --false-alarm-rate in [0, 1), --worst >= 0")
    if args.out.exists() and not args.overwrite:
        return _fail(f"{args.out} exists; pass --overwrite to replace it")
    try:
        bundle = load_bundle(args.bundle)
        classes = bundle.manifest.classes
        if tuple(classes) != CLASS_NAMES:
            raise EvalError(
                f"{args.bundle}: the bundle's classes {list(classes)} differ from the data's "
                f"{list(CLASS_NAMES)}"
            )
        if args.bed == "learned" and bundle.manifest.bed_model is None:
            raise EvalError(f"{args.bundle}: --bed learned, but the bundle has no bed model")
        records, trucks = _frames(args.data)
        settings = Settings(bundle=args.bundle, default_bed=CameraBed(bed=args.bed))
        print(f"scrapscan-eval: {len(records)} frames through {bundle}", flush=True)
        pipeline, seen, seconds = asyncio.run(_run(settings, records, trucks))
        rule, reject = pipeline.rule, pipeline.reject_score
        header: dict[str, Any] = {
            "bundle": {
                "path": str(args.bundle),
                "name": bundle.manifest.model.name,
                "version": bundle.manifest.model.version,
                "source": bundle.manifest.model.source,
                "binary_mode": bundle.manifest.model.binary_mode,
                "sigma": bundle.manifest.postprocess.sigma,
                "refine": None
                if bundle.manifest.postprocess.refine is None
                else bundle.manifest.postprocess.refine.model_dump(),
                "flips": list(bundle.manifest.postprocess.flips),
                "region": None
                if bundle.manifest.region is None
                else bundle.manifest.region.metrics.get("checkpoint"),
            },
            "data": [str(d) for d in args.data],
            "bed": args.bed,
            "map_stride": settings.map_stride,
            "seconds_per_frame": seconds / len(seen),
        }
        thresholds = None
        if args.calibrate:
            rule, reject, details = calibrate(
                seen,
                rule,
                classes,
                args.match_iou,
                args.false_alarm_rate,
                frame_rule=args.frame_rule,
            )
            header["calibration"] = details
            thresholds = {
                "bundle": header["bundle"],
                **rule.describe(reject),
                "calibration": details,
            }
        scored = score(seen, rule, reject, classes, args.match_iou)
        region = bundle.manifest.region
        if pipeline.region is not None and region is not None:
            said = descriptions(seen, scored.outcomes, pipeline.region, rule.min_score)
            scored.report["descriptions"] = description_figures(
                seen, scored.outcomes, said, classes
            )
            checks = verifications(said)
            checked = Checked(seen, scored.outcomes, checks, classes, rule.min_score)
            margin = region.verify_margin
            if args.calibrate:
                margin = choose_margin(checked)
                assert thresholds is not None
                thresholds["verify_margin"] = margin
            if margin is not None:
                scored.report["verifier"] = {
                    "drop_unverified": region.drop_unverified or args.calibrate,
                    **verifier_figures(checked, reject, margin),
                }
        with tempfile.TemporaryDirectory(
            dir=args.out.parent if args.out.parent.exists() else None
        ) as tmp:
            work = Path(tmp) / "report"
            work.mkdir()
            write_report(work, seen, scored, rule, classes, header, args.worst)
            if thresholds is not None:
                (work / THRESHOLDS).write_text(json.dumps(thresholds, indent=2) + "\n")
            if args.out.exists():
                shutil.rmtree(args.out)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(work), args.out)
    except (BundleError, DataError, EvalError, CalibrationError, OSError) as err:
        return _fail(str(err), 1)
    r = scored.report
    inst, frames = r["instances"], r["frames"]
    ap = r["instance_ap"]
    print(
        f"instances: recall {_pct(inst['recall'])}, precision {_pct(inst['precision'])}, "
        f"class right {_pct(inst['class_accuracy'])} ({inst['found']} of {inst['true']} "
        f"found, {inst['served']} served); AP@0.25 {_num(ap['iou_0.25'])}, "
        f"AP@0.5 {_num(ap['iou_0.5'])}"
    )
    causes = [f"{n} {c.replace('_', ' ')}" for c, v in inst["missed"].items() if (n := v["total"])]
    if causes:
        print(f"missed: {', '.join(causes)}")
    if (told := r.get("descriptions")) is not None:
        print(
            f"descriptions: class right {_pct(told['class_right'])} of {told['found']} found "
            f"instances (plain scrap {_pct(told['said_plain_scrap'])}); plain scrap "
            f"{_pct(told['false_said_plain_scrap'])} of {told['false']} false ones"
        )
    print(
        f"frames: accuracy {_pct(frames['accuracy'])}, false alarms "
        f"{_pct(frames['false_alarm_rate'])} of {frames['clean_frames']} clean, misses "
        f"{_pct(frames['miss_rate'])} of "
        f"{frames['contaminated_frames']} contaminated; pixel AP "
        f"{'-' if r['pixel'] is None else format(r['pixel']['ap'], '.3f')}; "
        f"{header['seconds_per_frame']:.2f} s a frame; report in {args.out}"
    )
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _num(section: dict[str, Any] | None) -> str:
    return "-" if not section or section.get("ap") is None else f"{section['ap']:.3f}"


def _fail(message: str, code: int = 2) -> int:
    print(f"scrapscan-eval: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command: the --bundle form here, the patch-level forms in training.evaluate."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--bundle" or a.startswith("--bundle=") for a in args):
        return served_main(args)
    return patch_evaluate.main(args)


if __name__ == "__main__":
    sys.exit(main())
