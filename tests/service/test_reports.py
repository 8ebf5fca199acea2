import csv
import io

from service.reports import report_csv, truck_report, trucks_csv
from service.store import FrameRecord


def frame(fid, instances, status="done", t=0.0, captured=None):
    return FrameRecord(
        fid,
        "cam",
        "T1",
        captured,
        1795400000.0 + t,
        status,
        None,
        {"instances": instances} if status == "done" else None,
        None,
    )


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
    r = truck_report("T1", frames, reject_score=0.8)
    assert r["verdict"] == "inspect" and r["frames"] == 3
    assert (r["frames_failed"], r["frames_pending"]) == (1, 1)
    motor = r["classes"]["motor"]
    assert motor == {"highest_score": 0.7, "frames": 2, "instances": 2, "area_px": 1800}
    assert (
        r["classes"]["cable"]["frames"] == 1 and r["classes"]["spray_can"]["highest_score"] is None
    )
    assert [e["frame_id"] for e in r["evidence"]] == ["b", "a"]
    assert r["evidence"][0]["overlay"] == "/v1/frames/b/overlay.jpg"
    assert r["first_seen"] < r["last_seen"]


def test_verdicts():
    assert truck_report("T", [frame("a", [])], 0.8)["verdict"] == "clean"
    assert truck_report("T", [frame("a", [inst("cable", 0.85, 10)])], 0.8)["verdict"] == "reject"
    assert truck_report("T", [frame("a", [inst("cable", 0.79, 10)])], 0.8)["verdict"] == "inspect"


def test_csv_has_a_row_per_class_and_per_truck():
    r = truck_report(
        "T1", [frame("a", [inst("motor", 0.6, 1000)], captured="2026-11-24T06:00:00Z")], 0.8
    )
    rows = list(csv.DictReader(io.StringIO(report_csv(r))))
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
