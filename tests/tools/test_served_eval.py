import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from common.bundle import read_manifest
from common.classes import CLASS_NAMES
from common.tiling import Box
from service.serving import open_pipeline
from service.settings import Settings
from service.stages import Bed, Instance, InstanceRule, Merged
from tools.calibrate import _best_f1, _lowest_above, _most_balanced, _precise_from, calibrate
from tools.evaluate import main
from tools.served_eval import Seen, Truth, match, score, truth_of
from training.data import FrameRecord, load_frames
from training.data.frames import LabelledInstance
from training.region.data import found_regions, negative_regions

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
H, W = 200, 300


def _rle(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    return mask_utils.encode(m)


def test_matching_is_greedy_by_score_and_needs_the_iou():
    truth = Truth([1, 2], [_rle(0, 50, 0, 50), _rle(100, 150, 100, 150)], [2500, 2500])
    preds = [
        _rle(0, 50, 0, 40),  # IoU 0.8 with truth 0
        _rle(0, 50, 0, 50),  # IoU 1.0 with truth 0, but scores lower
        _rle(100, 150, 100, 110),  # IoU 0.2 with truth 1
    ]
    assert match([0.9, 0.5, 0.8], preds, truth, 0.25) == [0, None, None]
    assert match([0.9, 0.5, 0.8], preds, truth, 0.15) == [0, None, 1]
    assert match([0.4, 0.5, 0.8], preds, truth, 0.25) == [None, 0, None]
    assert match([], [], truth, 0.25) == []


def _seen(name, regions, truth_regions):
    """A frame whose served maps are given: regions (y0, y1, x0, x1, anomaly, class index)."""
    anomaly = np.zeros((H, W), np.float32)
    classes = np.zeros((4, H, W), np.float32)
    classes[0] = 1.0
    for y0, y1, x0, x1, a, k in regions:
        anomaly[y0:y1, x0:x1] = a
        classes[:, y0:y1, x0:x1] = 0.1 / 3
        classes[k, y0:y1, x0:x1] = 0.9
    cells = np.zeros((H, W), np.uint8)
    instances = []
    for n, (y0, y1, x0, x1, k) in enumerate(truth_regions):
        cells[y0:y1, x0:x1] = k
        poly = [x0, y0, x1, y0, x1, y1, x0, y1]
        instances.append(LabelledInstance(n + 1, k, [poly], (x0, y0, x1 - x0, y1 - y0), 0.0))
    record = FrameRecord(name, Path(f"/nowhere/{name}.jpg"), W, H, tuple(instances))
    rles = [_rle(y0, y1, x0, x1) for y0, y1, x0, x1, _ in truth_regions]
    truth = Truth([k for *_, k in truth_regions], rles, [int(mask_utils.area(r)) for r in rles])
    full = np.array([[0, 0], [W, 0], [W, H], [0, H]], np.float64)
    bed = Bed(full, Box(0, 0, W, H), np.ones((H, W), bool), "full")
    return Seen(record, name, bed, Merged(anomaly, classes, bed.mask), truth, cells, 1, {})


def test_a_perfect_map_scores_full_marks_and_a_wrong_class_is_counted():
    seen = [
        _seen("a", [(20, 60, 20, 80, 0.9, 1)], [(20, 60, 20, 80, 1)]),
        _seen("b", [(100, 150, 100, 140, 0.7, 2)], [(100, 150, 100, 140, 2)]),
        _seen("c", [], []),
    ]
    rule = InstanceRule(0.5, 10, 0.5)
    r = score(seen, rule, 0.8, CLASS_NAMES, 0.25).report
    inst = r["instances"]
    assert (inst["recall"], inst["precision"], inst["class_accuracy"]) == (1.0, 1.0, 1.0)
    assert r["instance_ap"]["iou_0.5"]["per_class"]["motor"] == pytest.approx(1.0)
    assert r["instance_ap"]["iou_0.5"]["per_class"]["spray_can"] is None  # no true spray can
    assert r["frames"]["confusion"] == {
        "clean": {"clean": 1, "inspect": 0, "reject": 0},
        "contaminated": {"clean": 0, "inspect": 1, "reject": 1},
    }
    assert r["frames"]["accuracy"] == 1.0 and r["frames"]["false_alarm_rate"] == 0.0
    assert r["frames"]["frame_score_roc"]["auroc"] == pytest.approx(1.0)
    assert r["trucks"]["carried_and_flagged"] == 2 and r["trucks"]["clean_not_flagged"] == 1
    assert r["pixel"]["ap"] == pytest.approx(1.0)

    wrong = [_seen("a", [(20, 60, 20, 80, 0.9, 3)], [(20, 60, 20, 80, 1)]), seen[2]]
    r = score(wrong, rule, 0.8, CLASS_NAMES, 0.25).report
    assert r["instances"]["recall"] == 1.0 and r["instances"]["class_accuracy"] == 0.0
    assert r["instance_ap"]["iou_0.25"]["per_class"]["motor"] == 0.0
    # the same frames missed and falsely flagged
    missed = [_seen("a", [], [(20, 60, 20, 80, 1)]), _seen("c", [(0, 30, 0, 30, 0.9, 1)], [])]
    r = score(missed, rule, 0.8, CLASS_NAMES, 0.25).report
    assert r["frames"]["miss_rate"] == 1.0 and r["frames"]["false_alarm_rate"] == 1.0
    assert r["instances"]["recall"] == 0.0 and r["instances"]["precision"] == 0.0


def test_each_missed_instance_is_given_the_first_cause_that_holds():
    seen = [
        _seen("dark", [], [(20, 60, 20, 60, 1)]),
        _seen("speck", [(20, 22, 20, 22, 0.9, 3)], [(20, 40, 20, 40, 3)]),
        _seen("blob", [(20, 100, 20, 100, 0.9, 2)], [(50, 60, 50, 60, 2)]),
        _seen("faint", [(20, 60, 20, 60, 0.6, 1)], [(20, 60, 20, 60, 1)]),
        # one region over two true motors side by side: it finds one, the other is taken
        _seen("pair", [(20, 60, 20, 100, 0.9, 1)], [(20, 60, 20, 60, 1), (20, 60, 60, 100, 1)]),
        _seen("edge", [(20, 60, 260, 300, 0.9, 1)], [(20, 60, 260, 300, 1)]),
        _seen("found", [(20, 60, 20, 60, 0.9, 1)], [(20, 60, 20, 60, 1)]),
    ]
    seen[5].bed.mask[:, 250:] = False  # the bed the service cropped ends before it
    rule = InstanceRule(0.5, 10, 0.5, min_score=0.8)
    missed = score(seen, rule, 0.95, CLASS_NAMES, 0.25).report["instances"]["missed"]
    assert {c: v["total"] for c, v in missed.items()} == {
        "outside_bed": 1,
        "not_lit": 1,
        "dropped_by_size": 1,
        "poor_fit": 1,
        "below_min_score": 1,
        "taken": 1,
    }
    assert missed["not_lit"]["motor"] == 1 and missed["dropped_by_size"]["spray_can"] == 1
    assert missed["poor_fit"]["cable"] == 1 and missed["taken"]["motor"] == 1

    # on a map of one cell per 4 x 4 pixels, a 2 x 2 px instance that holds no cell's
    # centre is judged on the cell it lies in
    coarse = _seen("coarse", [], [(40, 42, 40, 42, 3)])
    anomaly = np.zeros((H // 4, W // 4), np.float32)
    classes = np.zeros((4, H // 4, W // 4), np.float32)
    classes[0] = 1.0
    anomaly[10, 10], classes[:, 10, 10] = 0.9, (0.1, 0.0, 0.0, 0.9)
    bed = np.ones((H // 4, W // 4), bool)
    coarse.merged = Merged(anomaly, classes, bed, 4)
    coarse.truth_cells = coarse.truth_cells[2::4, 2::4]  # no centre in the instance
    larger = InstanceRule(0.5, 20, 0.5, min_score=0.8)
    missed = score([coarse], larger, 0.95, CLASS_NAMES, 0.25).report["instances"]["missed"]
    assert missed["dropped_by_size"]["spray_can"] == 1  # lit; its one-cell region is 16 px


def test_calibration_cuts_what_the_data_says_is_false():
    # true motors, each with a tiny bright speck beside it
    seen = [
        _seen(
            f"t{k}",
            [(20, 80, 20, 80, 0.9, 1), (150, 156, 200, 206, 0.95, 1)],
            [(20, 80, 20, 80, 1)],
        )
        for k in range(4)
    ]
    # clean frames with a large, weaker region the model calls cable
    seen += [_seen(f"c{k}", [(60, 140, 100, 200, 0.6, 2)], []) for k in range(4)]
    base = InstanceRule(0.5, 0, 0.5)
    before = score(seen, base, 0.8, CLASS_NAMES, 0.25).report
    assert before["instances"]["precision"] < 0.5 and before["frames"]["false_alarm_rate"] == 1.0
    rule, reject, details = calibrate(seen, base, CLASS_NAMES, 0.25, 0.05, log=lambda _: None)
    # cable: the false regions under the cable threshold or the minimum score
    assert rule.class_thresholds[1] > 0.6 or rule.min_score > 0.6
    assert rule.class_thresholds[0] < 0.9  # motor: below the true ones
    assert 36 < rule.min_area <= 3600  # above the 6 x 6 specks, below every true motor
    after = score(seen, rule, reject, CLASS_NAMES, 0.25).report
    assert after["instances"]["recall"] == 1.0 and after["instances"]["precision"] == 1.0
    assert after["frames"]["accuracy"] == 1.0
    assert details["instance_f1_after"] == 1.0 > details["instance_f1_before"]
    assert details["true_area_percentiles"]["50"] == 3600
    # the drift reference: the frames' peaks are 0.95 (four) and 0.6 (four)
    peaks = details["frame_score_quantiles"]["anomaly"]
    assert peaks == {
        "0.1": pytest.approx(0.6),
        "0.5": pytest.approx(0.775),
        "0.9": pytest.approx(0.95),
    }
    assert set(details["frame_score_quantiles"]) == {"anomaly", "motor", "cable", "spray_can"}


def test_thresholds_and_area_are_judged_at_the_best_score_cut():
    # each truck: a large motor whose body reaches 0.88 and its core 0.95, a small motor
    # (8 x 8) at 0.95, and two false specks (10 x 10) at 0.89: larger than the small motor
    # and above the large one's body, so neither an area nor a pixel threshold removes them
    # without losing a true motor; the minimum score does
    def frame(name, dirty):
        regions = [(150, 160, 20, 30, 0.89, 1), (150, 160, 250, 260, 0.89, 1)]
        truth = []
        if dirty:
            regions += [(20, 80, 20, 80, 0.88, 1), (45, 55, 45, 55, 0.95, 1)]
            regions += [(100, 108, 150, 158, 0.95, 1)]
            truth = [(20, 80, 20, 80, 1), (100, 108, 150, 158, 1)]
        return _seen(name, regions, truth)

    seen = [frame(f"t{k}", True) for k in range(4)] + [frame(f"c{k}", False) for k in range(4)]
    base = InstanceRule(0.5, 0, 0.5)
    rule, reject, _ = calibrate(seen, base, CLASS_NAMES, 0.25, 0.05, log=lambda _: None)
    assert rule.class_thresholds[0] < 0.88  # the large motors' bodies stay on
    assert rule.min_area <= 64  # the small motors stay
    assert float(np.float32(0.89)) < rule.min_score <= float(np.float32(0.95))  # specks go
    after = score(seen, rule, reject, CLASS_NAMES, 0.25).report
    assert after["instances"]["recall"] == 1.0 and after["instances"]["precision"] == 1.0
    assert after["frames"]["accuracy"] == 1.0
    # F1 over the cuts of (score, true)
    assert _best_f1([(0.9, True), (0.8, True), (0.7, False), (0.6, False)], 2) == 1.0
    assert _best_f1([(0.9, True), (0.8, True), (0.7, False), (0.6, True)], 4) == 0.75  # all
    assert _best_f1([(0.9, True), (0.9, False)], 1) == pytest.approx(2 / 3)  # a tie is cut whole
    assert _best_f1([(0.9, False)], 2) == 0.0 and _best_f1([], 2) == 0.0


def test_frame_cuts_flag_at_most_the_target_share_of_clean_frames():
    scores = [0.9, 0.7, 0.7, 0.4, 0.0, 0.0]
    assert _lowest_above(scores, 0) > 0.9
    assert 0.7 < _lowest_above(scores, 1) < 0.70001  # 0.9 flagged, both 0.7 not
    assert 0.7 < _lowest_above(scores, 2) < 0.70001  # ties cannot be split
    assert 0.4 < _lowest_above(scores, 3) < 0.40001
    assert _lowest_above(scores, 4) == 0.0  # only frames without instances are left
    assert _lowest_above(scores, 10) == 0.0


def test_the_reject_score_starts_where_the_finds_are_mostly_right():
    found = [(0.99, True), (0.97, True), (0.95, False), (0.9, True), (0.8, False), (0.7, True)]
    assert _precise_from(found, 0.9) == 0.97  # 2 of 2; from 0.95 on, 2 of 3
    assert _precise_from(found, 0.75) == 0.9  # 3 of 4
    assert _precise_from([(0.9, True), (0.9, False)], 0.9) == 1.0  # a tie is cut whole
    assert _precise_from([(0.8, False)], 0.9) == 1.0 and _precise_from([], 0.9) == 1.0


def test_the_balanced_cut_weighs_misses_against_false_alarms():
    clean = [0.9] + [0.0] * 9
    # every contaminated frame has an instance: flagging them all costs one false alarm
    assert _most_balanced(clean, [0.95, 0.8, 0.7, 0.6]) == 0.0
    # above 0.7 two of four are flagged and no clean frame (J 0.5); every instance counted
    # flags all four and one clean (J 0.9); above 0.9, one (J 0.25)
    assert _most_balanced(clean, [0.95, 0.92, 0.7, 0.6]) == 0.0
    # contaminated frames all above the false region: the cut sits just above it
    assert 0.9 < _most_balanced(clean, [0.99, 0.97, 0.95]) < 0.90001
    # frames without instances are never flagged, whatever the cut
    assert _most_balanced([0.0] * 4, [0.0, 0.0, 0.5]) == 0.0


def test_the_frame_rules_differ_where_the_clean_frames_are_few():
    # four contaminated frames, each a motor of its own score; ten clean frames, one of
    # them with a false motor at 0.9
    seen = [
        _seen(f"t{k}", [(20, 80, 20, 80, p, 1)], [(20, 80, 20, 80, 1)])
        for k, p in enumerate((0.95, 0.85, 0.8, 0.75))
    ]
    seen += [_seen("c0", [(20, 80, 20, 80, 0.9, 1)], [])]
    seen += [_seen(f"c{k}", [], []) for k in range(1, 10)]
    base = InstanceRule(0.5, 0, 0.5)
    silent = {"log": lambda _: None}
    rule, reject, details = calibrate(seen, base, CLASS_NAMES, 0.25, 0.05, **silent)
    assert details["frame_rule"] == "balanced"
    # above the clean frame's false motor (0.9), and where the finds are right 90% of the
    # time: only the top one (0.95; with the false 0.9 two of the top three are right)
    assert rule.min_score == 0.0 and reject == pytest.approx(0.95, abs=1e-6)  # float32 maps
    report = score(seen, rule, reject, CLASS_NAMES, 0.25).report["frames"]
    assert report["miss_rate"] == 0.0 and report["false_alarm_rate"] == 0.1
    # INSPECT for the finds below the clean frames' highest, REJECT above it
    assert report["confusion"]["contaminated"] == {"clean": 0, "inspect": 3, "reject": 1}
    rule, reject, details = calibrate(
        seen, base, CLASS_NAMES, 0.25, 0.05, frame_rule="false-alarm", **silent
    )
    assert rule.min_score == pytest.approx(0.9, abs=1e-6)
    assert reject == pytest.approx(0.95, abs=1e-6)
    report = score(seen, rule, reject, CLASS_NAMES, 0.25).report["frames"]
    assert report["miss_rate"] == 0.75 and report["false_alarm_rate"] == 0.0
    with pytest.raises(ValueError, match="frame rule"):
        calibrate(seen, base, CLASS_NAMES, 0.25, 0.05, frame_rule="lenient", **silent)


@pytest.mark.slow
def test_the_cli_runs_the_service_pipeline_and_calibrates(synth_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["--bundle", str(DEMO), "--data", str(synth_dir), "--out", str(out), "--calibrate"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "instances: recall" in printed and "frames: accuracy" in printed
    report = json.loads((out / "report.json").read_text())
    labels = json.loads((synth_dir / "annotations.json").read_text())
    contaminants = [a for a in labels["annotations"] if a["category_id"] in range(1, 4)]
    assert report["instances"]["true"] == len(contaminants)
    # every true instance is found or missed for one cause
    missed = sum(v["total"] for v in report["instances"]["missed"].values())
    assert missed == report["instances"]["true"] - report["instances"]["found"]
    assert ("missed: " in printed) == (missed > 0)
    assert len(report["per_frame"]) == 8 and report["bed_strategies"] == ["learned"]
    assert report["bed_iou"]["min"] > 0.8  # the learned bed finds the labelled one
    assert (out / "roc.png").stat().st_size > 0 and (out / "pr.png").stat().st_size > 0
    for name in report["worst_frames"]["false_alarms"] + report["worst_frames"]["misses"]:
        assert (out / name).stat().st_size > 0
    # what matched nothing, for the region encoder to learn as plain scrap, and only that
    false = json.loads((out / "false_regions.json").read_text())["frames"]
    assert set(false) <= {i["file_name"] for i in labels["images"]}
    frames = load_frames(synth_dir)
    negatives = negative_regions(out / "false_regions.json", frames)
    assert len(negatives) == sum(len(v) for v in false.values())
    least = report["thresholds"]["min_score"]
    served_false = report["instances"]["served"] - report["instances"]["found"]
    high = [r["score"] for v in false.values() for r in v if r["score"] >= least]
    assert len(high) == served_false
    # what found a true instance, as its true class, for the region encoder to learn
    finds = json.loads((out / "found_regions.json").read_text())["frames"]
    served_found = [r for v in finds.values() for r in v if r["score"] >= least]
    assert len(served_found) == report["instances"]["found"]
    assert {r["class"] for v in finds.values() for r in v} <= set(CLASS_NAMES[1:])
    assert len(found_regions(out / "found_regions.json", frames)) == sum(map(len, finds.values()))
    # the demo bundle's region encoder described every served instance
    said = report["descriptions"]
    assert said["found"] == report["instances"]["found"] and said["false"] == served_false
    assert "descriptions: class right" in printed
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert thresholds == {**thresholds, **report["thresholds"]}  # the report is under them
    assert len(thresholds["classes"]) == 3 and thresholds["bundle"]["name"] == "demo"
    refine = read_manifest(DEMO).postprocess.refine  # the maps they were chosen on
    assert thresholds["bundle"]["refine"] == (None if refine is None else refine.model_dump())
    assert thresholds["bundle"]["flips"] == list(read_manifest(DEMO).postprocess.flips)

    # the report's verdicts are what the service answers for the same frames
    async def served():
        pipeline = await open_pipeline(Settings(bundle=DEMO))
        try:
            rows = []
            for row in report["per_frame"][:3]:
                data = (synth_dir / "images" / f"{row['frame']}.jpg").read_bytes()
                rows.append((await pipeline.process(data, "any")).result)
            return rows
        finally:
            await pipeline.stop()

    plain = tmp_path / "plain"
    assert main(["--bundle", str(DEMO), "--data", str(synth_dir), "--out", str(plain)]) == 0
    rows = json.loads((plain / "report.json").read_text())["per_frame"]
    for row, result in zip(rows, asyncio.run(served()), strict=False):
        assert row["verdict"] == result.verdict
        assert row["served_instances"] == len(result.instances)


def test_bad_inputs_are_named_and_nothing_is_written(synth_dir, tmp_path, capsys):
    out = tmp_path / "r"
    images_only = tmp_path / "unlabelled"
    shutil.copytree(synth_dir / "images", images_only / "images")
    assert main(["--bundle", str(DEMO), "--data", str(images_only), "--out", str(out)]) == 1
    assert str(images_only) in capsys.readouterr().err and not out.exists()

    assert main(["--bundle", str(DEMO), "--data", str(tmp_path / "nope"), "--out", str(out)]) == 1
    assert "nope" in capsys.readouterr().err and not out.exists()

    binary = tmp_path / "binary"
    shutil.copytree(DEMO, binary)
    manifest = json.loads((binary / "manifest.json").read_text())
    manifest["classes"] = ["normal", "anomaly"]
    manifest["postprocess"]["class_thresholds"] = None
    manifest["region"] = None  # its descriptions name the three classes
    (binary / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--bundle", str(binary), "--data", str(synth_dir), "--out", str(out)]) == 1
    assert "differ from the data's" in capsys.readouterr().err and not out.exists()

    broken = tmp_path / "broken"
    shutil.copytree(synth_dir, broken)
    bad = sorted((broken / "images").iterdir())[2]
    bad.write_bytes(b"not a jpeg")
    assert main(["--bundle", str(DEMO), "--data", str(broken), "--out", str(out)]) == 1
    assert bad.name in capsys.readouterr().err and not out.exists()

    out.mkdir()
    assert main(["--bundle", str(DEMO), "--data", str(synth_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            ["--bundle", str(DEMO), "--data", str(synth_dir), "--out", str(out), "--match-iou", "0"]
        )


def test_a_frame_labelled_by_its_mask_alone_has_one_instance_per_region(synth_dir, tmp_path):
    folder = tmp_path / "folders"
    shutil.copytree(synth_dir / "images", folder / "images")
    shutil.copytree(synth_dir / "masks", folder / "masks")
    frames = load_frames(folder)
    assert frames.layout != "coco"
    for record in frames.frames:
        mask = record.load_mask()
        truth = truth_of(record)
        drawn = np.zeros_like(mask)
        for k, rle in zip(truth.classes, truth.rles, strict=True):
            region = mask_utils.decode(rle).astype(bool)
            assert (mask[region] == k).all() and not drawn[region].any()
            drawn[region] = k
        assert np.array_equal(drawn, np.where(mask < 4, mask, 0))


def test_the_verification_margin_keeps_recall_and_raises_precision():
    from tools.served_eval import FrameOutcome, count
    from tools.verifier_eval import Checked, choose_margin, verified

    def inst(score):
        return Instance("motor", score, {"motor": 1.0}, (0, 0, 4, 4), 16, [(0, 0), (4, 0), (4, 4)])

    seen = [
        Seen(None, "t", None, None, Truth([1, 1], [None, None], [16, 16]), None, 1, {}),
        Seen(None, "u", None, None, Truth([1], [None], [16]), None, 1, {}),
    ]
    # frame 1: two true finds (verified 0.3, 0.1) and a false one (-0.2); frame 2: a true
    # find (0.05) and two false ones (0.0, -0.4); one candidate under the minimum score
    outcomes = [
        FrameOutcome([inst(0.9), inst(0.8), inst(0.7)], [None] * 3, [0, 1, None]),
        FrameOutcome(
            [inst(0.9), inst(0.85), inst(0.6), inst(0.1)], [None] * 4, [0, None, None, None]
        ),
    ]
    checks = [[0.3, 0.1, -0.2], [0.05, 0.0, -0.4, None]]
    classes = ("normal", "motor", "cable", "spray_can")
    base = count(seen, outcomes, classes, 0.5).figures()
    assert (base["recall"], base["precision"]) == (1.0, 0.5)
    # 0.0 keeps every true find and one false one; 0.05 only the true ones; 0.1 loses a
    # third of the recall, more than the 0.05 allowed
    kept = count(seen, verified(outcomes, checks, 0.0), classes, 0.5).figures()
    assert (kept["recall"], kept["precision"]) == (1.0, 0.75)
    assert Checked(seen, outcomes, checks, classes, 0.5).instances(0.0) == kept
    assert choose_margin(Checked(seen, outcomes, checks, classes, 0.5)) == 0.05
    # a stricter minimum score alone keeps every true find up to 0.8, at precision 0.75
    stricter = Checked(seen, outcomes, checks, classes, 0.5).score_at_recall(1.0)
    assert stricter is not None
    assert (stricter["min_score"], stricter["recall"], stricter["precision"]) == (0.8, 1.0, 0.75)
    never = [[-1, -1, -1], [-1, -1, -1, None]]
    assert choose_margin(Checked(seen, outcomes, never, classes, 0.5)) is None


def test_descriptions_of_served_instances_are_judged_against_the_truth():
    from service.region import Described
    from tools.served_eval import FrameOutcome
    from tools.verifier_eval import description_figures, verifications

    def inst(name):
        return Instance(name, 0.9, {name: 1.0}, (0, 0, 4, 4), 16, [(0, 0), (4, 0), (4, 4)])

    def said(name, v=0.1):
        return Described(f"a {name}", name, v, None)

    classes = ("normal", "motor", "cable", "spray_can")
    # frame 1: a motor and a cable found, a false region; frame 2: a spray can found
    seen = [
        Seen(None, "t", None, None, Truth([1, 2], [None, None], [16, 16]), None, 1, {}),
        Seen(None, "u", None, None, Truth([3], [None], [16]), None, 1, {}),
    ]
    outcomes = [
        FrameOutcome([inst("motor"), inst("cable"), inst("motor")], [None] * 3, [0, 1, None]),
        FrameOutcome([inst("spray_can"), inst("cable")], [None] * 2, [0, None]),
    ]
    # the motor described right, the cable called plain scrap, the false region plain
    # scrap; the spray can called a motor; the last candidate was under the minimum score
    descriptions = [
        [said("motor", 0.3), said("normal", -0.2), said("normal", -0.1)],
        [said("motor"), None],
    ]
    figures = description_figures(seen, outcomes, descriptions, classes)
    assert figures["found"] == 3 and figures["false"] == 1
    assert figures["class_right"] == pytest.approx(1 / 3)
    assert figures["said_plain_scrap"] == pytest.approx(1 / 3)
    assert figures["false_said_plain_scrap"] == 1.0
    assert figures["per_class"]["cable"] == {
        "found": 1,
        "class_right": 0.0,
        "said_plain_scrap": 1.0,
    }
    assert figures["per_class"]["spray_can"]["class_right"] == 0.0
    assert verifications(descriptions) == [[0.3, -0.2, -0.1], [0.1, None]]
    # nothing served: no share to give
    none = description_figures(seen, outcomes, [[None] * 3, [None] * 2], classes)
    assert none["found"] == 0 and none["class_right"] is None
