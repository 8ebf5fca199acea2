"""Operators' feedback: the rules of what may be said, and the routes through real HTTP."""

import re

import httpx
import pytest

from service.errors import Conflict, InvalidInput
from service.feedback import FrameFeedbackIn, frame_feedback
from training.synth import render_frame

from .conftest import frame_result, summary
from .test_api import assert_error, corrupt_png, jpeg, post

CLASSES = ("motor", "cable", "spray_can")
RESULT = frame_result([{"class": "motor", "score": 0.9, "area": 100}])  # a 64x48 frame


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ({"label": "confirmed"}, "invalid_feedback"),  # which instance?
        ({"label": "confirmed", "instance": 1}, "invalid_instance"),  # it has one
        ({"label": "false_alarm", "instance": 0, "box": (0, 0, 4, 4)}, "invalid_feedback"),
        ({"label": "other_class", "instance": 0}, "invalid_feedback"),  # which class?
        ({"label": "other_class", "instance": 0, "class_name": "motor"}, "invalid_class"),
        ({"label": "other_class", "instance": 0, "class_name": "tyre"}, "invalid_class"),
        ({"label": "confirmed", "instance": 0, "class_name": "cable"}, "invalid_feedback"),
        ({"label": "missed"}, "invalid_feedback"),  # where?
        ({"label": "missed", "instance": 0, "box": (0, 0, 4, 4)}, "invalid_feedback"),
        ({"label": "missed", "box": (60, 0, 5, 4)}, "invalid_box"),  # past the right edge
        ({"label": "missed", "box": (0, 0, 0, 4)}, "invalid_box"),  # empty
        ({"label": "missed", "box": (-1, 0, 4, 4)}, "invalid_box"),
    ],
)
def test_feedback_that_does_not_fit_the_frame_is_refused(given, code):
    with pytest.raises(InvalidInput) as err:
        frame_feedback(FrameFeedbackIn(**given), "f" * 32, RESULT, CLASSES, "operator")
    assert err.value.code == code and err.value.message


def test_only_a_done_frame_with_its_result_can_be_judged():
    given = FrameFeedbackIn(label="missed", box=(0, 0, 4, 4))
    for result in (None, summary([], "clean")):
        with pytest.raises(Conflict, match="result is still kept"):
            frame_feedback(given, "f" * 32, result, CLASSES, "operator")
    item = frame_feedback(given, "f" * 32, RESULT, CLASSES, "operator")
    assert (item.frame_id, item.by, item.label, item.box) == (
        "f" * 32,
        "operator",
        "missed",
        (0, 0, 4, 4),
    )


@pytest.fixture(scope="module")
def judged(loose_server):
    """A done frame of truck TRK-FB with instances, on the loose thresholds."""
    frame = render_frame(33, 0, 1280, 720)
    r = post(loose_server, jpeg(frame.image), {"truck_id": "TRK-FB"}, wait=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"]["instances"], "the loose bundle found nothing to judge"
    return body


def counter(srv, name, **labels):
    text = httpx.get(f"{srv.url}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{want}\}} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_an_instance_judged_through_http_is_stored_listed_and_counted(loose_server, judged):
    url = f"{loose_server.url}/v1/frames/{judged['frame_id']}/feedback"
    first = judged["result"]["instances"][0]
    before = counter(
        loose_server, "scrapscan_feedback_total", label="false_alarm", **{"class": first["class"]}
    )
    r = httpx.post(url, json={"label": "false_alarm", "instance": 0, "comment": "a plate edge"})
    assert r.status_code == 201, r.text
    item = r.json()
    assert (item["label"], item["instance"], item["by"]) == ("false_alarm", 0, "anonymous")
    other = next(c for c in ("motor", "cable", "spray_can") if c != first["class"])
    r = httpx.post(url, json={"label": "other_class", "instance": 0, "class": other})
    assert r.status_code == 201 and r.json()["class"] == other
    r = httpx.post(url, json={"label": "missed", "box": [10, 10, 50, 40], "class": "cable"})
    assert r.status_code == 201
    listed = httpx.get(url).json()
    assert [i["label"] for i in listed] == ["false_alarm", "other_class", "missed"]
    assert listed[0] == item
    after = counter(
        loose_server, "scrapscan_feedback_total", label="false_alarm", **{"class": first["class"]}
    )
    assert after == before + 1
    assert (
        counter(loose_server, "scrapscan_feedback_total", label="missed", **{"class": "cable"}) >= 1
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"label": "confirmed", "instance": 999}, "invalid_instance"),
        ({"label": "missed", "box": [0, 0, 99999, 10]}, "invalid_box"),
        ({"label": "praised", "instance": 0}, "invalid_request"),
        ({"label": "confirmed", "instance": 0, "comment": "x" * 501}, "invalid_request"),
        ({"label": "confirmed", "instance": 0, "extra": 1}, "invalid_request"),
    ],
)
def test_bad_feedback_is_a_400_and_stores_nothing(loose_server, judged, body, code):
    url = f"{loose_server.url}/v1/frames/{judged['frame_id']}/feedback"
    before = httpx.get(url).json()
    assert_error(httpx.post(url, json=body), 400, code)
    assert httpx.get(url).json() == before


def test_feedback_on_frames_that_cannot_take_it(loose_server):
    url = loose_server.url
    missed = {"label": "missed", "box": [0, 0, 4, 4]}
    assert_error(
        httpx.post(f"{url}/v1/frames/{'0' * 32}/feedback", json=missed), 404, "frame_not_found"
    )
    assert_error(httpx.post(f"{url}/v1/frames/nope/feedback", json=missed), 400, "invalid_frame_id")
    broken = post(loose_server, corrupt_png(), name="f.png", ctype="image/png", wait=True).json()
    assert broken["status"] == "failed"
    r = httpx.post(f"{url}/v1/frames/{broken['frame_id']}/feedback", json=missed)
    assert_error(r, 409, "frame_not_judgeable")


def test_a_truck_decision_is_recorded_and_listed(loose_server, judged):
    url = f"{loose_server.url}/v1/trucks/TRK-FB/decisions"
    r = httpx.post(url, json={"decision": "manual_inspection", "comment": "cable ends seen"})
    assert r.status_code == 201, r.text
    assert (r.json()["decision"], r.json()["truck_id"]) == ("manual_inspection", "TRK-FB")
    assert httpx.post(url, json={"decision": "rejected"}).status_code == 201
    assert [d["decision"] for d in httpx.get(url).json()] == ["manual_inspection", "rejected"]
    assert counter(loose_server, "scrapscan_truck_decisions_total", decision="rejected") >= 1
    assert_error(httpx.post(url, json={"decision": "burned"}), 400, "invalid_request")
    unknown = f"{loose_server.url}/v1/trucks/TRK-NONE/decisions"
    assert_error(httpx.post(unknown, json={"decision": "accepted"}), 404, "truck_not_found")
    assert_error(httpx.get(unknown), 404, "truck_not_found")
