import csv
import io

from service import reports
from service.reports import report_csv, trucks_csv
from service.store import FrameRecord

from .conftest import frame_result, summary


def frame(fid, instances, status="done", t=0.0, captured=None, verdict=None):
    if verdict is None:  # what a frame of reject score 0.8 says
        top = max((i["score"] for i in instances), default=None)
        verdict = "clean" if top is None else "reject" if top >= 0.8 else "inspect"
    return FrameRecord(
        fid,
        "cam",
        "T1",
        captured,
        1795400000.0 + t,
        status,
        None,
        summary(instances, verdict) if status == "done" else None,
        None,
    )


def truck_report(truck_id, frames):
    """The report as its JSON has it."""
    return reports.truck_report(truck_id, frames).model_dump(mode="json")


def inst(cls, score, area):
    return {"class": cls, "score": score, "area": area}


def test_a_truck_report_aggregates_its_frames():
    frames = [
        frame("a", [inst("motor", 0.6, 1000), inst("motor", 0.5, 800)], t=1),
        frame("b", [inst("motor", 0.7, 1200), inst("cable", 0.4, 300)], t=2),
        frame("c", [], t=3),
        frame("d", [], status="failed", t=4),
        frame("e", [], status="queued", t=5),
    ]
    r = truck_report("T1", frames)
    assert r["verdict"] == "inspect" and r["frames"] == 3
    assert (r["frames_failed"], r["frames_pending"]) == (1, 1)
    motor = r["classes"]["motor"]
    assert motor == {
        "highest_score": 0.7,
        "zero_shot": False,
        "frames": 2,
        "instances": 2,
        "area_px": 1800,
    }
    assert (
        r["classes"]["cable"]["frames"] == 1 and r["classes"]["spray_can"]["highest_score"] is None
    )
    assert [e["frame_id"] for e in r["evidence"]] == ["b", "a"]
    assert r["evidence"][0]["overlay"] == "/v1/frames/b/overlay.jpg"
    assert r["first_seen"] < r["last_seen"]


def test_a_truck_takes_the_gravest_verdict_of_its_frames():
    assert truck_report("T", [frame("a", [])])["verdict"] == "clean"
    assert truck_report("T", [frame("a", [inst("cable", 0.85, 10)])])["verdict"] == "reject"
    assert truck_report("T", [frame("a", [inst("cable", 0.79, 10)])])["verdict"] == "inspect"
    mixed = [
        frame("a", [inst("cable", 0.9, 10)], verdict="inspect"),  # made by another model
        frame("b", []),
        frame("c", [inst("motor", 0.3, 10)], verdict="reject"),
    ]
    assert truck_report("T", mixed)["verdict"] == "reject"
    assert truck_report("T", mixed[:2])["verdict"] == "inspect"
    failed_only = [frame("a", [], status="failed")]
    assert truck_report("T", failed_only)["verdict"] == "clean"


def test_csv_has_a_row_per_class_and_per_truck():
    r = reports.truck_report(
        "T1", [frame("a", [inst("motor", 0.6, 1000)], captured="2026-11-24T06:00:00Z")]
    )
    rows = list(csv.DictReader(io.StringIO(report_csv(r))))
    header = "truck_id,verdict,frames,first_seen,last_seen,class,highest_score,"
    assert report_csv(r).splitlines()[0] == header + "frames_with_class,instances,area_px"
    assert [row["class"] for row in rows] == ["motor", "cable", "spray_can"]
    assert rows[0]["highest_score"] == "0.6" and rows[1]["highest_score"] == ""
    listing = list(csv.DictReader(io.StringIO(trucks_csv([r]))))
    assert listing == [
        {
            "truck_id": "T1",
            "verdict": "inspect",
            "frames": "1",
            "first_seen": "2026-11-24T06:00:00Z",
            "last_seen": "2026-11-24T06:00:00Z",
            "top_class": "motor",
            "top_score": "0.6",
        }
    ]


def test_a_frame_is_rejected_from_the_reject_score_on():
    from service.result import frame_verdict, gravest

    assert frame_verdict([], 0.8) == "clean"
    assert frame_verdict([0.3, 0.7999], 0.8) == "inspect"
    assert frame_verdict([0.3, 0.8], 0.8) == "reject"
    assert gravest([]) == "clean" and gravest(["inspect", "clean"]) == "inspect"
    assert gravest(["clean", "reject", "inspect"]) == "reject"


def test_the_unverified_instances_a_result_drops_count_nowhere():
    said = [
        {"class": "motor", "score": 0.95, "area": 900, "verified": False, "description": "a plate"},
        {"class": "cable", "score": 0.6, "area": 50, "verified": True, "description": "a cable"},
    ]
    kept = frame_result(said)
    dropped = kept.model_copy(
        update={"thresholds": kept.thresholds.model_copy(update={"drop_unverified": True})}
    )
    assert [i.class_name for i in kept.counted()] == ["motor", "cable"]
    assert [i.class_name for i in dropped.counted()] == ["cable"]
    assert [i.class_name for i in dropped.summary().instances] == ["cable"]  # what expires to

    def record(result):
        return FrameRecord("a", "cam", "T1", None, 1795400000.0, "done", None, result, None)

    r = truck_report("T1", [record(dropped)])
    assert r["classes"]["motor"]["highest_score"] is None
    assert r["classes"]["cable"] == {
        "highest_score": 0.6,
        "zero_shot": False,
        "frames": 1,
        "instances": 1,
        "area_px": 50,
    }
    assert [(e["class"], e["description"]) for e in r["evidence"]] == [("cable", "a cable")]
    r = truck_report("T1", [record(kept)])
    assert [(e["class"], e["description"]) for e in r["evidence"]] == [("motor", "a plate")]
    # once the result has expired, the summary kept says no more than what counted
    r = truck_report("T1", [record(dropped.summary())])
    assert r["classes"]["motor"]["frames"] == 0 and r["evidence"][0]["description"] is None


def test_a_class_defined_by_text_gets_its_own_figures_marked_zero_shot():
    gas = {**inst("gas_cylinder", 0.9, 400), "zero_shot": True}
    frames = [frame("a", [gas, inst("motor", 0.5, 100)], t=1), frame("b", [gas], t=2)]
    r = truck_report("T1", frames)
    assert r["verdict"] == "reject"
    assert r["classes"]["gas_cylinder"] == {
        "highest_score": 0.9,
        "zero_shot": True,
        "frames": 2,
        "instances": 1,
        "area_px": 400,
    }
    assert r["classes"]["motor"]["zero_shot"] is False
    assert list(r["classes"])[:3] == ["motor", "cable", "spray_can"]
    assert r["evidence"][0]["class"] == "gas_cylinder"
    rows = list(csv.DictReader(io.StringIO(report_csv(reports.truck_report("T1", frames)))))
    assert "gas_cylinder" in {row.get("class") for row in rows}
