"""The OpenAPI document is the contract: Schemathesis makes requests from it, valid and
invalid, against a live service with API keys, and checks each answer against it (status
codes, content types, bodies, headers, that invalid input is refused and valid input is
taken). Examples are bounded; the long poll and the event stream have their own limits."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from .conftest import KEYS, Server

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}
STREAM = "/v1/results/stream"
QUICK = settings(
    max_examples=20,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as found, not shrunk
    derandomize=True,  # the same requests on every run: a failure can be run again
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def api_schema(keyed: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{keyed.url}/openapi.json")


OPERATIONS = [
    ("POST", "/v1/frames"),
    ("GET", "/v1/frames/{frame_id}"),
    ("GET", "/v1/frames/{frame_id}/mask.png"),
    ("GET", "/v1/frames/{frame_id}/overlay.jpg"),
    ("GET", "/v1/frames/{frame_id}/heatmap.png"),
    ("POST", "/v1/frames/{frame_id}/feedback"),
    ("GET", "/v1/frames/{frame_id}/feedback"),
    ("POST", "/v1/trucks/{truck_id}/decisions"),
    ("GET", "/v1/trucks/{truck_id}/decisions"),
    ("GET", "/v1/results"),
    ("GET", STREAM),
    ("GET", "/v1/trucks/{truck_id}/report"),
    ("GET", "/v1/trucks"),
    ("GET", "/v1/config"),
    ("GET", "/v1/status"),
    ("GET", "/v1/feedback/export"),
    ("GET", "/v1/admin/bundles"),  # 404 no_repository on this service, as documented
    ("POST", "/v1/admin/bundles/active"),
    ("POST", "/v1/admin/bundles/rollback"),
    ("GET", "/v1/admin/bundles/shadow"),
    ("PUT", "/v1/admin/bundles/shadow"),
    ("DELETE", "/v1/admin/bundles/shadow"),
    ("GET", "/v1/admin/bundles/shadow/frames"),
    ("POST", "/v1/frames/{frame_id}/describe"),
    ("GET", "/v1/admin/settings"),
    ("PUT", "/v1/admin/settings"),
    ("GET", "/v1/admin/settings/log"),
    ("GET", "/v1/classes"),
    ("POST", "/v1/classes"),
    ("DELETE", "/v1/classes/{name}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
BOUNDED = [op for op in OPERATIONS if op[1] != STREAM]


def run(
    api_schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    mode: GenerationMode,
    check: Callable[[schemathesis.Case], None],
    examples: int,
) -> None:
    """`check` on the requests Schemathesis makes for one operation."""
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(mode))
    @settings(QUICK, max_examples=examples)
    def each(case: schemathesis.Case) -> None:
        check(case)

    each()


def bounded(case: schemathesis.Case) -> None:
    """A long poll waits at most half a second here (the document allows 60)."""
    if case.path == "/v1/results" and isinstance(case.query, dict):
        wait = case.query.get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 60:
            case.query["wait"] = min(wait, 0.5)


def test_the_list_holds_every_operation_of_the_document(api_schema):
    documented = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        (method, path, mode)
        for method, path in BOUNDED
        for mode in GenerationMode
        # a route without parameters has no invalid request to make
        if mode is GenerationMode.POSITIVE or path not in ("/healthz", "/readyz", "/metrics")
    ],
)
def test_every_answer_with_a_key_is_what_the_document_says(api_schema, method, path, mode):
    # any bytes are a "binary" image to the document, but only JPEG and PNG decode: a
    # well-formed upload of other bytes is refused (400 not_an_image), as documented
    excluded = [positive_data_acceptance] if path == "/v1/frames" else []
    if path == "/v1/feedback/export":
        # its parameters are two optional free times: the only invalid requests that
        # Schemathesis makes of it add unknown query parameters, which every route ignores
        excluded = [negative_data_rejection]
    if path == "/v1/admin/settings" and method == "PUT":
        # a camera's bed "polygon" needs its polygon: a rule between two fields that the
        # document states in words, which Schemathesis does not read; and the "invalid"
        # bodies it makes of this all-optional body are null where null is allowed (or
        # lack the key, which this test puts back). tests/service/test_live.py sends the
        # invalid bodies, each refused naming its field
        excluded = [positive_data_acceptance, negative_data_rejection]
    if path == "/v1/classes" and method == "POST":
        # a valid definition is refused by the state of the service, as documented: a name
        # taken (409 class_exists), the limit reached (409 too_many_classes), or prompts of
        # more tokens than the text tower reads (400 prompt_too_long), rules the document
        # states in words; tests/service/test_live.py sends each
        excluded = [positive_data_acceptance]
    if path == "/v1/admin/settings/log":
        # its one parameter is an integer: a "string" Schemathesis makes of it may be
        # digits, which a query string carries as text whatever the type
        excluded = [negative_data_rejection]

    def check(case: schemathesis.Case) -> None:
        bounded(case)
        case.call_and_validate(headers=ADMIN, excluded_checks=excluded, timeout=30)

    run(api_schema, method, path, mode, check, 20)


@pytest.mark.parametrize(("method", "path"), BOUNDED)
def test_without_a_key_every_guarded_route_answers_401(api_schema, method, path):
    guarded = bool(api_schema[path][method].definition.raw.get("security"))

    def check(case: schemathesis.Case) -> None:
        bounded(case)
        response = case.call(timeout=30)
        if guarded:
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == ["Bearer"]
        else:  # probes and metrics need no key
            assert response.status_code == 200, response.text

    run(api_schema, method, path, GenerationMode.POSITIVE, check, 5)


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_the_event_stream_starts_as_documented(api_schema, keyed, mode):
    """The stream never ends: its status and content type are checked, and a 400's body."""

    def check(case: schemathesis.Case) -> None:
        request = case.as_transport_kwargs(base_url=keyed.url, headers=ADMIN)
        with httpx.stream(
            request["method"],
            request["url"],
            params=request.get("params"),
            headers=request.get("headers"),
            timeout=30,
        ) as response:
            if response.status_code == 200:
                assert response.headers["content-type"].startswith("text/event-stream")
            elif response.status_code == 401:  # a negative case may spoil the key itself
                assert request["headers"].get("Authorization") != ADMIN["Authorization"]
            else:
                assert response.status_code == 400, response.status_code
                response.read()
                assert response.json()["error"]["code"] in ("invalid_request", "invalid_cursor")

    run(api_schema, "GET", STREAM, mode, check, 10)
