"""The browser API over a remote runtime mocked with ``responses``: one test per row of the error table
(docs/api.md).

Every test goes through the real stack (view -> service -> registry -> breaker -> handle -> client), checks the
browser status and error code, how many upstream calls were made, and that each one carried the Backend's
bearer token. The remote handle verifies the runtime's identity (GET /v1/runtime) before its first worker
command, so a worker route costs two upstream calls on a fresh registry.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import responses
import urllib3
from django.contrib.auth.models import Group, User
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient
from urllib3.connection import HTTPConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from runtimes.breaker import BASE_COOLDOWN, FAILURE_THRESHOLD
from runtimes.models import AuditEvent, Runtime
from tests.workers.remote_helpers import (
    ALL_WORKERS_URL,
    BASE_URL,
    COMMAND_ROUTES,
    HOST,
    PORT,
    RID,
    ROUTES,
    RUNTIME_URL,
    RUNTIMES_URL,
    TOKEN,
    WID,
    WORKER_ROUTES,
    Route,
    assert_upstream_calls,
    call,
    canned,
    error_of,
    make_remote_row,
    mock_route,
    mock_runtime,
    mock_summary,
    upstream,
)

pytestmark = pytest.mark.django_db

ALL_ROUTES = tuple(ROUTES)
MAX_BODY_BYTES = 8 * 1024 * 1024  # the client's default response cap


@pytest.fixture(autouse=True)
def _static_files_not_scanned(settings: SettingsWrapper) -> None:
    """WhiteNoise scans every static file for each new test client (0.1 s); these requests fetch none."""
    settings.WHITENOISE_USE_FINDERS = False


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with mock_runtime() as mock:
        yield mock


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The remote row ``rt-remote`` at the mocked address, its token in the environment."""
    return make_remote_row(monkeypatch)


def expect_error(
    response: Any, status: int, code: str, *, worker_id: str | None = None, runtime_id: str | None = RID
) -> dict[str, Any]:
    """Check an envelope response's status and code (and ids); return the error object."""
    assert response.status_code == status, response.content
    error = error_of(response)
    assert error["code"] == code
    if runtime_id is not None:
        assert error["runtime_id"] == runtime_id
    if worker_id is not None:
        assert error["worker_id"] == worker_id
    assert "WWW-Authenticate" not in response
    return error


def assert_audited(route: Route, outcome: str) -> None:
    """A command route wrote one AuditEvent with ``outcome``; a read route wrote none."""
    rows = list(AuditEvent.objects.values_list("action", "runtime_id", "outcome"))
    if route.name in COMMAND_ROUTES:
        assert rows == [(route.name, RID, outcome)]
    else:
        assert rows == []


# --------------------------------------------------------------------------------------------- transport failures


def _pool() -> urllib3.HTTPConnectionPool:
    return urllib3.HTTPConnectionPool(HOST, PORT)


def _conn() -> HTTPConnection:
    return HTTPConnection(HOST, PORT)


# Built the way requests/urllib3 build them, so their text names the host and port as the real ones do.
TransportFailure = Callable[[], Exception]
TRANSPORT_ROWS: list[Any] = [
    pytest.param(
        lambda: requests.exceptions.ConnectionError(
            MaxRetryError(
                _pool(),
                "/v1/workers",
                NewConnectionError(
                    _conn(), "Failed to establish a new connection: [Errno 111] Connection refused"
                ),
            )
        ),
        502,
        "runtime_unreachable",
        id="connection_refused",
    ),
    pytest.param(
        lambda: requests.exceptions.ConnectionError(
            MaxRetryError(
                _pool(),
                "/v1/workers",
                NameResolutionError(HOST, _conn(), socket.gaierror(-2, "Name or service not known")),
            )
        ),
        502,
        "runtime_unreachable",
        id="dns_failure",
    ),
    pytest.param(
        lambda: requests.exceptions.ConnectionError(
            ProtocolError("Connection aborted.", ConnectionResetError(104, f"reset by peer {BASE_URL}"))
        ),
        502,
        "runtime_unreachable",
        id="connection_reset",
    ),
    pytest.param(
        lambda: requests.exceptions.ChunkedEncodingError(
            ProtocolError(f"Connection broken: IncompleteRead from {BASE_URL}")
        ),
        502,
        "runtime_unreachable",
        id="reset_mid_body",
    ),
    pytest.param(
        lambda: requests.exceptions.ConnectTimeout(
            MaxRetryError(
                _pool(),
                "/v1/workers",
                ConnectTimeoutError(_conn(), f"Connection to {HOST} timed out. (timeout=0.5)"),
            )
        ),
        504,
        "runtime_timeout",
        id="connect_timeout",
    ),
    pytest.param(
        lambda: requests.exceptions.ReadTimeout(
            ReadTimeoutError(_pool(), "/v1/workers", "Read timed out. (read timeout=1.0)")
        ),
        504,
        "runtime_timeout",
        id="read_timeout",
    ),
]


@pytest.mark.parametrize("route_name", ALL_ROUTES)
@pytest.mark.parametrize(("failure", "status", "code"), TRANSPORT_ROWS)
def test_transport_failure_maps_to_unreachable_or_timeout(
    api_client: APIClient,
    remote: Runtime,
    rsps: responses.RequestsMock,
    failure: TransportFailure,
    status: int,
    code: str,
    route_name: str,
) -> None:
    route = ROUTES[route_name]
    mock_summary(rsps)
    mock_route(rsps, route, body=failure())
    error = expect_error(call(api_client, route), status, code)
    assert error["retryable"] is True
    assert_upstream_calls(rsps, 2)
    assert_audited(route, code)
    remote.refresh_from_db()
    assert (remote.status, remote.status_error_code) == ("offline", code)


@pytest.mark.parametrize(("failure", "status", "code"), TRANSPORT_ROWS)
def test_transport_failure_during_the_identity_check_sends_no_command(
    api_client: APIClient,
    remote: Runtime,
    rsps: responses.RequestsMock,
    failure: TransportFailure,
    status: int,
    code: str,
) -> None:
    route = ROUTES["input"]
    rsps.add("GET", upstream("/v1/runtime"), body=failure())
    mock_route(rsps, route)
    expect_error(call(api_client, route), status, code)
    assert_upstream_calls(rsps, 1)
    assert rsps.calls[0].request.url == upstream("/v1/runtime")


# --------------------------------------------------------------------------------------------- status rows


@pytest.mark.parametrize("route_name", ALL_ROUTES)
@pytest.mark.parametrize(("status", "fixture"), [(401, "error_unauthorized.json"), (403, "error_forbidden.json")])
def test_remote_401_403_maps_to_runtime_auth_failed_never_401(
    api_client: APIClient,
    remote: Runtime,
    rsps: responses.RequestsMock,
    status: int,
    fixture: str,
    route_name: str,
) -> None:
    route = ROUTES[route_name]
    mock_summary(rsps)
    mock_route(rsps, route, body=canned(fixture), status=status)
    error = expect_error(call(api_client, route), 502, "runtime_auth_failed")
    assert error["retryable"] is False
    assert_upstream_calls(rsps, 2)
    assert_audited(route, "runtime_auth_failed")
    remote.refresh_from_db()
    assert (remote.status, remote.status_error_code) == ("unauthorized", "runtime_auth_failed")


def test_remote_401_on_the_identity_check_is_runtime_auth_failed(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock
) -> None:
    rsps.add("GET", upstream("/v1/runtime"), body=canned("error_unauthorized.json"), status=401)
    mock_route(rsps, ROUTES["create"])
    expect_error(call(api_client, ROUTES["create"]), 502, "runtime_auth_failed")
    assert_upstream_calls(rsps, 1)


@pytest.mark.parametrize("route_name", WORKER_ROUTES)
def test_remote_404_worker_not_found_maps_to_worker_not_found(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock, route_name: str
) -> None:
    route = ROUTES[route_name]
    mock_summary(rsps)
    mock_route(rsps, route, body=canned("error_worker_not_found.json"), status=404)
    error = expect_error(call(api_client, route), 404, "worker_not_found", worker_id=WID)
    assert error["message"] == f"worker {WID} not found on runtime {RID}"
    assert_upstream_calls(rsps, 2)
    assert_audited(route, "worker_not_found")


@pytest.mark.parametrize("route_name", ALL_ROUTES)
@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(404, canned("error_route_not_found.json"), id="404_route_missing"),
        pytest.param(404, b"Not Found", id="404_without_error_body"),
        pytest.param(405, canned("error_method_not_allowed.json"), id="405"),
        pytest.param(501, canned("error_not_implemented.json"), id="501"),
    ],
)
def test_remote_missing_route_maps_to_runtime_unsupported(
    api_client: APIClient,
    remote: Runtime,
    rsps: responses.RequestsMock,
    status: int,
    body: bytes,
    route_name: str,
) -> None:
    route = ROUTES[route_name]
    mock_summary(rsps)
    mock_route(rsps, route, body=body, status=status)
    expect_error(call(api_client, route), 501, "runtime_unsupported")
    assert_upstream_calls(rsps, 2)
    assert_audited(route, "runtime_unsupported")


@pytest.mark.parametrize("route_name", ALL_ROUTES)
@pytest.mark.parametrize(
    ("status", "fixture", "upstream_code", "browser_status"),
    [
        pytest.param(400, "error_invalid_request.json", "invalid_request", 422, id="400"),
        pytest.param(409, "error_worker_not_running.json", "worker_not_running", 409, id="409"),
        pytest.param(422, "error_unprocessable.json", "unprocessable", 422, id="422"),
    ],
)
def test_remote_refusal_maps_to_runtime_rejected_with_upstream_code(
    api_client: APIClient,
    remote: Runtime,
    rsps: responses.RequestsMock,
    status: int,
    fixture: str,
    upstream_code: str,
    browser_status: int,
    route_name: str,
) -> None:
    route = ROUTES[route_name]
    mock_summary(rsps)
    mock_route(rsps, route, body=canned(fixture), status=status)
    error = expect_error(call(api_client, route), browser_status, "runtime_rejected")
    assert error["upstream_code"] == upstream_code
    assert "/etc/yoi" not in error["message"] and "://" not in error["message"]  # upstream detail is scrubbed
    assert_upstream_calls(rsps, 2)
    assert_audited(route, "runtime_rejected")


def test_rejection_detail_never_echoes_the_runtime_address_or_token(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock
) -> None:
    echoed = (
        f"failed at {BASE_URL}/v1/x (peer {HOST.upper()}:{PORT}, credential Bearer {TOKEN}) see /srv/yoi/a.json"
    )
    body = json.dumps({"error": {"code": "worker_not_running", "message": echoed}}).encode()
    mock_summary(rsps)
    mock_route(rsps, ROUTES["input"], body=body, status=409)
    error = expect_error(call(api_client, ROUTES["input"]), 409, "runtime_rejected")
    assert error["message"] == (
        f"runtime {RID} rejected the command: failed at <url> (peer <host>, credential Bearer <redacted>) "
        "see <path>"
    )


def _oversized(declared: bool) -> dict[str, Any]:
    body = json.dumps({"workers": [], "padding": "x" * MAX_BODY_BYTES}).encode()
    return {"body": body, "auto_length": declared}


BAD_ANSWERS: list[Any] = [
    pytest.param({"status": 500, "body": canned("error_internal.json")}, id="500"),
    pytest.param({"status": 502, "body": b"<html>Bad Gateway</html>", "content_type": "text/html"}, id="502_html"),
    pytest.param({"status": 503, "body": canned("error_unavailable.json")}, id="503"),
    pytest.param({"body": b"<html>hello</html>", "content_type": "text/html"}, id="non_json"),
    pytest.param({"body": b'["a", "json", "array"]'}, id="not_an_object"),
    pytest.param({"body": b'{"unexpected": {"worker_id": "w-0001"}}'}, id="wrong_shape"),
    pytest.param({"body": canned("worker_other_runtime.json")}, id="another_runtimes_worker"),
    pytest.param(_oversized(True), id="oversized_declared"),
    pytest.param(_oversized(False), id="oversized_streamed"),
    pytest.param(
        {"status": 302, "body": b"", "headers": {"Location": "http://elsewhere.invalid/v1/workers"}},
        id="redirect",
    ),
]


@pytest.mark.parametrize("route_name", ALL_ROUTES)
@pytest.mark.parametrize("answer", BAD_ANSWERS)
def test_remote_bad_answer_maps_to_runtime_bad_response(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock, answer: dict[str, Any], route_name: str
) -> None:
    route = ROUTES[route_name]
    mock_summary(rsps)
    mock_route(rsps, route, **answer)
    error = expect_error(call(api_client, route), 502, "runtime_bad_response")
    assert error["message"] == f"runtime {RID} sent an invalid response"
    assert_upstream_calls(rsps, 2)
    assert_audited(route, "runtime_bad_response")


@pytest.mark.parametrize("route_name", ALL_ROUTES)
def test_runtime_reporting_another_identity_gets_no_command(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock, route_name: str
) -> None:
    route = ROUTES[route_name]
    mock_summary(rsps, "runtime_summary_other_identity.json")
    mock_route(rsps, route)
    expect_error(call(api_client, route), 502, "runtime_bad_response")
    assert_upstream_calls(rsps, 1)
    assert rsps.calls[0].request.url == upstream("/v1/runtime")


# --------------------------------------------------------------------------------------------- no upstream call


@pytest.mark.parametrize("route_name", ALL_ROUTES)
def test_disabled_runtime_is_runtime_disabled_without_upstream_call(
    api_client: APIClient, monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock, route_name: str
) -> None:
    make_remote_row(monkeypatch, enabled=False)
    mock_summary(rsps)
    mock_route(rsps, ROUTES[route_name])
    error = expect_error(call(api_client, ROUTES[route_name]), 503, "runtime_disabled")
    assert error["retryable"] is False
    assert_upstream_calls(rsps, 0)


def test_disabled_runtime_detail_and_listing_make_no_upstream_call(
    api_client: APIClient, monkeypatch: pytest.MonkeyPatch, rsps: responses.RequestsMock
) -> None:
    make_remote_row(monkeypatch, enabled=False)
    mock_summary(rsps)
    mock_route(rsps, ROUTES["list"])
    detail = api_client.get(RUNTIME_URL)
    assert detail.status_code == 200
    assert detail.json()["enabled"] is False
    assert detail.json()["status"]["state"] == "disabled"
    assert api_client.get(ALL_WORKERS_URL).json() == {"items": [], "errors": []}
    assert [r["runtime_id"] for r in api_client.get(RUNTIMES_URL).json()["items"]] == [RID]
    assert_upstream_calls(rsps, 0)


def _other_runtime(route: Route, runtime_id: str) -> Route:
    return Route(
        route.name,
        route.method,
        route.path.replace(f"/runtimes/{RID}/", f"/runtimes/{runtime_id}/"),
        route.upstream_method,
        route.upstream_path,
        route.body,
        route.ok_fixture,
        route.ok_status,
    )


@pytest.mark.parametrize("route_name", [*ALL_ROUTES, "runtime_detail"])
def test_unknown_runtime_is_runtime_not_found_without_upstream_call(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock, route_name: str
) -> None:
    mock_summary(rsps)
    if route_name == "runtime_detail":
        response = api_client.get("/api/v1/runtimes/rt-ghost/")
    else:
        mock_route(rsps, ROUTES[route_name])
        response = call(api_client, _other_runtime(ROUTES[route_name], "rt-ghost"))
    error = expect_error(response, 404, "runtime_not_found", runtime_id="rt-ghost")
    assert error["message"] == "runtime rt-ghost not found"
    assert_upstream_calls(rsps, 0)
    rows = list(AuditEvent.objects.values_list("action", "runtime_id", "outcome"))
    # A command refused for an unknown (or invisible) runtime is audited; a read is not.
    assert rows == ([(route_name, "rt-ghost", "runtime_not_found")] if route_name in COMMAND_ROUTES else [])


@pytest.mark.parametrize("route_name", [*ALL_ROUTES, "runtime_detail"])
def test_runtime_of_another_group_is_runtime_not_found_without_upstream_call(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock, staff_user: User, route_name: str
) -> None:
    remote.groups.add(Group.objects.create(name="ops"))
    mock_summary(rsps)
    if route_name == "runtime_detail":
        response = api_client.get(RUNTIME_URL)
    else:
        mock_route(rsps, ROUTES[route_name])
        response = call(api_client, ROUTES[route_name])
    error = expect_error(response, 404, "runtime_not_found")
    assert error == {
        "code": "runtime_not_found",
        "message": f"runtime {RID} not found",
        "retryable": False,
        "runtime_id": RID,
    }  # exactly what an unknown id answers: no hint that it exists
    assert api_client.get(RUNTIMES_URL).json()["items"] == []
    assert api_client.get(ALL_WORKERS_URL).json() == {"items": [], "errors": []}
    assert_upstream_calls(rsps, 0)

    staff = APIClient()
    staff.force_authenticate(staff_user)
    if route_name != "list":
        mock_route(rsps, ROUTES["list"])
    assert staff.get(ROUTES["list"].path).status_code == 200
    assert_upstream_calls(rsps, 2)


BAD_REQUESTS: list[Any] = [
    pytest.param("get", "/api/v1/runtimes/bad%20id/workers/", None, "runtime_id", id="runtime_id_space"),
    pytest.param("post", "/api/v1/runtimes/a%2Fb/workers/", {"profile": "x"}, "runtime_id", id="runtime_id_slash"),
    pytest.param("get", f"/api/v1/runtimes/{'r' * 121}/", None, "runtime_id", id="runtime_id_too_long"),
    pytest.param("get", f"/api/v1/runtimes/{RID}/workers/w%201/", None, "worker_id", id="worker_id_space"),
    pytest.param(
        "post",
        f"/api/v1/runtimes/{RID}/workers/..%2Fetc/input/",
        {"content": "x"},
        "worker_id",
        id="worker_id_dots",
    ),
    pytest.param("post", f"/api/v1/runtimes/{RID}/workers/w%3F1/stop/", None, "worker_id", id="worker_id_query"),
    pytest.param(
        "get",
        f"/api/v1/runtimes/{RID}/workers/{'w' * 121}/transcript/",
        None,
        "worker_id",
        id="worker_id_too_long",
    ),
    pytest.param(
        "post", f"/api/v1/runtimes/{RID}/workers/", {"profile": 5}, "profile", id="create_profile_number"
    ),
    pytest.param(
        "post", f"/api/v1/runtimes/{RID}/workers/", {"intent": {"kind": "evil"}}, "intent", id="create_intent_kind"
    ),
    pytest.param(
        "post", f"/api/v1/runtimes/{RID}/workers/", {"worker_id": "a/b"}, "worker_id", id="create_worker_id"
    ),
    pytest.param("post", f"/api/v1/runtimes/{RID}/workers/{WID}/input/", {}, "content", id="input_missing"),
    pytest.param(
        "post", f"/api/v1/runtimes/{RID}/workers/{WID}/input/", {"content": "  "}, "content", id="input_blank"
    ),
    pytest.param(
        "post",
        f"/api/v1/runtimes/{RID}/workers/{WID}/input/",
        {"content": "x", "kind": "root"},
        "kind",
        id="input_kind",
    ),
    pytest.param(
        "post", f"/api/v1/runtimes/{RID}/workers/{WID}/cancel/", {"reason": 7}, "reason", id="cancel_reason"
    ),
    pytest.param(
        "get", f"/api/v1/runtimes/{RID}/workers/{WID}/transcript/?limit=999", None, "limit", id="transcript_limit"
    ),
    pytest.param(
        "get", f"/api/v1/runtimes/{RID}/workers/{WID}/transcript/?start=-1", None, "start", id="transcript_start"
    ),
]


# The refused commands among BAD_REQUESTS that reached a command route, audited as (action, runtime, worker):
# an id outside the alphabet is recorded as <invalid>. The rest are reads, or paths no route takes.
REFUSAL_AUDITS: dict[str, tuple[str, str, str]] = {
    "worker_id_query": ("stop", RID, "<invalid>"),
    "create_profile_number": ("create", RID, ""),
    "create_intent_kind": ("create", RID, ""),
    "create_worker_id": ("create", RID, ""),
    "input_missing": ("input", RID, WID),
    "input_blank": ("input", RID, WID),
    "input_kind": ("input", RID, WID),
    "cancel_reason": ("cancel", RID, WID),
}


@pytest.mark.parametrize(("method", "path", "body", "field"), BAD_REQUESTS)
def test_bad_ids_and_bodies_are_invalid_request_without_upstream_call(
    request: pytest.FixtureRequest,
    api_client: APIClient,
    remote: Runtime,
    rsps: responses.RequestsMock,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    field: str,
) -> None:
    mock_summary(rsps)
    for route in ROUTES.values():
        mock_route(rsps, route)
    # REQUEST_URI: the raw path as a real server passes it (the test client decodes %2F before routing).
    if body is None:
        response = getattr(api_client, method)(path, REQUEST_URI=path)
    else:
        response = getattr(api_client, method)(path, body, format="json", REQUEST_URI=path)
    error = expect_error(response, 400, "invalid_request", runtime_id=None)
    assert field in error["fields"], error
    assert_upstream_calls(rsps, 0)
    rows = list(AuditEvent.objects.values_list("action", "runtime_id", "worker_id", "outcome"))
    expected = REFUSAL_AUDITS.get(request.node.callspec.id)
    assert rows == ([(*expected, "invalid_request")] if expected else [])


# --------------------------------------------------------------------------------------------- circuit breaker


@pytest.mark.parametrize("route_name", ALL_ROUTES)
def test_circuit_opens_after_five_transport_failures_and_fast_fails(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock, route_name: str
) -> None:
    refused = requests.exceptions.ConnectionError("refused")
    rsps.add("GET", upstream("/v1/runtime"), body=refused)
    for attempt in range(FAILURE_THRESHOLD):
        expect_error(api_client.get(ROUTES["list"].path), 502, "runtime_unreachable")
        assert_upstream_calls(rsps, attempt + 1)

    route = ROUTES[route_name]
    response = call(api_client, route)
    error = expect_error(response, 503, "runtime_circuit_open")
    assert error["retryable"] is True
    assert 1 <= int(response["Retry-After"]) <= BASE_COOLDOWN
    assert_upstream_calls(rsps, FAILURE_THRESHOLD)  # the fast-fail made no upstream call
    if route.name in COMMAND_ROUTES:
        assert AuditEvent.objects.get().outcome == "runtime_circuit_open"

    # While open: the runtime detail shows the cached failure without probing; the listing reports it.
    detail = api_client.get(RUNTIME_URL).json()
    assert (detail["status"]["state"], detail["status"]["error_code"]) == ("offline", "runtime_unreachable")
    listing = api_client.get(ALL_WORKERS_URL).json()
    assert listing == {"items": [], "errors": [{"runtime_id": RID, "code": "runtime_circuit_open"}]}
    assert_upstream_calls(rsps, FAILURE_THRESHOLD)


def test_answers_that_are_errors_do_not_open_the_circuit(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock
) -> None:
    mock_summary(rsps)
    mock_route(rsps, ROUTES["detail"], body=canned("error_worker_not_found.json"), status=404)
    for _ in range(FAILURE_THRESHOLD + 2):
        expect_error(call(api_client, ROUTES["detail"]), 404, "worker_not_found")
    assert_upstream_calls(rsps, FAILURE_THRESHOLD + 3)


# --------------------------------------------------------------------------------------------- successes


@pytest.mark.parametrize("route_name", ALL_ROUTES)
def test_success_through_every_route(
    api_client: APIClient, remote: Runtime, rsps: responses.RequestsMock, route_name: str
) -> None:
    route = ROUTES[route_name]
    mock_summary(rsps)
    mock_route(rsps, route)
    response = call(api_client, route)
    assert response.status_code == route.ok_status, response.content
    body = response.json()
    if route.name == "list":
        assert [(w["runtime_id"], w["worker_id"]) for w in body["items"]] == [(RID, "w-0001"), (RID, "w-0002")]
    elif route.name == "create":
        assert (body["runtime_id"], body["worker_id"]) == (RID, "w-new")
        assert response["Location"] == f"/api/v1/runtimes/{RID}/workers/w-new/"
        sent = json.loads(rsps.calls[1].request.body or b"")
        assert sent == {
            "intent": {"kind": "assistant"},
            "profile": {"kind": "builtin", "value": "builtin:echo"},
            "initial_input": "hi",
        }
    elif route.name == "transcript":
        assert (body["runtime_id"], body["worker_id"], body["next_start"]) == (RID, WID, 2)
    else:
        assert (body["runtime_id"], body["worker_id"]) == (RID, WID)
    assert_upstream_calls(rsps, 2)
    assert [(c.request.url or "").split("?")[0] for c in rsps.calls] == [
        upstream("/v1/runtime"),
        upstream(route.upstream_path),
    ]
    assert_audited(route, "ok")
    remote.refresh_from_db()
    assert remote.status == "online" and remote.last_seen_at is not None

    # The identity is checked once per handle: the next request goes straight to the route.
    call(api_client, route)
    assert_upstream_calls(rsps, 3)


@pytest.mark.parametrize(
    ("summary", "failure", "state", "error_code"),
    [
        pytest.param("runtime_summary.json", None, "online", None, id="online"),
        pytest.param(
            None, requests.exceptions.ConnectionError("refused"), "offline", "runtime_unreachable", id="down"
        ),
        pytest.param(None, requests.exceptions.ReadTimeout("slow"), "offline", "runtime_timeout", id="timeout"),
        pytest.param("error_unauthorized.json", None, "unauthorized", "runtime_auth_failed", id="401"),
        pytest.param("runtime_summary_other_identity.json", None, "error", "runtime_bad_response", id="impostor"),
    ],
)
def test_runtime_detail_refreshes_the_cached_status(
    api_client: APIClient,
    remote: Runtime,
    rsps: responses.RequestsMock,
    summary: str | None,
    failure: Exception | None,
    state: str,
    error_code: str | None,
) -> None:
    status = 401 if summary == "error_unauthorized.json" else 200
    body = canned(summary) if summary is not None else failure
    assert body is not None
    rsps.add("GET", upstream("/v1/runtime"), body=body, status=status, content_type="application/json")
    listed = api_client.get(RUNTIMES_URL).json()["items"]
    assert [(r["runtime_id"], r["status"]["state"]) for r in listed] == [(RID, "configured")]
    assert_upstream_calls(rsps, 0)  # the list answers from the cache

    response = api_client.get(RUNTIME_URL)
    assert response.status_code == 200
    view = response.json()
    assert set(view) == {"runtime_id", "display_name", "kind", "enabled", "status", "capabilities"}
    assert (view["kind"], view["status"]["state"], view["status"]["error_code"]) == ("remote", state, error_code)
    assert view["status"]["checked_at"] is not None
    if state == "online":
        assert view["status"]["last_seen_at"] is not None
        assert [p["name"] for p in view["capabilities"]["profiles"]] == [
            "builtin:echo",
            "builtin:burst",
            "example-agent",
        ]
    assert_upstream_calls(rsps, 1)
    api_client.get(RUNTIME_URL)  # fresh now: no second probe
    assert_upstream_calls(rsps, 1)


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        pytest.param({"body": requests.exceptions.ConnectionError("refused")}, "runtime_unreachable", id="down"),
        pytest.param({"body": requests.exceptions.ConnectTimeout("slow")}, "runtime_timeout", id="timeout"),
        pytest.param({"body": canned("error_forbidden.json"), "status": 403}, "runtime_auth_failed", id="403"),
        pytest.param({"body": b"<html>", "status": 500}, "runtime_bad_response", id="500"),
        pytest.param({"body": b'{"workers": 3}'}, "runtime_bad_response", id="wrong_shape"),
        pytest.param({"body": b"", "status": 405}, "runtime_unsupported", id="405"),
    ],
)
def test_cross_runtime_listing_reports_a_failing_remote_and_keeps_the_rest(
    api_client: APIClient,
    remote: Runtime,
    embedded_runtime: Runtime,
    rsps: responses.RequestsMock,
    setup: dict[str, Any],
    code: str,
) -> None:
    created = api_client.post("/api/v1/runtimes/local/workers/", {"profile": "builtin:echo"}, format="json")
    assert created.status_code == 201
    mock_summary(rsps)
    mock_route(rsps, ROUTES["list"], **setup)
    response = api_client.get(ALL_WORKERS_URL)
    assert response.status_code == 200
    body = response.json()
    assert [(w["runtime_id"], w["worker_id"]) for w in body["items"]] == [("local", created.json()["worker_id"])]
    assert body["errors"] == [{"runtime_id": RID, "code": code}]
    assert_upstream_calls(rsps, 2)


def test_cross_runtime_listing_merges_remote_and_embedded_workers(
    api_client: APIClient, remote: Runtime, embedded_runtime: Runtime, rsps: responses.RequestsMock
) -> None:
    created = api_client.post("/api/v1/runtimes/local/workers/", {"profile": "builtin:echo"}, format="json")
    mock_summary(rsps)
    mock_route(rsps, ROUTES["list"])
    body = api_client.get(ALL_WORKERS_URL).json()
    assert body["errors"] == []
    assert sorted((w["runtime_id"], w["worker_id"]) for w in body["items"]) == [
        ("local", created.json()["worker_id"]),
        (RID, "w-0001"),
        (RID, "w-0002"),
    ]
    assert_upstream_calls(rsps, 2, token=TOKEN)
